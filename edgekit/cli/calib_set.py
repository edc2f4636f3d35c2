"""`edgekit calib-set`: calibration frames picked from a video."""

import argparse
from typing import List

from edgekit.cli.common import add_out, positive_int


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    cs = sub.add_parser(
        "calib-set", help="pick calibration frames from a video (spread over time and scene changes)",
        parents=parents,
        description="Pick N frames from a video for INT8 calibration: half evenly spread over time, half at the "
                    "largest scene changes, written as JPEG files to a folder.",
    )
    cs.add_argument("video")
    cs.add_argument("-n", type=positive_int, default=500, help="frames to pick (default 500)")
    add_out(cs, what="folder to write (must not exist unless --overwrite)")
    cs.add_argument("--overwrite", action="store_true")
    cs.set_defaults(func=run)
    return cs


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import cv2

    from edgekit.errors import EdgekitError
    from edgekit.runtime.artifacts import atomic_dir
    from edgekit.runtime.calibration import iter_video_frames, pick_video_frames

    video = Path(args.video)
    if not video.is_file():
        raise EdgekitError(f"{video}: video not found")
    if os.path.realpath(args.out) == os.path.realpath(video):  # --overwrite would delete the video
        raise EdgekitError(f"-o {args.out} would replace the video {video}; choose another -o")
    indices = pick_video_frames(video, args.n)
    written = 0
    with atomic_dir(args.out, overwrite=args.overwrite) as tmp:  # SIGTERM (Terminated): the folder is removed
        for i, frame in iter_video_frames(video, indices):  # one frame in memory at a time
            path = tmp / f"frame_{i:06d}.jpg"
            if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise EdgekitError(f"{args.out}: could not write {path.name} (disk full?); nothing was written")
            written += 1
    print(f"wrote {written} frames of {video} to {args.out}")
    return 0
