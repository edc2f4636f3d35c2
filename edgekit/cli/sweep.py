"""`edgekit sweep`: every variant built, evaluated and profiled side by side."""

import argparse
from typing import List

from edgekit.cli.common import add_out, count, names, non_negative, positive_int, seconds


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    sw = sub.add_parser(
        "sweep", help="build, evaluate and profile every variant side by side; table + Pareto plot", parents=parents,
        description="Export the checkpoint(s), build every variant this platform supports (backend x precision x "
                    "calibration method, and DLA with --dla; unsupported ones are listed with the reason), evaluate "
                    "each on the dataset and profile all of them side by side with the PyTorch FP32 reference. "
                    "Writes the engines, sweep.json, sweep.md and pareto.png to --out. Give pruned checkpoints "
                    "after the original to compare them too; the first checkpoint is the reference.",
    )
    sw.add_argument("checkpoints", nargs="+", help="checkpoint(s); the first one's PyTorch FP32 row is the reference")
    sw.add_argument("--data", required=True, help="labelled dataset folder")
    sw.add_argument("--precisions", type=names, default=["fp32", "fp16", "int8"],
                    help="comma-separated: fp32,fp16,int8 (default all three)")
    sw.add_argument("--calib-methods", type=names, default=["minmax"],
                    help="INT8 calibration methods: minmax,entropy,percentile (default minmax)")
    sw.add_argument("--backends", type=names, help="tensorrt,onnxruntime (default: every one available here)")
    sw.add_argument("--dla", action="store_true", help="also build for each DLA core (TensorRT on a Jetson)")
    sw.add_argument("--calib", help="calibration images (default: the dataset's val images)")
    sw.add_argument("--calib-size", type=positive_int, default=200)
    sw.add_argument("--split", default="test", help="split to evaluate (default test)")
    sw.add_argument("--format", default="auto", choices=("auto", "coco", "yolo"))
    sw.add_argument("--limit", type=count, default=0, help="evaluate the first N images only")
    sw.add_argument("--accuracy-budget", type=non_negative, metavar="POINTS",
                    help="mark the fastest variant at most POINTS below the reference (mAP@0.5:0.95 or mIoU x 100)")
    sw.add_argument("--device", default="cpu", help="device of the PyTorch reference row: cpu, cuda or auto")
    sw.add_argument("--warmup", type=seconds, default=1.0, metavar="SECONDS")
    sw.add_argument("--iterations", type=positive_int, default=200, help="at least this many timed runs per variant")
    sw.add_argument("--duration", type=seconds, default=6.0, metavar="SECONDS", help="at least this long per variant")
    sw.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds (A B C A B C ...; default 3)")
    sw.add_argument("--batch", type=positive_int, default=1)
    add_out(sw, "runs/sweep")
    sw.set_defaults(func=run)
    return sw


def run(args: argparse.Namespace) -> int:
    from edgekit.build.sweep import SweepOptions, markdown, sweep
    from edgekit.runtime.measure.profile import ProfileOptions

    opts = SweepOptions(
        data=args.data, out=args.out, precisions=args.precisions, calib_methods=args.calib_methods,
        backends=args.backends or [], dla=args.dla, calib=args.calib, calib_size=args.calib_size, split=args.split,
        fmt=args.format, limit=args.limit, accuracy_budget=args.accuracy_budget, device=args.device,
        profile=ProfileOptions(warmup_s=args.warmup, iterations=args.iterations, duration_s=args.duration,
                               batch=args.batch, rounds=args.rounds, power=False),
    )
    r = sweep(args.checkpoints, opts)
    print(markdown(r), end="")
    print(f"\nreport: {args.out}/sweep.json, {args.out}/sweep.md" + (f", plot: {r['plot']}" if r["plot"] else ""))
    return 0
