"""FP32 vs INT8 on ONNX Runtime's CPU provider, side by side in one run, with the accuracy of each.

For each shipped model: export -> build an FP32 and an INT8 engine (calibrated on calibration/synth)
-> latency interleaved (FP32, INT8, FP32, INT8, ...) -> test-split accuracy of the FP32 engine, the
INT8 CPU engine (U8S8) and the TensorRT-style Q/DQ file (what a Jetson builds from).

    python benchmarks/int8_cpu.py --data build/synth [--calib-method minmax] [--iters 300]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.backends.onnxruntime_backend import OnnxRuntimeBackend
from edgekit.build import BuildOptions, build_engine
from edgekit.data import datasets
from edgekit.demo import SHIPPED
from edgekit.engine import open_engine
from edgekit.evaluate import evaluate
from edgekit.export import export

ROOT = Path(__file__).resolve().parents[1]


def stats(times):
    times = sorted(times)
    q = lambda p: times[min(len(times) - 1, int(p / 100 * len(times)))]  # noqa: E731
    mean = statistics.fmean(times)
    return {"p50": q(50), "p90": q(90), "p99": q(99), "mean": mean, "cv": statistics.pstdev(times) / mean}


def interleaved(backends, x, warmup: int, iters: int):
    for b in backends:
        for _ in range(warmup):
            b.infer([x])
    times = [[] for _ in backends]
    for _ in range(iters):
        for i, b in enumerate(backends):
            t0 = time.perf_counter_ns()
            b.infer([x])
            times[i].append((time.perf_counter_ns() - t0) / 1e6)
    return [stats(t) for t in times]


def accuracy_text(task, m):
    return f"{m['mAP50']:.3f} / {m['mAP50_95']:.3f}" if task == "detection" else f"{m['mIoU']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--calib", default=str(ROOT / "calibration" / "synth"))
    ap.add_argument("--calib-method", default="minmax")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--keep-fp32", action="append", default=[])
    args = ap.parse_args()
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, CPU provider, calibration {args.calib} ({args.calib_method})")
    header = ("| model | export s | build FP32 / INT8 s | FP32 p50 / p90 ms | INT8 p50 / p90 ms | INT8 speed-up (p50) "
              "| accuracy FP32 | INT8 (CPU U8S8) | INT8 (TensorRT Q/DQ on CPU) |")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for task, ckpt in SHIPPED.items():
            onnx_path = tmp / f"{task}.onnx"
            rep = export(ckpt, onnx_path)
            fp32 = build_engine(onnx_path, tmp / f"{task}.fp32.onnx", BuildOptions(backend="onnxruntime"))
            int8 = build_engine(onnx_path, tmp / f"{task}.int8.onnx", BuildOptions(
                backend="onnxruntime", precision="int8", calib=args.calib, calib_size=32,
                calib_method=args.calib_method,
                keep_fp32=args.keep_fp32))
            b32, _, card = open_engine(fp32.engine)
            b8, manifest, _ = open_engine(int8.engine)
            qdq = OnnxRuntimeBackend(int8.engine.parent / manifest["files"]["tensorrt_qdq_onnx"])
            h, w = card.input_size
            x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
            s32, s8 = interleaved([b32, b8], x, 20, args.iters)
            ds = datasets.load(task, args.data, "test")
            acc = [evaluate(lambda t, b=b: b.infer([t])[0], card, ds) for b in (b32, b8, qdq)]
            rows.append(
                f"| {ckpt.name} | {rep.seconds:.1f} | {fp32.seconds:.1f} / {int8.seconds:.1f} | "
                f"{s32['p50']:.2f} / {s32['p90']:.2f} | {s8['p50']:.2f} / {s8['p90']:.2f} | "
                f"{s32['p50'] / s8['p50']:.2f}x | " + " | ".join(accuracy_text(task, a) for a in acc) + " |")
    print("accuracy: detection mAP@0.5 / mAP@0.5:0.95, segmentation mIoU, on the test split")
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
