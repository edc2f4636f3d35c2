"""N cameras through one Triton Inference Server against N independent local run-streams, on this machine, side by
side in one run, interleaved (local, Triton, local, Triton, ...), medians over the rounds with every round shown.

* local: N `edgekit run-stream ENGINE clipK.mp4` processes at once, each with its own ONNX Runtime sessions (the
  default workers for this machine's cores);
* Triton: one `tritonserver` (the nvidia-pytriton wheel's, tests/triton_server.py) serving the repository
  `edgekit export-triton --infer-python` wrote (dynamic batching, one instance of each model), and N
  `edgekit run-stream triton://127.0.0.1:PORT/MODEL clipK.mp4` processes at once (pre/post in each client, the
  engine on the server).

Every run writes results.jsonl (no video). Printed: the frames per second of all N streams together, the ratio
Triton / local, and from the server's own statistics the queue and compute time per request and the batch sizes it
ran. The server shares the machine's cores with its clients.

The model: the shipped detector (default), or with --model yolov8n the YOLOv8n that benchmarks/stream.py trains
with Ultralytics' trainer (in its --work folder, re-exported by Ultralytics with a dynamic batch axis). Both are
exported with a dynamic batch axis up to 8, FP32 on ONNX Runtime's CPU provider.

    python benchmarks/triton.py [--work runs/bench-triton] [--clients 3] [--frames 200] [--reps 3]
                                [--model shipped|yolov8n] [--stream-work runs/bench-stream] [--instances N]
                                [--fuse-preprocess]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PY = sys.executable


def sh(*args: str, env: Dict[str, str] = None) -> str:
    import os

    r = subprocess.run(list(args), capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def engine_of(args: argparse.Namespace, work: Path) -> Path:
    engine = work / f"{args.model}.b8{'.fused' if args.fuse_preprocess else ''}.fp32.onnx"
    if engine.is_file():
        return engine
    if args.model == "shipped":
        onnx = work / "shipped.b8.onnx"
        sh(PY, "-m", "edgekit", "export", str(ROOT / "models" / "detector"), "-o", str(onnx), "--dynamic-batch", "8")
    else:
        best = Path(args.stream_work) / "runs" / "v8n" / "weights" / "best.pt"
        if not best.is_file():
            sys.exit(f"{best}: train it first with python benchmarks/stream.py --work {args.stream_work}")
        copy = work / "v8n-dyn" / "best.pt"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(best, copy)
        sh(PY, "-c", f"from ultralytics import YOLO\nYOLO('{copy}').export(format='onnx', imgsz=320, dynamic=True, "
                     "batch=8, simplify=False)", env={"YOLO_OFFLINE": "1", "YOLO_VERBOSE": "False"})
        onnx = copy.with_suffix(".onnx")
    sh(PY, "-m", "edgekit", "build-engine", str(onnx), "-o", str(engine), "--backend", "onnxruntime",
       "--max-batch", "8", *(["--fuse-preprocess"] if args.fuse_preprocess else []))
    return engine


def clips(work: Path, n: int, frames: int) -> List[Path]:
    from conftest import scene_clip

    out = []
    for k in range(n):
        clip = work / f"cam{k}-{frames}.mp4"
        if not clip.is_file():
            scene_clip(clip, frames=frames, size=(640, 480), seed=100 + k)
        out.append(clip)
    return out


def streams(model: str, sources: List[Path], out: Path) -> Dict[str, Any]:
    """N run-streams at once; the frames per second of them together (frames over the longest pipeline time)."""
    procs = []
    for k, src in enumerate(sources):
        procs.append(subprocess.Popen([PY, "-m", "edgekit", "run-stream", model, str(src), "--out", str(out / str(k)),
                                       "--no-video", "-q", "--overwrite"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    errors = [p.communicate()[1] for p in procs]
    for p, err in zip(procs, errors):
        if p.returncode:
            sys.exit(f"run-stream failed: {err[-2000:]}")
    reports = [json.loads((out / str(k) / "report.json").read_text()) for k in range(len(sources))]
    frames = sum(r["frames"]["processed"] for r in reports)
    wall = max(r["wall_seconds"] for r in reports)
    return {"fps": frames / wall, "frames": frames, "wall_s": wall,
            "e2e_p50_ms": statistics.median(r["end_to_end_ms"]["p50"] for r in reports),
            "per_stream_fps": [round(r["throughput_fps"], 1) for r in reports]}


def server_stats(client: Any, model: str) -> Dict[str, Any]:
    return client.get_inference_statistics(model, as_json=True)["model_stats"][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="runs/bench-triton")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", choices=("shipped", "yolov8n"), default="shipped")
    ap.add_argument("--instances", type=int, default=1, help="instances of each model on the server (default 1)")
    ap.add_argument("--fuse-preprocess", action="store_true",
                    help="an engine built with --fuse-preprocess: clients send uint8 frames, a quarter of the bytes")
    ap.add_argument("--stream-work", default="runs/bench-stream", help="benchmarks/stream.py's --work (yolov8n)")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)

    import tritonclient.grpc as grpcclient
    from triton_server import TritonServer, python_path

    from edgekit.runtime.serving.triton_client import stats_delta
    from edgekit.runtime.serving.triton_repo import TritonOptions, export_triton

    engine = engine_of(args, work)
    sources = clips(work, args.clients, args.frames)
    repo = work / f"repo-{engine.stem}"
    rep = export_triton(engine, repo, TritonOptions(infer_python=True, python_path=python_path(), overwrite=True,
                                                    instances=args.instances))
    name = next(iter(rep.models))
    server = TritonServer([repo], work / "server.log").start()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    rounds: List[Dict[str, Any]] = []
    try:
        streams(server.grpc_url(name), sources[:1], work / "warm")  # the server's first requests load its sessions
        for r in range(args.reps):
            local = streams(str(engine), sources, work / "local")
            before = server_stats(client, name)
            served = streams(server.grpc_url(name), sources, work / "triton")
            served["server"] = stats_delta(before, server_stats(client, name))
            rounds.append({"local": local, "triton": served, "ratio": served["fps"] / local["fps"]})
            s = served["server"]
            print(f"round {r + 1}: local {local['fps']:.1f} FPS, Triton {served['fps']:.1f} FPS "
                  f"(ratio {rounds[-1]['ratio']:.2f}); server per request: queue {s['queue_ms']:.2f} ms, "
                  f"compute {s['compute_infer_ms']:.2f} ms; batches {s['batch_sizes']}", flush=True)
    finally:
        client.close()
        server.stop()
    med = {k: statistics.median(x[k] for x in rounds) for k in ("ratio",)}
    local_fps = statistics.median(x["local"]["fps"] for x in rounds)
    triton_fps = statistics.median(x["triton"]["fps"] for x in rounds)
    queue = statistics.median(x["triton"]["server"]["queue_ms"] for x in rounds)
    compute = statistics.median(x["triton"]["server"]["compute_infer_ms"] for x in rounds)
    mean_batch = statistics.median(
        sum(int(b) * n for b, n in x["triton"]["server"]["batch_sizes"].items())
        / max(1, sum(x["triton"]["server"]["batch_sizes"].values())) for x in rounds)
    print(f"\n{args.clients} streams of {args.frames} frames, {engine.name}, {args.instances} instance(s) of "
          f"each model on the server, median of {args.reps} rounds:")
    print(f"  {args.clients} local run-streams: {local_fps:.1f} FPS together")
    print(f"  {args.clients} run-stream triton:// clients, one server: {triton_fps:.1f} FPS together "
          f"(Triton / local {med['ratio']:.2f}, rounds {', '.join(format(x['ratio'], '.2f') for x in rounds)})")
    print(f"  on the server, per request: queue {queue:.2f} ms, compute {compute:.2f} ms; mean batch {mean_batch:.2f}")
    (work / f"triton-{engine.stem}-{args.instances}.json").write_text(json.dumps({"args": vars(args), "rounds": rounds,
                                                               "time": time.time()}, indent=2))


if __name__ == "__main__":
    main()
