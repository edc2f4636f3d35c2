"""`edgekit prune`: structured channel pruning (Torch-Pruning) + fine-tuning; 2:4 sparsity."""

import argparse
from typing import List

from edgekit.cli.common import (
    ENGINE_BACKENDS,
    add_out,
    count,
    non_negative,
    open_fraction,
    positive_float,
    positive_int,
)


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    pn = sub.add_parser(
        "prune", help="structured channel pruning (Torch-Pruning) + fine-tuning; 2:4 sparsity", parents=parents,
        description="Remove channels (dependency-aware, through Torch-Pruning; output layers never pruned, channel "
                    "counts rounded for tensor cores) to a ratio, a MACs target or a measured latency target, then "
                    "fine-tune with the training loop. --sparsity 2:4 zeroes 2 of every 4 input-channel weights "
                    "(kept while fine-tuning) for TensorRT's sparse tensor cores. The pruned architecture is "
                    "recorded in the card; OUT gets pruned.*, best.* (fine-tuned) and prune_report.json/.md.",
    )
    pn.add_argument("checkpoint", help="checkpoint to prune (.safetensors with its card)")
    add_out(pn)
    pn.add_argument("--data", help="dataset for fine-tuning, taylor importance and the accuracy report")
    pn.add_argument("--name", help="model name in the pruned card (default: NAME-pRATIO, e.g. edgenet-det-s-p50)")
    target = pn.add_mutually_exclusive_group()
    target.add_argument("--ratio", type=open_fraction, help="share of channels to remove from each layer, e.g. 0.3")
    target.add_argument("--target-macs", metavar="M", help="prune until at most M MACs, e.g. 40M")
    target.add_argument("--target-latency", type=positive_float, metavar="MS",
                        help="prune until p50 latency on --backend is at most MS, measured")
    pn.add_argument("--backend", default="onnxruntime", choices=ENGINE_BACKENDS, metavar="BACKEND",
                    help="where --target-latency is measured: %(choices)s (default onnxruntime)")
    pn.add_argument("--importance", default="l2", choices=("l1", "l2", "taylor"))
    pn.add_argument("--ignore-layers", metavar="NAME,NAME", type=lambda t: [v.strip() for v in t.split(",") if v],
                    default=[], help="layers to leave unpruned besides the output layers (found from the graph)")
    pn.add_argument("--round-to", type=positive_int, default=8,
                    help="keep channel counts multiples of this (default 8)")
    pn.add_argument("--finetune-epochs", type=count, default=10, help="fine-tuning epochs (default 10; 0: none)")
    pn.add_argument("--lr", type=positive_float,
                    help="fine-tuning peak learning rate (default: the rate the model was trained at, where its card "
                         "records it, else 2e-3); the optimizer and weight decay also come from that record")
    pn.add_argument("--distill", action="store_true",
                    help="fine-tune with distillation from the unpruned model: the pruned one also learns its "
                         "predictions")
    pn.add_argument("--distill-weight", type=non_negative, default=0.0,
                    help="weight of the distillation loss (default: 1 for detection, 0.3 for segmentation)")
    pn.add_argument("--batch-size", type=positive_int, default=16)
    pn.add_argument("--sparsity", choices=("2:4",), help="magnitude 2:4 sparsity on eligible conv weights")
    pn.add_argument("--format", default="auto", choices=("auto", "coco", "yolo"))
    pn.add_argument("--device", default="auto", help="fine-tuning device: cpu, cuda or auto")
    pn.add_argument("--max-train-images", type=count, default=0, help=argparse.SUPPRESS)
    pn.add_argument("--max-val-images", type=count, default=0, help=argparse.SUPPRESS)
    pn.add_argument("--report-duration", type=positive_float, default=3.0, metavar="SECONDS",
                    help="latency measurement per stage in the report (default 3 s)")
    pn.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pn.set_defaults(func=run)
    return pn


def run(args: argparse.Namespace) -> int:
    from edgekit.build.prune import PruneOptions, prune
    from edgekit.build.pruning.report import markdown
    from edgekit.build.pruning.targets import parse_macs

    opts = PruneOptions(
        out=args.out, data=args.data, ratio=args.ratio,
        target_macs=parse_macs(args.target_macs) if args.target_macs else None,
        target_latency_ms=args.target_latency, backend=args.backend, importance=args.importance,
        round_to=args.round_to, finetune_epochs=args.finetune_epochs, lr=args.lr,
        distill=args.distill, distill_weight=args.distill_weight, batch_size=args.batch_size,
        sparsity=args.sparsity, format=args.format, device=args.device, max_train_images=args.max_train_images,
        max_val_images=args.max_val_images, progress=not args.quiet, report_seconds=args.report_duration,
        name=args.name or "", ignore_layers=args.ignore_layers,
    )
    r = prune(args.checkpoint, opts)
    print(markdown(r), end="")
    print(f"\ncheckpoint: {r['checkpoint']}\nreport: {args.out}/prune_report.json, {args.out}/prune_report.md")
    return 0
