"""run-stream against its reference points (BENCHMARKS.md), side by side in one run, interleaved (A B C ... A B C),
medians over the rounds with every round shown:

* backend-only, one session with the runtime's default threads (all cores), `infer` in a loop;
* backend-only, the machine's limit: N one-thread sessions in parallel (N = cores), the figure run-stream's
  efficiency is measured against;
* decode only (OpenCV reading the video);
* the hand-written loop a user writes without edgekit: OpenCV reads a frame, letterbox, one session.run, NMS, next
  frame, all sequential;
* `edgekit run-stream` with no sinks, with its default sinks (annotated video, results.jsonl), and with no sinks
  on an engine built with --fuse-preprocess;
* the peer: Ultralytics' predictor on the same ONNX and video (`YOLO(onnx).predict(video, stream=True)`).

Then a live 30 FPS source (capture-to-result p99 against the backend's latency) and four live sources at 15 FPS
each into the one engine: generated videos played at their frame rate (run-stream --realtime), as cameras would
deliver them (a synthetic:// source would spend more CPU drawing its frames than a camera costs).

The model is a YOLOv8n trained by Ultralytics' own trainer on generated data (no trained
YOLOv8n at 320 ships in a pip package), exported by Ultralytics' exporter at 320x320, run FP32 on ONNX Runtime's
CPU provider; the video is generated at 768x576. Everything is cached in --work; the first run trains (about half
an hour on 2 cores; needs the dev extra, which has ultralytics).

    python benchmarks/stream.py [--work runs/bench-stream] [--frames 600] [--reps 3] [--epochs 30]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

import cv2
import numpy as np
import onnxruntime as ort

from edgekit.runtime.opening import open_engine
from edgekit.runtime.preprocess import preprocess
from edgekit.runtime.stream.runner import StreamOptions, cores, run_stream

PY = sys.executable
CLASSES = "{0: disc, 1: square, 2: triangle, 3: star}"


def sh(*args: str, env: Dict[str, str] = None) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def prepare(work: Path, frames: int, epochs: int) -> Dict[str, Path]:
    """The generated data and video, the trained YOLOv8n, Ultralytics' ONNX of it and edgekit's engine."""
    data = work / "data"
    if not (data / "videos" / "stream_00.mp4").is_file():
        sh(PY, "-m", "edgekit", "data", "synth", str(data), "--train", "400", "--val", "60", "--test", "0", "--size",
           "640x480", "--videos", "1", "--video-frames", str(frames), "--video-size", "768x576", "-q", "--overwrite")
    live = work / "data30" / "videos" / "stream_00.mp4"  # the same kind of scene at 30 FPS, played as a camera
    if not live.is_file():
        sh(PY, "-m", "edgekit", "data", "synth", str(work / "data30"), "--train", "0", "--val", "0", "--test", "1",
           "--videos", "1", "--video-frames", str(frames), "--video-size", "768x576", "--fps", "30", "--seed", "7",
           "-q", "--overwrite")
    best = work / "runs" / "v8n" / "weights" / "best.pt"
    ultra = {"YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False"}
    if not best.is_file():
        (work / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames: {CLASSES}\n")
        print(f"training YOLOv8n for {epochs} epochs with Ultralytics' trainer (cached in {work})", file=sys.stderr)
        sh(PY, "-c", "from ultralytics import YOLO\n"
           f"YOLO('yolov8n.yaml').train(data='{work / 'data.yaml'}', epochs={epochs}, imgsz=320, batch=16, workers=0,"
           f" plots=False, device='cpu', project='{work / 'runs'}', name='v8n', exist_ok=True, amp=False,"
           " pretrained=False, seed=0, val=False)", env=ultra)
    onnx = best.with_suffix(".onnx")
    if not onnx.is_file():
        sh(PY, "-c", f"from ultralytics import YOLO\nYOLO('{best}').export(format='onnx', imgsz=320, simplify=False)",
           env=ultra)
    engine, fused = work / "yolov8n.fp32.onnx", work / "yolov8n.fused.fp32.onnx"
    if not engine.is_file():
        sh(PY, "-m", "edgekit", "build-engine", str(onnx), "-o", str(engine), "--backend", "onnxruntime")
    if not fused.is_file():
        sh(PY, "-m", "edgekit", "build-engine", str(onnx), "-o", str(fused), "--backend", "onnxruntime",
           "--fuse-preprocess")
    return {"video": data / "videos" / "stream_00.mp4", "videos15": sorted((data / "videos").glob("*.mp4")),
            "video30": live, "onnx": onnx, "engine": engine, "fused": fused}


def timed(fn: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def backend_only(engine: Path, video: Path, frames: int, sessions: int) -> float:
    """Frames/s of `infer` alone: one session with its default threads (sessions=0), or `sessions` one-thread
    sessions each in its own thread."""
    opened = open_engine(engine, pipelined=sessions > 0)
    ok, img = cv2.VideoCapture(str(video)).read()
    x, _ = preprocess(img, opened.card)
    handles = [opened.backend] if not sessions else [opened.backend.worker(1) for _ in range(sessions)]
    for h in handles:
        for _ in range(5):
            h.infer([x])

    def loop(h, n):
        for _ in range(n):
            h.infer([x])

    def run() -> int:
        share = frames // len(handles)
        threads = [threading.Thread(target=loop, args=(h, share)) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return share * len(handles)

    try:
        return timed(run)
    finally:
        for h in handles:
            if h is not opened.backend:
                h.close()
        opened.close()


def backend_latency(engine: Path, video: Path, threads: int, n: int = 300) -> List[float]:
    """Milliseconds per infer of one session with `threads` intra-op threads (0: the runtime's default)."""
    opened = open_engine(engine, pipelined=True)
    h = opened.backend.worker(threads) if threads else opened.backend
    ok, img = cv2.VideoCapture(str(video)).read()
    x, _ = preprocess(img, opened.card)
    for _ in range(10):
        h.infer([x])
    lat = []
    for _ in range(n):
        t = time.perf_counter_ns()
        h.infer([x])
        lat.append((time.perf_counter_ns() - t) / 1e6)
    if h is not opened.backend:
        h.close()
    opened.close()
    return lat


def decode_only(video: Path, frames: int) -> float:
    def run() -> int:
        cap = cv2.VideoCapture(str(video))
        n = 0
        while n < frames and cap.read()[0]:
            n += 1
        return n
    return timed(run)


def hand_written_loop(engine: Path, video: Path, frames: int) -> float:
    """What a user writes for an Ultralytics ONNX: sequential read -> letterbox -> /255 RGB CHW -> run -> NMS."""
    sess = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    _, _, h, w = sess.get_inputs()[0].shape

    def run() -> int:
        cap = cv2.VideoCapture(str(video))
        n = 0
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
            x = np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1), dtype=np.float32)[None] / 255
            out = sess.run(None, {name: x})[0][0]
            scores = out[4:].max(0)
            keep = scores > 0.25
            boxes = out[:4, keep].T
            xywh = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, 2:]], 1)
            cv2.dnn.NMSBoxes(xywh.tolist(), scores[keep].tolist(), 0.25, 0.7)
            n += 1
        return n
    return timed(run)


def stream_fps(engine: Path, video: Path, frames: int, out: Path, sinks: bool, video_fps: float = None) -> float:
    r = run_stream(engine, str(video), StreamOptions(out=str(out), max_frames=frames, save_video=sinks, jsonl=sinks,
                                                     progress=False, power=False, overwrite=True, video_fps=video_fps))
    return r["throughput_fps"]


def ultralytics_fps(onnx: Path, video: Path, frames: int) -> float:
    """Ultralytics' predictor in its own process (it brings torch and its own threads)."""
    code = (f"import time\nfrom ultralytics import YOLO\nm = YOLO({str(onnx)!r}, task='detect')\nn = 0\n"
            "t0 = time.perf_counter()\n"
            f"for r in m.predict({str(video)!r}, stream=True, imgsz=320, verbose=False, device='cpu'):\n"
            f"    n += 1\n    if n >= {frames}:\n        break\n"
            "print('FPS', n / (time.perf_counter() - t0))\n")
    out = sh(PY, "-c", code, env={"YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False"})
    return float(out.strip().splitlines()[-1].split()[1])


def peak_rss_mb(engine: Path, video: Path, out: Path, frames: int, workers: int) -> float:
    """Peak RSS (VmHWM) of a fresh `edgekit run-stream` process, annotated video on, as users run it. Read inside
    the child: getrusage(RUSAGE_CHILDREN) would count this parent's pages that the child shared before exec."""
    code = ("import sys\nfrom edgekit.cli import main\n"
            f"rc = main(['run-stream', {str(engine)!r}, {str(video)!r}, '--out', {str(out)!r}, '-q', '--overwrite', "
            f"'--max-frames', '{frames}', '--workers', '{workers}'])\n"
            "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
            "print('VMHWM', hwm, 'torch' in sys.modules)\n")
    _, kb, torch_loaded = sh(PY, "-c", code).strip().splitlines()[-1].split()
    assert torch_loaded == "False", "run-stream imported torch"
    return int(kb) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/bench-stream")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--live-seconds", type=float, default=20)
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    p = prepare(work, args.frames, args.epochs)
    engine, video, n_cores = p["engine"], p["video"], cores()
    measures: Dict[str, Callable[[], float]] = {
        "backend only, one session (default threads)": lambda: backend_only(engine, video, args.frames, 0),
        f"backend only, {n_cores} one-thread sessions in parallel (the limit)":
            lambda: backend_only(engine, video, args.frames, n_cores),
        "decode only": lambda: decode_only(video, args.frames),
        "hand-written loop (read, letterbox, run, NMS)": lambda: hand_written_loop(engine, video, args.frames),
        "edgekit run-stream, no sinks": lambda: stream_fps(engine, video, args.frames, work / "rs-none", False),
        "edgekit run-stream, default sinks (video + JSONL)":
            lambda: stream_fps(engine, video, args.frames, work / "rs-default", True),
        "edgekit run-stream, default sinks, --video-fps 5":
            lambda: stream_fps(engine, video, args.frames, work / "rs-video5", True, 5.0),
        "edgekit run-stream, no sinks, --fuse-preprocess engine":
            lambda: stream_fps(p["fused"], video, args.frames, work / "rs-fused", False),
        "Ultralytics predictor (same ONNX and video)": lambda: ultralytics_fps(p["onnx"], video, args.frames),
    }
    fps: Dict[str, List[float]] = {k: [] for k in measures}
    for _ in range(args.reps):
        for k, fn in measures.items():
            fps[k].append(fn())
    med = {k: statistics.median(v) for k, v in fps.items()}
    keys = list(measures)
    limit, one = med[keys[1]], med[keys[0]]
    none, default, video5, fused = (med[keys[k]] for k in (4, 5, 6, 7))
    hand, peer = med[keys[3]], med[keys[8]]

    lat1 = backend_latency(engine, video, 1)
    lat_default = backend_latency(engine, video, 0)
    # Live sources: the generated videos played at their frame rate (--realtime), as cameras would deliver them.
    live = run_stream(engine, str(p["video30"]), StreamOptions(
        out=str(work / "live"), duration=args.live_seconds, progress=False, power=False, overwrite=True,
        realtime=True))
    four = [str(p["videos15"][k % len(p["videos15"])]) for k in range(4)]
    multi = {fps: run_stream(engine, four, StreamOptions(
        out=str(work / "multi"), duration=args.live_seconds, progress=False, power=False, overwrite=True,
        realtime=True, video_fps=fps)) for fps in (None, 5.0)}

    print(f"YOLOv8n (Ultralytics-trained, 4 classes) 320x320 FP32, onnxruntime {ort.__version__} CPU, {n_cores} cores, "
          f"{args.frames}-frame 768x576 video; {args.reps} interleaved rounds, median (every round: "
          f"{json.dumps({k: [round(x, 1) for x in v] for k, v in fps.items()})})")
    print("\n| throughput | frames/s |\n|---|---:|")
    for k in keys:
        print(f"| {k} | {med[k]:.1f} |")
    print("\n| ratio | value | goal |\n|---|---:|---:|")
    print(f"| run-stream (no sinks) / hand-written loop | {none / hand:.2f} | >= 1.4 |")
    print(f"| run-stream (no sinks) / Ultralytics predictor | {none / peer:.2f} | >= 1.6 |")
    print(f"| run-stream (no sinks) / parallel backend-only limit | {none / limit:.2f} | >= 0.9 |")
    print(f"| run-stream (default sinks) / parallel backend-only limit | {default / limit:.2f} | >= 0.85 |")
    print(f"| run-stream (default sinks, --video-fps 5) / parallel backend-only limit | {video5 / limit:.2f} | |")
    print(f"| run-stream (no sinks), preprocessing fused / parallel backend-only limit | {fused / limit:.2f} | |")
    print(f"| run-stream (default sinks) / Ultralytics predictor | {default / peer:.2f} | |")
    print(f"| parallel backend-only limit / one session | {limit / one:.2f} | |")
    e2e, b1, bd = live["end_to_end_ms"], float(np.percentile(lat1, 50)), float(np.percentile(lat_default, 50))
    print(f"\nlive 30 FPS 768x576 source (a video played at its rate), {args.live_seconds:g} s, default sinks: "
          f"{live['frames']['processed']} "
          "frames, "
          f"{live['frames']['dropped']} dropped; end to end p50 {e2e['p50']:.1f} / p99 {e2e['p99']:.1f} ms; backend "
          f"latency p50: one-thread session {b1:.1f} ms, default-thread session {bd:.1f} ms; p99 / one-thread backend "
          f"p50 = {e2e['p99'] / b1:.2f} (goal <= 2)")
    rss = {n: peak_rss_mb(engine, video, work / "rss", 300, n) for n in (1, n_cores)}
    print("peak RSS of an edgekit run-stream process (annotated video on, 300 frames): " + ", ".join(
        f"{n} worker{'s' if n > 1 else ''} {mb:.0f} MB" for n, mb in rss.items()))
    for fps, m in multi.items():
        print(f"four live 15 FPS 768x576 sources (videos played at their rate), {args.live_seconds:g} s, default sinks"
              f"{f', --video-fps {fps:g}' if fps else ''}: {m['throughput_fps']:.1f} frames/s in total; per source "
              "(in / processed / dropped, e2e p99 ms): " + "; ".join(
                  f"{s['frames']['in']}/{s['frames']['processed']}/{s['frames']['dropped']}, "
                  f"{s['end_to_end_ms']['p99']:.1f}" for s in m["sources"]))


if __name__ == "__main__":
    main()
