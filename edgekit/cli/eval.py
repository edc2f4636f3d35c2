"""`edgekit eval`: accuracy of a checkpoint, ONNX or engine on a labelled dataset."""

import argparse
from typing import List

from edgekit.cli.common import add_out, add_task_filter, count


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    ev = sub.add_parser(
        "eval", help="accuracy of a checkpoint, ONNX or engine on a labelled dataset", parents=parents,
        description="Task accuracy through the exact runtime preprocessing and post-processing: mAP@0.5 and "
                    "mAP@0.5:0.95 by the COCO protocol for detection, mIoU and per-class IoU for segmentation. "
                    "Writes eval.json and eval.md to --out.",
    )
    ev.add_argument("artifact", help="engine (with its manifest), edgekit ONNX, or checkpoint (.safetensors)")
    ev.add_argument("dataset", help="dataset folder (COCO / YOLO labels, or masks; see edgekit data synth)")
    ev.add_argument("--split", default="test", help="split to evaluate (default test)")
    ev.add_argument("--format", default="auto", choices=("auto", "coco", "yolo"), help="detection label format")
    ev.add_argument("--limit", type=count, default=0, help="evaluate the first N images only")
    ev.add_argument("--device", default="auto", help="checkpoints only: cpu, cuda or auto")
    add_task_filter(ev)
    add_out(ev, "runs/eval", "report folder")
    ev.set_defaults(func=run)
    return ev


def run(args: argparse.Namespace) -> int:
    from edgekit.runtime.artifacts import ensure_writable_dir, write_json, write_text
    from edgekit.runtime.data import datasets
    from edgekit.runtime.measure.evaluate import SCHEMA, evaluate, markdown
    from edgekit.runtime.opening import open_model

    out = ensure_writable_dir(args.out)
    with open_model(args.artifact, device=args.device, task=args.task) as opened:
        card = opened.card
        ds = datasets.load(card.task, args.dataset, args.split, args.format)
        datasets.check_classes(ds, card.classes, f"{args.artifact} model")
        metrics = evaluate(opened.infer, card, ds, args.limit)
    r = {"schema": SCHEMA, "artifact": args.artifact, "model": card.name, "task": card.task,
         "backend": opened.record.to_dict(), "precision": opened.precision, "data": args.dataset,
         "split": args.split, "metrics": metrics}
    write_json(out / "eval.json", r)
    write_text(out / "eval.md", markdown(r))
    print(markdown(r), end="")
    print(f"\nreport: {out / 'eval.json'}, {out / 'eval.md'}")
    return 0
