"""`edgekit import-model`: a user's trained PyTorch model as an edgekit checkpoint."""

import argparse
from typing import List

from edgekit.cli.common import add_card_flags, add_out, card_overrides


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    im = sub.add_parser(
        "import-model", help="a model you trained (torchvision, timm, smp or your own nn.Module) as a checkpoint",
        parents=parents,
        description="Build a model from a source — torchvision:NAME(kwargs), timm:NAME(kwargs), smp:ARCH(kwargs), "
                    "ultralytics:DetectionModel(cfg=..., nc=...) or python:package.module:factory(kwargs) — load "
                    "your state dict (.safetensors, or .pt/.pth saved with torch.save(model.state_dict()); nothing "
                    "is unpickled), find which output layout it emits, and write NAME.safetensors + NAME.card.yaml "
                    "to -o. An Ultralytics YOLOv5u/v8/11 detect or segment checkpoint (best.pt) is a source of its "
                    "own: its names, imgsz, task and training settings fill the card (it is a pickle: "
                    "--trust-pickle). prune, export, build-engine, eval, sweep and train --init then take the "
                    "checkpoint as they take edgekit's own models.",
    )
    im.add_argument("source", help="e.g. 'torchvision:lraspp_mobilenet_v3_large(num_classes=3, weights_backbone=None)' "
                                   "or runs/detect/train/weights/best.pt")
    im.add_argument("--weights", help="state dict from your training (.safetensors, .pt, .pth)")
    im.add_argument("--code-path", metavar="DIR", help="folder holding the package of a python: source")
    im.add_argument("--trust-pickle", action="store_true",
                    help="load an Ultralytics .pt, which is a pickle: loading it runs code stored in the file, so "
                         "only for files whose origin you trust")
    add_out(im, what="folder for the checkpoint")
    add_card_flags(im)
    im.set_defaults(func=run)
    return im


def run(args: argparse.Namespace) -> int:
    from edgekit.build.import_model import import_model
    from edgekit.errors import EdgekitError

    if args.card:
        raise EdgekitError("import-model describes the model with flags (--task, --classes, --input-size, ...), "
                           "not --card")
    r = import_model(args.source, args.weights, args.out, card_overrides(args), args.layout, args.code_path or "",
                     args.trust_pickle)
    c = r["card"]
    print(f"checkpoint: {r['checkpoint']} ({r['params']:,} parameters)")
    print(f"model card: {c.task}, {c.num_classes} classes, input {c.input_size[1]}x{c.input_size[0]}, output layout "
          f"{c.output_layout}" + (_which(r["output_key"]) if r["output_key"] else ""))
    return 0


def _which(key: str) -> str:
    from edgekit.build.models.sources import DETECTIONS

    return " (the detections of its one image)" if key == DETECTIONS else f" (the model's '{key}' output)"
