"""`edgekit profile`: engine-only latency, the way trtexec measures it."""

import argparse
from typing import List

from edgekit.cli.common import add_out, add_task_filter, percentiles, positive_int, seconds


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    pr = sub.add_parser(
        "profile", help="engine-only latency (like trtexec): percentiles, CV, throughput, power on Jetson",
        parents=parents,
        description="Time an engine, an edgekit ONNX or a checkpoint (eager PyTorch, the baseline) alone in a loop: "
                    "warm-up, then at least --iterations runs and --duration seconds. Reports host latency and, on a "
                    "GPU, H2D / compute / D2H from CUDA events: percentiles, max, mean, CV and throughput; warns "
                    "when the variation says clocks are unstable; on a Jetson samples tegrastats for power, energy "
                    "per image and throttling. With --layers, then times each layer with the backend's own profiler "
                    "and lists the slowest. Writes profile.json and profile.md to --out.",
    )
    pr.add_argument("artifact", help="engine (with its manifest), edgekit ONNX, or checkpoint (.safetensors)")
    pr.add_argument("--batch", type=positive_int, default=1, help="images per call (default 1)")
    pr.add_argument("--warmup", type=seconds, default=1.0, metavar="SECONDS", help="warm-up time (default 1 s, "
                    "and at least 10 runs)")
    pr.add_argument("--iterations", type=positive_int, default=200,
                    help="measure at least this many runs (default 200)")
    pr.add_argument("--duration", type=seconds, default=10.0, metavar="SECONDS",
                    help="and for at least this long (default 10 s)")
    pr.add_argument("--percentiles", type=percentiles, default=(90.0, 95.0, 99.0),
                    help="latency percentiles besides the median (default 90,95,99)")
    pr.add_argument("--device", default="auto", help="checkpoints only: cpu, cuda or auto")
    add_task_filter(pr)
    pr.add_argument("--layers", action="store_true",
                    help="after the measurement, time each layer with the backend's profiler (ONNX Runtime's) and "
                         "list the slowest: name, kind, device, ms per inference, share of all layers' time")
    pr.add_argument("--top", type=_positive, default=15, metavar="N", help="with --layers: how many (default 15)")
    pr.add_argument("--no-power", action="store_true", help="do not sample tegrastats on a Jetson")
    add_out(pr, "runs/profile", "report folder")
    pr.set_defaults(func=run)
    return pr


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got '{text}'")
    return n


def run(args: argparse.Namespace) -> int:
    from edgekit.runtime.artifacts import ensure_writable_dir
    from edgekit.runtime.measure import profile as prof
    from edgekit.runtime.opening import open_model

    out = ensure_writable_dir(args.out)
    opts = prof.ProfileOptions(warmup_s=args.warmup, iterations=args.iterations, duration_s=args.duration,
                               batch=args.batch, percentiles=args.percentiles, power=not args.no_power,
                               layers=args.layers, top_layers=args.top)
    with open_model(args.artifact, device=args.device, task=args.task) as opened:
        r = prof.profile(prof.of(opened), opts)
    prof.write(r, out)
    print(prof.markdown(r), end="")
    print(f"\nreport: {out / 'profile.json'}, {out / 'profile.md'}")
    return 0
