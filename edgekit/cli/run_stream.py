"""`edgekit run-stream`: an engine on a video stream, with latency per stage."""

import argparse
from pathlib import Path
from typing import List

from edgekit.cli.common import (
    add_out,
    add_task_filter,
    count,
    fraction,
    non_negative,
    positive_float,
    positive_int,
    seconds,
)
from edgekit.errors import EXIT_CODES, EdgekitError
from edgekit.runtime.stream import DEFAULT_BATCH_WAIT_MS


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    rs = sub.add_parser(
        "run-stream", help="run an engine on a video stream and report latency per stage", parents=parents,
        description="Run an engine on a stream: a video file, an image folder, a camera index or /dev/videoN, "
                    "csi://N, rtsp://... or synthetic://?size=640x480&fps=30; several feed one engine. One thread "
                    "per stage and several inference workers, frames kept in order; live sources drop the oldest "
                    "frame when behind (counted), files lose none. Writes report.json/.md, latency plots, "
                    "annotated.mp4 and results.jsonl to --out.",
        epilog="exit status: " + "; ".join(f"{code}: {what}" for code, what in EXIT_CODES.items())
               + ". The report is written after a source failure, Ctrl-C and SIGTERM too.",
    )
    rs.add_argument("engine", help="engine from build-engine (or an ONNX from edgekit export), or a model served by "
                                   "Triton Inference Server: triton://HOST:GRPC_PORT/MODEL (a repository from "
                                   "edgekit export-triton; needs the triton extra)")
    rs.add_argument("source", nargs="*",
                    help="video file, image folder, camera index, /dev/videoN, csi://N?mode=M&size=WxH&fps=F (sensor "
                         "N, nvarguscamerasrc sensor mode M, scaled to WxH in nvvidconv; all optional), rtsp://..., "
                         "synthetic://. Several sources feed the one engine (batched with --batch), each with its own "
                         "outputs in --out/source-K/ and its own lines in the report")
    rs.add_argument("--sources", metavar="FILE",
                    help="a text file of sources, one a line (lines starting with # are comments), after those given "
                         "as arguments")
    rs.add_argument("--workers", type=positive_int, metavar="N",
                    help="inference workers: N ONNX Runtime sessions (CPU: the cores shared among them) or N TensorRT "
                         "execution contexts, each on its own CUDA stream; frames leave in order (default: from the "
                         "backend and this machine's cores: ONNX Runtime on CPU up to 4 sessions sharing the "
                         "cores, one thread each on 4 cores or fewer; TensorRT 2); for triton://, the requests in "
                         "flight at the server (default 4)")
    rs.add_argument("--batch", type=positive_int, default=1, metavar="B",
                    help="infer up to B ready frames at once (an engine with a dynamic batch axis, or built with "
                         "--max-batch B); the report gives the batch sizes used (default 1)")
    rs.add_argument("--batch-wait", type=non_negative, default=DEFAULT_BATCH_WAIT_MS, metavar="MS",
                    help="how long a batch waits for more frames of a live source once its first frame is ready "
                         f"(default {DEFAULT_BATCH_WAIT_MS:g})")
    rs.add_argument("--video-fps", type=positive_float, metavar="FPS",
                    help="draw and encode only this many frames a second into annotated.mp4 (default: every frame); "
                         "the others cost no drawing or encoding")
    add_out(rs, "runs/stream")
    add_task_filter(rs)
    rs.add_argument("--max-frames", type=count, default=0, help="stop each source after this many frames")
    rs.add_argument("--duration", type=seconds, default=0.0, metavar="SECONDS")
    rs.add_argument("--loop", action="store_true", help="loop a video file or image folder")
    rs.add_argument("--realtime", action="store_true",
                    help="play video files at their frame rate as live sources (a camera's pace: frames the "
                         "pipeline cannot keep up with are dropped and counted), to see the latency a camera would")
    rs.add_argument("--score-threshold", type=fraction, help="override the card's score threshold")
    rs.add_argument("--iou-threshold", type=fraction, help="override the card's NMS IoU threshold")
    rs.add_argument("--no-video", action="store_true", help="do not write annotated.mp4")
    rs.add_argument("--no-jsonl", action="store_true", help="do not write results.jsonl")
    rs.add_argument("--overwrite", action="store_true",
                    help="replace an --out that holds other files than an earlier run (an earlier run is replaced "
                         "without it, once the new run's report is written)")
    rs.add_argument("--video-max-mb", type=positive_int, metavar="MB",
                    help="start a new annotated-NNNNNN.mp4 segment at this size, keeping the newest --video-segments "
                         "(default: unlimited for files and image folders, 1024 for live sources)")
    rs.add_argument("--video-segments", type=positive_int, default=2, metavar="K",
                    help="finished video segments kept on disk (default 2)")
    rs.add_argument("--show", action="store_true", help="show a window (needs a display)")
    rs.add_argument("--queue-size", type=positive_int, default=4,
                    help="frames each queue holds, at least 1 (default 4): what bounds memory on a live source")
    rs.add_argument("--timeout", type=positive_float, default=5.0,
                    help="seconds without frames before a reconnect (FFmpeg path; on the GStreamer path OpenCV's "
                         "30 s read timeout applies)")
    rs.add_argument("--decoder", choices=("auto", "gstreamer", "ffmpeg"),
                    help="how RTSP streams and H.264/H.265 files are decoded: auto (default; on a Jetson, GStreamer "
                         "with the hardware decoder nvv4l2decoder, falling back to FFmpeg), gstreamer (hardware only, "
                         "an error where unavailable) or ffmpeg; default from $EDGEKIT_VIDEO_DECODER")
    rs.add_argument("--reconnect", type=count, default=3,
                    help="times a live source (RTSP, camera) or a Triton server that is lost is reopened, with "
                         "back-off 0.5, 1, 2, 4, 8 s, before the run fails with exit status 3 (default 3; 0: never)")
    rs.add_argument("--rtsp-transport", default="tcp", choices=("tcp", "udp"))
    rs.add_argument("--rtsp-latency", type=count, default=200, metavar="MS", help="RTSP jitter buffer (default 200)")
    rs.add_argument("--no-power", action="store_true", help="do not sample tegrastats on a Jetson")
    rs.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    rs.set_defaults(func=run)
    return rs


def run(args: argparse.Namespace) -> int:
    from edgekit.runtime.stream.report import markdown
    from edgekit.runtime.stream.runner import StreamOptions, exit_status, run_stream

    sources = list(args.source)
    if args.sources:
        sources += read_sources(args.sources)
    if not sources:
        raise EdgekitError("run-stream: give a source (a video file, camera, rtsp://..., ...) or --sources FILE")
    opts = StreamOptions(
        out=args.out, task=args.task, save_video=not args.no_video, jsonl=not args.no_jsonl, show=args.show,
        max_frames=args.max_frames, duration=args.duration, loop=args.loop, score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold, queue_size=args.queue_size, timeout=args.timeout, reconnect=args.reconnect,
        rtsp_transport=args.rtsp_transport, rtsp_latency_ms=args.rtsp_latency, decoder=args.decoder,
        progress=not args.quiet,
        power=not args.no_power, overwrite=args.overwrite, video_max_mb=args.video_max_mb,
        video_segments=args.video_segments, video_fps=args.video_fps, workers=args.workers, batch=args.batch,
        batch_wait_ms=args.batch_wait, realtime=args.realtime,
    )
    r = run_stream(args.engine, sources, opts)
    print(markdown(r), end="")
    print(f"\nreport: {args.out}/report.json, {args.out}/report.md" +
          (f", plots: {', '.join(r['plots'])}" if r.get("plots") else ""))
    outputs = r["outputs"].get("sources") or [r["outputs"]]
    for k, out in enumerate(outputs):
        video = out.get("video_files")
        where = f"{args.out}/source-{k}" if len(outputs) > 1 else args.out
        if video and video["files"]:
            names = ", ".join(f"{where}/{f['name']}" for f in video["files"])
            print(f"annotated video: {names} ({video['bytes_on_disk'] / 1e6:.1f} MB)")
    return exit_status(r)  # 130/143 where Ctrl-C/SIGTERM ended the run


def read_sources(path: str) -> List[str]:
    """The sources listed in a text file, one a line; blank lines and # comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EdgekitError(f"--sources {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
