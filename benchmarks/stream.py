"""run-stream against its reference points (BENCHMARKS.md), side by side in one run, interleaved:

* backend-only: the engine's infer() in a loop on one preprocessed frame (the limit a runner approaches);
* the hand-written loop a user writes without edgekit: OpenCV reads a frame, letterbox, one
  session.run, NMS, next frame, all sequential;
* run-stream on the same engine and video (file source: every frame processed).

Throughput on a video file; end-to-end latency on a live synthetic source at a rate the pipeline can
keep up with; peak RSS of a run-stream process. Repeats interleave A B C, medians are reported.

    python benchmarks/stream.py [--frames 300] [--reps 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from edgekit.build.demo import CALIBRATION, SHIPPED
from edgekit.build.engine_build import BuildOptions, build_engine
from edgekit.build.export import export
from edgekit.runtime.data.writer import write_dataset
from edgekit.runtime.opening import open_engine
from edgekit.runtime.preprocess import preprocess
from edgekit.runtime.stream.runner import StreamOptions, run_stream


def backend_only(engine: Path, frames: int):
    opened = open_engine(engine)
    backend, card = opened.backend, opened.card
    cap = cv2.VideoCapture(str(VIDEO))
    ok, img = cap.read()
    x, _ = preprocess(img, card)
    for _ in range(10):
        backend.infer([x])
    lat = []
    t0 = time.perf_counter()
    for _ in range(frames):
        t = time.perf_counter_ns()
        backend.infer([x])
        lat.append((time.perf_counter_ns() - t) / 1e6)
    return frames / (time.perf_counter() - t0), lat


def hand_written_loop(engine: Path, frames: int) -> float:
    """What a user writes: sequential read -> letterbox -> run -> NMS (no edgekit code involved)."""
    sess = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    _, _, h, w = sess.get_inputs()[0].shape
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    cap = cv2.VideoCapture(str(VIDEO))
    n = 0
    t0 = time.perf_counter()
    while n < frames:
        ok, img = cap.read()
        if not ok:
            break
        r = min(w / img.shape[1], h / img.shape[0])
        nw, nh = round(img.shape[1] * r), round(img.shape[0] * r)
        resized = cv2.resize(img, (nw, nh))
        top, left = (h - nh) // 2, (w - nw) // 2
        boxed = cv2.copyMakeBorder(resized, top, h - nh - top, left, w - nw - left, cv2.BORDER_CONSTANT,
                                   value=(114, 114, 114))
        x = ((boxed[..., ::-1].astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
        out = sess.run(None, {name: np.ascontiguousarray(x)})[0][0]
        scores = out[4:].max(0)
        keep = scores > 0.25
        boxes = out[:4, keep].T
        xywh = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], 1)
        cv2.dnn.NMSBoxes(xywh.tolist(), scores[keep].tolist(), 0.25, 0.5)
        n += 1
    return n / (time.perf_counter() - t0)


def run_stream_fps(engine: Path, frames: int, out: Path) -> float:
    r = run_stream(engine, str(VIDEO), StreamOptions(out=str(out), max_frames=frames, save_video=False,
                                                     progress=False))
    return r["throughput_fps"]


def peak_rss_mb(engine: Path, out: Path) -> float:
    """Peak RSS (VmHWM) of a fresh `edgekit run-stream` process, annotated video on, as users run it.
    Read inside the child: getrusage(RUSAGE_CHILDREN) would count this torch-laden parent's pages that
    the child shared before exec."""
    code = ("import sys\nfrom edgekit.cli import main\n"
            f"rc = main(['run-stream', {str(engine)!r}, {str(VIDEO)!r}, '--out', {str(out)!r}, '-q'])\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
            "print('VMHWM', hwm, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    _, kb, torch_loaded = r.stdout.strip().splitlines()[-1].split()
    assert torch_loaded == "False", "run-stream imported torch"
    return int(kb) / 1024


def main() -> None:
    global VIDEO
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    write_dataset(tmp / "data", seed=11, counts={"train": 0, "val": 0, "test": 1}, videos=1,
                  video_frames=args.frames, progress=False)
    VIDEO = tmp / "data" / "videos" / "stream_00.mp4"
    export(SHIPPED["detection"], tmp / "det.onnx")
    engine = build_engine(tmp / "det.onnx", tmp / "det.int8.onnx", BuildOptions(
        backend="onnxruntime", precision="int8", calib=str(CALIBRATION), calib_size=32)).engine
    fps = {"backend-only": [], "hand-written loop": [], "run-stream": []}
    backend_lat: list = []
    for rep in range(args.reps):
        f, lat = backend_only(engine, args.frames)
        fps["backend-only"].append(f)
        backend_lat += lat
        fps["hand-written loop"].append(hand_written_loop(engine, args.frames))
        fps["run-stream"].append(run_stream_fps(engine, args.frames, tmp / f"rs{rep}"))
    live = run_stream(engine, "synthetic://?fps=15&seed=2", StreamOptions(
        out=str(tmp / "live"), duration=20, save_video=False, progress=False))
    rss = peak_rss_mb(engine, tmp / "rss")
    med = {k: statistics.median(v) for k, v in fps.items()}
    b50, b99 = np.percentile(backend_lat, 50), np.percentile(backend_lat, 99)
    e2e = live["end_to_end_ms"]
    every = json.dumps({k: [round(x, 1) for x in v] for k, v in fps.items()})
    print(f"edgenet-det-s INT8 on onnxruntime {ort.__version__} (CPU), {args.frames}-frame 640x480 video, "
          f"{args.reps} interleaved repeats (median; all: {every})")
    print("| measure | value |")
    print("|---|---:|")
    for k, v in med.items():
        print(f"| throughput, {k} | {v:.1f} FPS |")
    print(f"| run-stream / backend-only throughput | {med['run-stream'] / med['backend-only']:.2f} |")
    print(f"| run-stream / hand-written loop throughput | {med['run-stream'] / med['hand-written loop']:.2f} |")
    print(f"| backend-only latency p50 / p99 | {b50:.2f} / {b99:.2f} ms |")
    print(f"| run-stream end-to-end p50 / p99 (live 15 FPS source, {live['frames']['processed']} frames) | "
          f"{e2e['p50']:.2f} / {e2e['p99']:.2f} ms |")
    print(f"| end-to-end minus backend-only, p50 / p99 | {e2e['p50'] - b50:.2f} / {e2e['p99'] - b99:.2f} ms |")
    print(f"| peak RSS of an edgekit run-stream process | {rss:.0f} MB |")


if __name__ == "__main__":
    main()
