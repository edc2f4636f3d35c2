"""`edgekit train`: train or fine-tune a detector or segmenter."""

import argparse
from typing import List

from edgekit.cli.common import TASKS, count, non_negative, positive_float, positive_int, size


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    tr = sub.add_parser(
        "train", help="train or fine-tune a detector or segmenter", parents=parents,
        description="Train or fine-tune a model on a dataset folder (synth layout; COCO json or YOLO txt for "
                    "detection; image + mask folders for segmentation). Writes the best checkpoint, the model "
                    "card, metrics.csv, TensorBoard logs, loss_curve.png and the resolved config.yaml to --out.",
    )
    tr.add_argument("--task", choices=TASKS, metavar="TASK", help="%(choices)s")
    tr.add_argument("--data", help="dataset folder")
    tr.add_argument("-o", "--out", help="run folder for checkpoints and logs")
    tr.add_argument("--arch", help="architecture (see `edgekit models`); default: the --init checkpoint's, else "
                                   "edgenet-det-s / edgenet-seg-s")
    tr.add_argument("--format", default="auto", choices=("auto", "coco", "yolo"), help="detection label format")
    tr.add_argument("--imgsz", type=size, help="network input WxH, multiples of 32 (default: the --init "
                                               "checkpoint's, else 256x256)")
    tr.add_argument("--resize", choices=("letterbox", "stretch"), help="resize mode recorded in the card")
    tr.add_argument("--epochs", type=positive_int, help="maximum epochs (default 30)")
    tr.add_argument("--batch-size", type=positive_int, default=16)
    tr.add_argument("--optimizer", choices=("adamw", "sgd"),
                    help="default adamw, or what the --init model's card records of its training")
    tr.add_argument("--lr", type=positive_float,
                    help="peak learning rate (cosine schedule); default 2e-3, or the rate the --init model's card "
                         "records of its training")
    tr.add_argument("--weight-decay", type=non_negative, help="default 5e-4, or the --init model's recorded one")
    tr.add_argument("--patience", type=positive_int, default=8, help="early stop after this many epochs without gain")
    tr.add_argument("--seed", type=count, default=0)
    tr.add_argument("--init", help="checkpoint to start from (transfer learning)")
    tr.add_argument("--init-backbone", metavar="CKPT",
                    help="start the backbone from any edgekit checkpoint whose backbone fits (e.g. a detector's)")
    tr.add_argument("--freeze", choices=("backbone",), help="keep the backbone fixed")
    tr.add_argument("--distill", metavar="CKPT",
                    help="teacher checkpoint of the same task, classes and outputs (e.g. the model before pruning): "
                         "the model also learns its predictions")
    tr.add_argument("--distill-weight", type=non_negative, default=0.0,
                    help="weight of the distillation loss (default: 1 for detection, 0.3 for segmentation)")
    tr.add_argument("--name", help="model name in the card (default: the run folder's name)")
    tr.add_argument("--device", default="auto", help="cpu, cuda or auto")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last epoch")
    tr.add_argument("--max-train-images", type=count, default=0, help=argparse.SUPPRESS)
    tr.add_argument("--max-val-images", type=count, default=0, help=argparse.SUPPRESS)
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    tr.set_defaults(func=run)
    return tr


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekit.build.train.loop import TrainConfig, config_from_file, train
    from edgekit.errors import EdgekitError

    resume = False
    if args.resume:
        cfg = config_from_file(Path(args.resume) / "config.yaml")
        if args.epochs:
            cfg.epochs = args.epochs
        cfg.progress = not args.quiet
        resume = True
    else:
        missing = [flag for flag, v in (("--task", args.task), ("--data", args.data), ("--out", args.out)) if not v]
        if missing:
            raise EdgekitError(f"train needs {', '.join(missing)} (or --resume RUN_DIR)")
        schedule, init_size = _recorded(args.init)
        height, width = (args.imgsz[1], args.imgsz[0]) if args.imgsz else init_size or (256, 256)
        cfg = TrainConfig(
            task=args.task, data=args.data, out=args.out, arch=args.arch or "", format=args.format,
            imgsz=(height, width), resize=args.resize or "", epochs=args.epochs or 30, batch_size=args.batch_size,
            optimizer=args.optimizer or schedule.get("optimizer", "adamw"), lr=args.lr or schedule.get("lr", 2e-3),
            weight_decay=args.weight_decay if args.weight_decay is not None else schedule.get("weight_decay", 5e-4),
            patience=args.patience, distill=args.distill or "", distill_weight=args.distill_weight,
            seed=args.seed, init=args.init or "", init_backbone=args.init_backbone or "", freeze=args.freeze or "",
            name=args.name or "", device=args.device, max_train_images=args.max_train_images,
            max_val_images=args.max_val_images, progress=not args.quiet,
        )
    report = train(cfg, resume=resume)
    metric = [k for k in report if k.startswith("best_val_")][0]
    print(f"best {metric[len('best_val_'):]} {report[metric]:.4f} at epoch {report['best_epoch']} "
          f"({report['train_seconds']:.0f} s of training); checkpoint: {report['checkpoint']}")
    return 0


def _recorded(init: "str | None") -> "tuple[dict, tuple | None]":
    """The training schedule an --init checkpoint's card records ({} without --init or a record), and its
    input size (height, width)."""
    if not init:
        return {}, None
    from edgekit.build.models import checkpoint
    from edgekit.build.train.loop import recorded_schedule
    from edgekit.runtime.card import ModelCard

    card = ModelCard.load(checkpoint.resolve(init)[1])
    return recorded_schedule(card), tuple(card.input_size)
