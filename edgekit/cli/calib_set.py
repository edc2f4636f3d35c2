"""`edgekit calib-set`: calibration frames picked from a video, with a report of how diverse they are."""

import argparse
from typing import List

from edgekit.cli.common import add_out, positive_int


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    cs = sub.add_parser(
        "calib-set", help="pick calibration frames from a video (spread over time and scene changes)",
        parents=parents,
        description="Pick N frames from a video for INT8 calibration: half evenly spread over time, half at the "
                    "largest scene changes, written as JPEG files to a folder with diversity.json: the brightness "
                    "of the picks against the whole video and, with --model, the classes, object sizes and "
                    "scores the model finds in them. Warns about what the set lacks.",
    )
    cs.add_argument("video")
    cs.add_argument("-n", type=positive_int, default=500, help="frames to pick (default 500)")
    add_out(cs, what="folder to write (must not exist unless --overwrite)")
    cs.add_argument("--overwrite", action="store_true")
    cs.add_argument("--model", metavar="ENGINE_OR_ONNX",
                    help="report what this model (an engine with its manifest, or an edgekit ONNX) finds in the "
                         "picks: frames per class, object sizes, highest score per frame")
    cs.set_defaults(func=run)
    return cs


def run(args: argparse.Namespace) -> int:
    import contextlib
    import os
    import sys
    from pathlib import Path

    import cv2

    from edgekit.errors import EdgekitError
    from edgekit.runtime import calib_report as cr
    from edgekit.runtime.artifacts import atomic_dir, write_json
    from edgekit.runtime.calibration import iter_video_frames, pick_frames, scan_video
    from edgekit.runtime.text import printable

    video = Path(args.video)
    if not video.is_file():
        raise EdgekitError(f"{video}: video not found")
    out = os.path.realpath(args.out).rstrip(os.sep) + os.sep
    for what, path in (("video", video), ("model", args.model)):  # --overwrite would delete it
        if path is not None and (os.path.realpath(path) + os.sep).startswith(out):
            raise EdgekitError(f"-o {args.out} would replace the {what} {path}; choose another -o")
    with contextlib.ExitStack() as stack:
        figures = None
        if args.model:  # opened (and run once) before any work: a bad model writes nothing
            from edgekit.runtime import api

            try:
                figures = cr.ModelFigures(stack.enter_context(api.open(args.model)), args.model)
            except EdgekitError as e:
                raise EdgekitError(f"--model {e}") from None
        with atomic_dir(args.out, overwrite=args.overwrite) as tmp:  # SIGTERM (Terminated): the folder is removed
            scan = scan_video(video)
            report = cr.DiversityReport(video, args.n, scan, figures)
            for i, frame in iter_video_frames(video, pick_frames(scan, args.n)):  # one frame at a time
                path = tmp / f"frame_{i:06d}.jpg"
                if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                    raise EdgekitError(f"{args.out}: could not write {path.name} (disk full?); nothing was written")
                report.add(i, frame, path.name)
            summary = report.summary()
            write_json(tmp / cr.REPORT_NAME, summary)
    picked = summary["picked"]
    print(f"wrote {picked} frame{'' if picked == 1 else 's'} of {video} to {args.out}")
    for line in cr.lines(summary):
        print(printable(line))
    print(f"report: {Path(args.out) / cr.REPORT_NAME}")
    for warning in summary["warnings"]:
        print(f"edgekit: warning: {printable(warning)}", file=sys.stderr)
    return 0
