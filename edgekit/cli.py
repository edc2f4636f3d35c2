"""The `edgekit` command line. Each verb's module is imported only when that verb runs, so the
runtime-side verbs never pull in torch and a missing optional package fails as one line."""

import argparse
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from . import __version__
from .errors import EdgekitError, MissingDependency

# import name -> (package to install, edgekit extra that brings it)
OPTIONAL_MODULES = {
    "torch": ("torch", "build"),
    "onnx": ("onnx", "build"),
    "onnxslim": ("onnxslim", "build"),
    "safetensors": ("safetensors", "build"),
    "yaml": ("pyyaml", "build"),
    "faster_coco_eval": ("faster-coco-eval", "build"),
    "onnxruntime": ("onnxruntime", "onnxruntime"),
}


def _size(text: str) -> Tuple[int, int]:
    """'320x240' -> (320, 240); '256' -> (256, 256)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or N, got '{text}'") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or N, got '{text}'")
    return parts[0], parts[1]


# --- verbs ---------------------------------------------------------------------------------------
def cmd_data_synth(args: argparse.Namespace) -> int:
    from .data.writer import balance_markdown, write_dataset

    summary = write_dataset(
        args.out, seed=args.seed, counts={"train": args.train, "val": args.val, "test": args.test},
        size=args.size, videos=args.videos, video_frames=args.video_frames, video_size=args.video_size,
        fps=args.fps, overwrite=args.overwrite, progress=not args.quiet,
    )
    print(balance_markdown(summary), end="")
    print(f"wrote {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .train.loop import TrainConfig, config_from_file, train

    if args.resume:
        cfg = config_from_file(Path(args.resume) / "config.yaml") if (Path(args.resume) / "config.yaml").is_file() \
            else None
        if cfg is None:
            raise EdgekitError(f"{args.resume}: nothing to resume (no config.yaml in the run folder)")
        if args.epochs:
            cfg.epochs = args.epochs
        cfg.progress = not args.quiet
        report = train(cfg, resume=True)
    else:
        missing = [flag for flag, v in (("--task", args.task), ("--data", args.data), ("--out", args.out)) if not v]
        if missing:
            raise EdgekitError(f"train needs {', '.join(missing)} (or --resume RUN_DIR)")
        height, width = args.imgsz[1], args.imgsz[0]
        cfg = TrainConfig(
            task=args.task, data=args.data, out=args.out, arch=args.arch or "", format=args.format,
            imgsz=(height, width), resize=args.resize or "", epochs=args.epochs or 30, batch_size=args.batch_size,
            optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
            seed=args.seed, init=args.init or "", freeze=args.freeze or "", name=args.name or "",
            device=args.device, max_train_images=args.max_train_images, max_val_images=args.max_val_images,
            progress=not args.quiet,
        )
        report = train(cfg)
    metric = [k for k in report if k.startswith("best_val_")][0]
    print(f"best {metric[len('best_val_'):]} {report[metric]:.4f} at epoch {report['best_epoch']} "
          f"({report['train_seconds']:.0f} s of training); checkpoint: {report['checkpoint']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .demo import run as run_demo

    run_demo(Path(args.out))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    for name, task, summary in list_models(args.task or ""):
        print(f"{name:20s} {task:13s} {summary}")
    return 0


# --- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgekit",
        description="From a trained PyTorch vision model to a measured real-time stream on NVIDIA Jetson.",
    )
    p.add_argument("--version", action="version", version=f"edgekit {__version__}")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    data = sub.add_parser("data", help="generate datasets (synth)", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_verb", metavar="ACTION")
    synth = data_sub.add_parser(
        "synth", help="generate a seeded synthetic detection + segmentation dataset with videos",
        description="Generate a deterministic synthetic dataset: images, YOLO and COCO labels, class masks, "
                    "train/val/test splits, a class-balance summary and videos of moving objects with "
                    "per-frame ground truth.",
    )
    synth.add_argument("out", help="output folder (created; must not exist unless --overwrite)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train", type=int, default=1200, help="training images (default 1200)")
    synth.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    synth.add_argument("--test", type=int, default=200, help="test images (default 200)")
    synth.add_argument("--size", type=_size, default=(320, 240), help="image size WxH (default 320x240)")
    synth.add_argument("--videos", type=int, default=1, help="number of videos (default 1)")
    synth.add_argument("--video-frames", type=int, default=150)
    synth.add_argument("--video-size", type=_size, default=(640, 480))
    synth.add_argument("--fps", type=float, default=15.0)
    synth.add_argument("--overwrite", action="store_true")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    synth.set_defaults(func=cmd_data_synth)

    tr = sub.add_parser(
        "train", help="train or fine-tune a detector or segmenter",
        description="Train or fine-tune a model on a dataset folder (synth layout; COCO json or YOLO txt for "
                    "detection; image + mask folders for segmentation). Writes the best checkpoint, the model "
                    "card, metrics.csv, TensorBoard logs, loss_curve.png and the resolved config.yaml to --out.",
    )
    tr.add_argument("--task", choices=("detection", "segmentation"))
    tr.add_argument("--data", help="dataset folder")
    tr.add_argument("--out", help="run folder for checkpoints and logs")
    tr.add_argument("--arch", help="architecture (see `edgekit models`); default edgenet-det-s / edgenet-seg-s")
    tr.add_argument("--format", default="auto", choices=("auto", "coco", "yolo"), help="detection label format")
    tr.add_argument("--imgsz", type=_size, default=(256, 256), help="network input WxH, multiples of 32")
    tr.add_argument("--resize", choices=("letterbox", "stretch"), help="resize mode recorded in the card")
    tr.add_argument("--epochs", type=int, help="maximum epochs (default 30)")
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    tr.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine schedule)")
    tr.add_argument("--weight-decay", type=float, default=5e-4)
    tr.add_argument("--patience", type=int, default=8, help="early stop after this many epochs without gain")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--init", help="checkpoint to start from (transfer learning)")
    tr.add_argument("--freeze", choices=("backbone",), help="keep the backbone fixed")
    tr.add_argument("--name", help="model name in the card (default: the run folder's name)")
    tr.add_argument("--device", default="auto", help="cpu, cuda or auto")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last epoch")
    tr.add_argument("--max-train-images", type=int, default=0, help=argparse.SUPPRESS)
    tr.add_argument("--max-val-images", type=int, default=0, help=argparse.SUPPRESS)
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    tr.set_defaults(func=cmd_train)

    demo = sub.add_parser(
        "demo", help="run the whole available chain on the shipped models and synthetic data",
        description="Generate synthetic data, measure the shipped models on it and fine-tune the detector.",
    )
    demo.add_argument("--out", default="build/demo", help="output folder (default build/demo)")
    demo.set_defaults(func=cmd_demo)

    models = sub.add_parser("models", help="list the built-in architectures")
    models.add_argument("--task", choices=("detection", "segmentation"))
    models.set_defaults(func=cmd_models)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:
        # `edgekit` or `edgekit data` alone: show the relevant help.
        (parser if args.verb is None else parser._subparsers._group_actions[0].choices[args.verb]).print_help()  # type: ignore[union-attr]
        return 2
    try:
        try:
            return func(args)
        except ModuleNotFoundError as e:  # an optional dependency this verb needs is not installed
            top = (e.name or "").split(".")[0]
            if top not in OPTIONAL_MODULES:
                raise
            raise MissingDependency(*OPTIONAL_MODULES[top]) from e
    except EdgekitError as e:
        if args.debug:
            raise
        print(f"edgekit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130


def run(argv: Optional[List[str]] = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
