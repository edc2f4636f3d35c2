"""Figures of the shipped models: parameters, MACs, weights size, test-split accuracy and PyTorch CPU
latency at batch 1 (BENCHMARKS.md: warm-up, then at least 200 iterations; p50/p90/p99, CV).

    python benchmarks/shipped_models.py --data build/synth
"""

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from edgekit.build.demo import SHIPPED
from edgekit.build.models import checkpoint
from edgekit.build.train.loop import evaluate_checkpoint


def latency_ms(model: torch.nn.Module, x: torch.Tensor, warmup: int = 20, iters: int = 200):
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter_ns()
            model(x)
            times.append((time.perf_counter_ns() - t0) / 1e6)
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p / 100 * len(times)))]  # noqa: E731
    mean = statistics.fmean(times)
    return {"p50": q(50), "p90": q(90), "p99": q(99), "mean": mean, "cv": statistics.pstdev(times) / mean}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="synthetic dataset folder (its test split is used)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | params | MMACs | weights KB | test accuracy | torch CPU p50 / p90 / p99 ms (CV) |")
    print("|---|---:|---:|---:|---|---|")
    for task, path in SHIPPED.items():
        model, card = checkpoint.load(path)
        h, w = card.input_size
        x = torch.randn(1, 3, h, w)
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            model(x)
        params = sum(p.numel() for p in model.parameters())
        acc = evaluate_checkpoint(path, args.data, "test")
        if task == "detection":
            acc_s = f"mAP@0.5 {acc['mAP50']:.3f}, mAP@0.5:0.95 {acc['mAP50_95']:.3f}"
        else:
            acc_s = f"mIoU {acc['mIoU']:.3f}"
        lat = latency_ms(model, x)
        print(f"| {path.name} | {params:,} | {fc.get_total_flops() / 2e6:.0f} | {path.stat().st_size / 1024:.0f} | "
              f"{acc_s} | {lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f} ({lat['cv']:.2f}) |")


if __name__ == "__main__":
    main()
