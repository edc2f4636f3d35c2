"""The `edgekit` command line. Each verb's module is imported only when that verb runs, so the
runtime-side verbs never pull in torch and a missing optional package fails as one line."""

import argparse
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from edgekit import __version__
from edgekit.errors import EdgekitError, MissingDependency

# import name -> (package to install, edgekit extra that brings it)
OPTIONAL_MODULES = {
    "torch": ("torch", "build"),
    "onnx": ("onnx", "build"),
    "onnxslim": ("onnxslim", "build"),
    "safetensors": ("safetensors", "build"),
    "torch_pruning": ("torch-pruning", "build"),
    "yaml": ("pyyaml", "build"),
    "faster_coco_eval": ("faster-coco-eval", "eval"),
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


def _percentiles(text: str) -> Tuple[float, ...]:
    """'90,95,99' -> (90.0, 95.0, 99.0)."""
    try:
        qs = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated percentiles like 90,95,99, got '{text}'") from None
    if not qs or not all(0 < q < 100 for q in qs):
        raise argparse.ArgumentTypeError(f"percentiles must lie strictly between 0 and 100, got '{text}'")
    return qs


def _names(text: str) -> List[str]:
    """'fp32, int8' -> ['fp32', 'int8']."""
    return [v.strip().lower() for v in text.split(",") if v.strip()]


# --- verbs ---------------------------------------------------------------------------------------
def cmd_data_synth(args: argparse.Namespace) -> int:
    from edgekit.runtime.data.writer import balance_markdown, write_dataset

    summary = write_dataset(
        args.out, seed=args.seed, counts={"train": args.train, "val": args.val, "test": args.test},
        size=args.size, videos=args.videos, video_frames=args.video_frames, video_size=args.video_size,
        fps=args.fps, overwrite=args.overwrite, progress=not args.quiet, jpeg_quality=args.jpeg_quality,
    )
    print(balance_markdown(summary), end="")
    print(f"wrote {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekit.build.train.loop import TrainConfig, config_from_file, train

    if args.resume:
        cfg = config_from_file(Path(args.resume) / "config.yaml")
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
            seed=args.seed, init=args.init or "", init_backbone=args.init_backbone or "", freeze=args.freeze or "",
            name=args.name or "", device=args.device, max_train_images=args.max_train_images,
            max_val_images=args.max_val_images, progress=not args.quiet,
        )
        report = train(cfg)
    metric = [k for k in report if k.startswith("best_val_")][0]
    print(f"best {metric[len('best_val_'):]} {report[metric]:.4f} at epoch {report['best_epoch']} "
          f"({report['train_seconds']:.0f} s of training); checkpoint: {report['checkpoint']}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from edgekit.build.prune import PruneOptions, markdown, parse_macs, prune

    opts = PruneOptions(
        out=args.output, data=args.data, ratio=args.ratio,
        target_macs=parse_macs(args.target_macs) if args.target_macs else None,
        target_latency_ms=args.target_latency, backend=args.backend, importance=args.importance,
        round_to=args.round_to, finetune_epochs=args.finetune_epochs, lr=args.lr, batch_size=args.batch_size,
        sparsity=args.sparsity, format=args.format, device=args.device, max_train_images=args.max_train_images,
        max_val_images=args.max_val_images, progress=not args.quiet, report_seconds=args.report_duration,
        name=args.name or "",
    )
    r = prune(args.checkpoint, opts)
    print(markdown(r), end="")
    print(f"\ncheckpoint: {r['checkpoint']}\nreport: {args.output}/prune_report.json, {args.output}/prune_report.md")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekit.build.export import export

    rep = export(args.checkpoint, args.output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                 simplify=not args.no_simplify, parity_images=Path(args.parity_images) if args.parity_images else None,
                 atol=args.atol, rtol=args.rtol)
    print(f"wrote {rep.path} (opset {rep.opset}, {rep.nodes_before} -> {rep.nodes_after} nodes after simplification, "
          f"{rep.path.stat().st_size / 1024:.0f} KB) in {rep.seconds:.1f} s")
    print(f"parity vs PyTorch on {rep.parity_inputs}:")
    for p in rep.parity:
        print(f"  {p.output}: max abs error {p.max_abs:.3g}, max relative error {p.max_rel:.3g}")
    return 0


def _card_from_flags(args: argparse.Namespace):
    """A model card for an ONNX not made by edgekit: --card YAML, or flags."""
    from edgekit.runtime.card import ModelCard

    if args.card:
        return ModelCard.load(args.card)
    if not (args.task or args.classes):
        return None
    missing = [f for f, v in (("--task", args.task), ("--classes", args.classes), ("--input-size", args.input_size))
               if not v]
    if missing:
        raise EdgekitError(f"describing an imported ONNX needs {', '.join(missing)} too (or --card CARD.yaml)")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    w, h = args.input_size
    return ModelCard(name=args.name or "imported", task=args.task, arch="external", classes=classes, input_size=(h, w),
                     mean=tuple(args.mean), std=tuple(args.std), resize_mode=args.resize, pad_value=args.pad_value,
                     input_name=args.input_name, output_name=args.output_name)


def cmd_build_engine(args: argparse.Namespace) -> int:
    from edgekit.build.engine_build import BuildOptions, build_engine

    opts = BuildOptions(
        backend=args.backend, precision=args.precision, calib=args.calib, calib_method=args.calib_method,
        calib_size=args.calib_size, keep_fp32=args.keep_fp32 or [], dla_core=args.dla_core,
        workspace_mb=args.workspace, timing_cache=args.timing_cache, sparsity=args.sparsity,
        max_batch=args.max_batch, if_stale=args.if_stale, card=_card_from_flags(args),
    )
    rep = build_engine(args.model, args.output, opts)
    if rep.up_to_date:
        print(f"{rep.engine} is up to date (inputs and environment unchanged); nothing rebuilt")
        return 0
    print(f"engine:     {rep.engine} ({rep.backend}, {rep.precision}, {rep.bytes / 1024:.0f} KB, built in "
          f"{rep.seconds:.1f} s)")
    print(f"manifest:   {rep.manifest}")
    for kind, path in rep.extra_files.items():
        print(f"also wrote: {path} ({kind})")
    if rep.precision == "int8":
        print(f"kept in higher precision ({len(rep.kept_fp32)} nodes): {', '.join(rep.kept_fp32) or 'none'}")
    if rep.sparsity is not None:
        s = rep.sparsity
        print(f"2:4 sparsity: {s['sparse']} of {s['eligible']} eligible conv weights follow the pattern" +
              ("" if s["sparse"] else " (none: TensorRT keeps dense kernels; make zeros with edgekit prune "
                                      "--sparsity 2:4)"))
    a = rep.agreement
    key = "detection_f1" if "detection_f1" in a else "pixel_agreement"
    print(f"agreement with FP32 on {a['frames']} frames: {key} {a[key]:.4f}, max abs output diff {a['max_abs_diff']}")
    if "tensorrt_qdq_predicted" in a:
        t = a["tensorrt_qdq_predicted"]
        print(f"TensorRT Q/DQ file on this CPU (predicts the Jetson INT8 engine): {key} {t[key]:.4f}, "
              f"max abs output diff {t['max_abs_diff']}")
    return 0


def cmd_calib_set(args: argparse.Namespace) -> int:
    from pathlib import Path

    import cv2

    from edgekit.runtime.artifacts import atomic_dir
    from edgekit.runtime.calibration import select_from_video

    video = Path(args.video)
    if not video.is_file():
        raise EdgekitError(f"{video}: video not found")
    indices, frames = select_from_video(video, args.n)
    with atomic_dir(args.output, overwrite=args.overwrite) as tmp:
        for i, f in zip(indices, frames):
            cv2.imwrite(str(tmp / f"frame_{i:06d}.jpg"), f, [cv2.IMWRITE_JPEG_QUALITY, 95])
    print(f"wrote {len(frames)} frames of {video} to {args.output}")
    return 0


def cmd_run_stream(args: argparse.Namespace) -> int:
    from edgekit.runtime.stream.runner import StreamOptions, run_stream

    opts = StreamOptions(
        out=args.out, task=args.task, save_video=not args.no_video, jsonl=not args.no_jsonl, show=args.show,
        max_frames=args.max_frames, duration=args.duration, loop=args.loop, score_threshold=args.score_threshold,
        iou_threshold=args.iou_threshold, queue_size=args.queue_size, timeout=args.timeout, reconnect=args.reconnect,
        rtsp_transport=args.rtsp_transport, rtsp_latency_ms=args.rtsp_latency, progress=not args.quiet,
        power=not args.no_power,
    )
    r = run_stream(args.engine, args.source, opts)
    from edgekit.runtime.stream.report import markdown

    print(markdown(r), end="")
    print(f"\nreport: {args.out}/report.json, {args.out}/report.md" +
          (f", plots: {', '.join(r['plots'])}" if r.get("plots") else ""))
    if r["outputs"]["video"]:
        print(f"annotated video: {r['outputs']['video']}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekit.runtime.artifacts import ensure_writable_dir
    from edgekit.runtime.measure import profile as prof
    from edgekit.runtime.opening import open_model

    out = ensure_writable_dir(args.out)
    opts = prof.ProfileOptions(warmup_s=args.warmup, iterations=args.iterations, duration_s=args.duration,
                               batch=args.batch, percentiles=args.percentiles, power=not args.no_power)
    backend, described, card = open_model(args.artifact, device=args.device, task=args.task)
    with backend:
        r = prof.profile(prof.Subject(Path(args.artifact).name, backend, card, described, args.artifact), opts)
    prof.write(r, out)
    print(prof.markdown(r), end="")
    print(f"\nreport: {out / 'profile.json'}, {out / 'profile.md'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from edgekit.runtime.artifacts import ensure_writable_dir, write_json, write_text
    from edgekit.runtime.data import datasets
    from edgekit.runtime.measure.evaluate import SCHEMA, evaluate, markdown
    from edgekit.runtime.opening import open_model

    out = ensure_writable_dir(args.out)
    backend, described, card = open_model(args.artifact, device=args.device, task=args.task)
    with backend:
        ds = datasets.load(card.task, args.dataset, args.split, args.format)
        datasets.check_classes(ds, card.classes, f"{args.artifact} model")
        metrics = evaluate(lambda x: backend.infer([x])[0], card, ds, args.limit)
    r = {"schema": SCHEMA, "artifact": args.artifact, "model": card.name, "task": card.task,
         "backend": described["backend"], "precision": described.get("precision"), "data": args.dataset,
         "split": args.split, "metrics": metrics}
    write_json(out / "eval.json", r)
    write_text(out / "eval.md", markdown(r))
    print(markdown(r), end="")
    print(f"\nreport: {out / 'eval.json'}, {out / 'eval.md'}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
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


def cmd_doctor(args: argparse.Namespace) -> int:
    from edgekit.runtime.jetson.doctor import main as doctor

    return doctor(as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekit.build.demo import run as run_demo

    run_demo(Path(args.out))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from edgekit.build.models import list_models

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
    synth.add_argument("--jpeg-quality", type=int, default=92, choices=range(10, 101), metavar="10..100")
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
    tr.add_argument("--init-backbone", metavar="CKPT",
                    help="start the backbone from any edgekit checkpoint whose backbone fits (e.g. a detector's)")
    tr.add_argument("--freeze", choices=("backbone",), help="keep the backbone fixed")
    tr.add_argument("--name", help="model name in the card (default: the run folder's name)")
    tr.add_argument("--device", default="auto", help="cpu, cuda or auto")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last epoch")
    tr.add_argument("--max-train-images", type=int, default=0, help=argparse.SUPPRESS)
    tr.add_argument("--max-val-images", type=int, default=0, help=argparse.SUPPRESS)
    tr.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    tr.set_defaults(func=cmd_train)

    pn = sub.add_parser(
        "prune", help="structured channel pruning (Torch-Pruning) + fine-tuning; 2:4 sparsity",
        description="Remove channels (dependency-aware, through Torch-Pruning; output layers never pruned, channel "
                    "counts rounded for tensor cores) to a ratio, a MACs target or a measured latency target, then "
                    "fine-tune with the training loop. --sparsity 2:4 zeroes 2 of every 4 input-channel weights "
                    "(kept while fine-tuning) for TensorRT's sparse tensor cores. The pruned architecture is "
                    "recorded in the card; OUT gets pruned.*, best.* (fine-tuned) and prune_report.json/.md.",
    )
    pn.add_argument("checkpoint", help="checkpoint to prune (.safetensors with its card)")
    pn.add_argument("-o", "--output", required=True, help="output folder")
    pn.add_argument("--data", help="dataset for fine-tuning, taylor importance and the accuracy report")
    pn.add_argument("--name", help="model name in the pruned card (default: NAME-pRATIO, e.g. edgenet-det-s-p50)")
    target = pn.add_mutually_exclusive_group()
    target.add_argument("--ratio", type=float, help="share of channels to remove from each layer, e.g. 0.3")
    target.add_argument("--target-macs", metavar="M", help="prune until at most M MACs, e.g. 40M")
    target.add_argument("--target-latency", type=float, metavar="MS", help="prune until p50 latency on --backend "
                        "is at most MS, measured")
    pn.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "tensorrt"),
                    help="where --target-latency is measured (default onnxruntime)")
    pn.add_argument("--importance", default="l2", choices=("l1", "l2", "taylor"))
    pn.add_argument("--round-to", type=int, default=8, help="keep channel counts multiples of this (default 8)")
    pn.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs (default 10; 0: none)")
    pn.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak learning rate (default 1e-3)")
    pn.add_argument("--batch-size", type=int, default=16)
    pn.add_argument("--sparsity", choices=("2:4",), help="magnitude 2:4 sparsity on eligible conv weights")
    pn.add_argument("--format", default="auto", choices=("auto", "coco", "yolo"))
    pn.add_argument("--device", default="auto", help="fine-tuning device: cpu, cuda or auto")
    pn.add_argument("--max-train-images", type=int, default=0, help=argparse.SUPPRESS)
    pn.add_argument("--max-val-images", type=int, default=0, help=argparse.SUPPRESS)
    pn.add_argument("--report-duration", type=float, default=3.0, metavar="SECONDS",
                    help="latency measurement per stage in the report (default 3 s)")
    pn.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    pn.set_defaults(func=cmd_prune)

    ex = sub.add_parser(
        "export", help="export a checkpoint to ONNX, parity-checked against PyTorch",
        description="Export a checkpoint to ONNX (static shapes unless --dynamic-batch), simplified with onnxslim, "
                    "the model card embedded in metadata_props. ONNX Runtime's outputs are compared with "
                    "PyTorch's on random and real frames; over tolerance nothing is written.",
    )
    ex.add_argument("checkpoint", help="NAME.safetensors (with NAME.card.yaml beside it) or its folder")
    ex.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--dynamic-batch", type=int, default=0, metavar="MAX", help="dynamic batch axis up to MAX")
    ex.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    ex.add_argument("--parity-images", help="folder of real images for the parity check (default: synthetic scenes)")
    ex.add_argument("--atol", type=float, default=1e-3, help="parity tolerance, absolute (default 1e-3)")
    ex.add_argument("--rtol", type=float, default=1e-3, help="parity tolerance, relative (default 1e-3)")
    ex.set_defaults(func=cmd_export)

    be = sub.add_parser(
        "build-engine", help="build a TensorRT or ONNX Runtime engine (FP32/FP16/INT8) with a manifest",
        description="Build an engine from an ONNX. INT8 is calibrated on real images through the model card's "
                    "preprocessing. The engine and ENGINE.manifest.json are written atomically; loading checks the "
                    "manifest against the machine.",
    )
    be.add_argument("model", help="ONNX file (from edgekit export, or any with --card)")
    be.add_argument("-o", "--output", required=True, help="engine file to write")
    be.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnxruntime"))
    be.add_argument("--precision", default="fp32", help="fp32, fp16, int8 or best (default fp32)")
    be.add_argument("--calib", help="calibration images: a folder or a video (INT8)")
    be.add_argument("--calib-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    be.add_argument("--calib-size", type=int, default=200, help="calibration images to use (default 200)")
    be.add_argument("--keep-fp32", action="append", metavar="NODE_OR_OP", help="keep a node or op type out of INT8")
    be.add_argument("--dla-core", type=int, help="build for this DLA core (TensorRT on Jetson), GPU fallback on")
    be.add_argument("--workspace", type=int, default=1024, metavar="MB", help="TensorRT workspace (default 1024)")
    be.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to read and update")
    be.add_argument("--sparsity", action="store_true", help="let TensorRT use 2:4 sparse weights")
    be.add_argument("--max-batch", type=int, default=1, help="largest batch (dynamic-batch ONNX)")
    be.add_argument("--if-stale", action="store_true", help="rebuild only when an input or the environment changed")
    card = be.add_argument_group("model card, for an ONNX not made by edgekit")
    card.add_argument("--card", help="model card YAML")
    card.add_argument("--task", choices=("detection", "segmentation"))
    card.add_argument("--classes", help="comma-separated class names")
    card.add_argument("--input-size", type=_size, help="WxH of the network input")
    card.add_argument("--mean", type=float, nargs=3, default=(0.0, 0.0, 0.0), help="per-channel mean on 0..1 pixels")
    card.add_argument("--std", type=float, nargs=3, default=(1.0, 1.0, 1.0), help="per-channel std on 0..1 pixels")
    card.add_argument("--resize", default="letterbox", choices=("letterbox", "stretch"))
    card.add_argument("--pad-value", type=int, default=114)
    card.add_argument("--input-name", default="images")
    card.add_argument("--output-name", default="output0")
    card.add_argument("--name", help="model name")
    be.set_defaults(func=cmd_build_engine)

    cs = sub.add_parser(
        "calib-set", help="pick calibration frames from a video (spread over time and scene changes)",
        description="Pick N frames from a video for INT8 calibration: half evenly spread over time, half at the "
                    "largest scene changes, written as JPEG files to a folder.",
    )
    cs.add_argument("video")
    cs.add_argument("-n", type=int, default=500, help="frames to pick (default 500)")
    cs.add_argument("-o", "--output", required=True, help="folder to write (must not exist unless --overwrite)")
    cs.add_argument("--overwrite", action="store_true")
    cs.set_defaults(func=cmd_calib_set)

    rs = sub.add_parser(
        "run-stream", help="run an engine on a video stream and report latency per stage",
        description="Run an engine on a stream: a video file, an image folder, a camera index or /dev/videoN, "
                    "csi://N, rtsp://... or synthetic://?size=640x480&fps=30. One thread per stage; live "
                    "sources drop the oldest frame when behind (counted), files lose none. Writes "
                    "report.json/.md, latency plots, annotated.mp4 and results.jsonl to --out.",
    )
    rs.add_argument("engine", help="engine from build-engine (or an ONNX from edgekit export)")
    rs.add_argument("source", help="video file, image folder, camera index, /dev/videoN, csi://N, rtsp://..., "
                                   "synthetic://")
    rs.add_argument("--out", default="runs/stream", help="output folder (default runs/stream)")
    rs.add_argument("--task", choices=("detection", "segmentation"), help="refuse an engine of the other task")
    rs.add_argument("--max-frames", type=int, default=0)
    rs.add_argument("--duration", type=float, default=0.0, metavar="SECONDS")
    rs.add_argument("--loop", action="store_true", help="loop a video file or image folder")
    rs.add_argument("--score-threshold", type=float, help="override the card's score threshold")
    rs.add_argument("--iou-threshold", type=float, help="override the card's NMS IoU threshold")
    rs.add_argument("--no-video", action="store_true", help="do not write annotated.mp4")
    rs.add_argument("--no-jsonl", action="store_true", help="do not write results.jsonl")
    rs.add_argument("--show", action="store_true", help="show a window (needs a display)")
    rs.add_argument("--queue-size", type=int, default=4, help="frames each queue holds (default 4)")
    rs.add_argument("--timeout", type=float, default=5.0, help="seconds without frames before a reconnect")
    rs.add_argument("--reconnect", type=int, default=3, help="reconnect attempts for a network stream")
    rs.add_argument("--rtsp-transport", default="tcp", choices=("tcp", "udp"))
    rs.add_argument("--rtsp-latency", type=int, default=200, metavar="MS", help="RTSP jitter buffer (default 200)")
    rs.add_argument("--no-power", action="store_true", help="do not sample tegrastats on a Jetson")
    rs.add_argument("-q", "--quiet", action="store_true", help="no live progress line")
    rs.set_defaults(func=cmd_run_stream)

    pr = sub.add_parser(
        "profile", help="engine-only latency (like trtexec): percentiles, CV, throughput, power on Jetson",
        description="Time an engine, an edgekit ONNX or a checkpoint (eager PyTorch, the baseline) alone in a loop: "
                    "warm-up, then at least --iterations runs and --duration seconds. Reports host latency and, on a "
                    "GPU, H2D / compute / D2H from CUDA events: percentiles, max, mean, CV and throughput; warns "
                    "when the variation says clocks are unstable; on a Jetson samples tegrastats for power, energy "
                    "per image and throttling. Writes profile.json and profile.md to --out.",
    )
    pr.add_argument("artifact", help="engine (with its manifest), edgekit ONNX, or checkpoint (.safetensors)")
    pr.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    pr.add_argument("--warmup", type=float, default=1.0, metavar="SECONDS", help="warm-up time (default 1 s, "
                    "and at least 10 runs)")
    pr.add_argument("--iterations", type=int, default=200, help="measure at least this many runs (default 200)")
    pr.add_argument("--duration", type=float, default=10.0, metavar="SECONDS",
                    help="and for at least this long (default 10 s)")
    pr.add_argument("--percentiles", type=_percentiles, default=(90.0, 95.0, 99.0),
                    help="latency percentiles besides the median (default 90,95,99)")
    pr.add_argument("--device", default="auto", help="checkpoints only: cpu, cuda or auto")
    pr.add_argument("--task", choices=("detection", "segmentation"), help="refuse a model of the other task")
    pr.add_argument("--no-power", action="store_true", help="do not sample tegrastats on a Jetson")
    pr.add_argument("--out", default="runs/profile", help="report folder (default runs/profile)")
    pr.set_defaults(func=cmd_profile)

    ev = sub.add_parser(
        "eval", help="accuracy of a checkpoint, ONNX or engine on a labelled dataset",
        description="Task accuracy through the exact runtime preprocessing and post-processing: mAP@0.5 and "
                    "mAP@0.5:0.95 by the COCO protocol for detection, mIoU and per-class IoU for segmentation. "
                    "Writes eval.json and eval.md to --out.",
    )
    ev.add_argument("artifact", help="engine (with its manifest), edgekit ONNX, or checkpoint (.safetensors)")
    ev.add_argument("dataset", help="dataset folder (COCO / YOLO labels, or masks; see edgekit data synth)")
    ev.add_argument("--split", default="test", help="split to evaluate (default test)")
    ev.add_argument("--format", default="auto", choices=("auto", "coco", "yolo"), help="detection label format")
    ev.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    ev.add_argument("--device", default="auto", help="checkpoints only: cpu, cuda or auto")
    ev.add_argument("--task", choices=("detection", "segmentation"), help="refuse a model of the other task")
    ev.add_argument("--out", default="runs/eval", help="report folder (default runs/eval)")
    ev.set_defaults(func=cmd_eval)

    sw = sub.add_parser(
        "sweep", help="build, evaluate and profile every variant side by side; table + Pareto plot",
        description="Export the checkpoint(s), build every variant this platform supports (backend x precision x "
                    "calibration method, and DLA with --dla; unsupported ones are listed with the reason), evaluate "
                    "each on the dataset and profile all of them side by side with the PyTorch FP32 reference. "
                    "Writes the engines, sweep.json, sweep.md and pareto.png to --out. Give pruned checkpoints "
                    "after the original to compare them too; the first checkpoint is the reference.",
    )
    sw.add_argument("checkpoints", nargs="+", help="checkpoint(s); the first one's PyTorch FP32 row is the reference")
    sw.add_argument("--data", required=True, help="labelled dataset folder")
    sw.add_argument("--precisions", type=_names, default=["fp32", "fp16", "int8"],
                    help="comma-separated: fp32,fp16,int8 (default all three)")
    sw.add_argument("--calib-methods", type=_names, default=["minmax"],
                    help="INT8 calibration methods: minmax,entropy,percentile (default minmax)")
    sw.add_argument("--backends", type=_names, help="tensorrt,onnxruntime (default: every one available here)")
    sw.add_argument("--dla", action="store_true", help="also build for each DLA core (TensorRT on a Jetson)")
    sw.add_argument("--calib", help="calibration images (default: the dataset's val images)")
    sw.add_argument("--calib-size", type=int, default=200)
    sw.add_argument("--split", default="test", help="split to evaluate (default test)")
    sw.add_argument("--format", default="auto", choices=("auto", "coco", "yolo"))
    sw.add_argument("--limit", type=int, default=0, help="evaluate the first N images only")
    sw.add_argument("--accuracy-budget", type=float, metavar="POINTS",
                    help="mark the fastest variant at most POINTS below the reference (mAP@0.5:0.95 or mIoU x 100)")
    sw.add_argument("--device", default="cpu", help="device of the PyTorch reference row: cpu, cuda or auto")
    sw.add_argument("--warmup", type=float, default=1.0, metavar="SECONDS")
    sw.add_argument("--iterations", type=int, default=200, help="at least this many timed runs per variant")
    sw.add_argument("--duration", type=float, default=6.0, metavar="SECONDS", help="at least this long per variant")
    sw.add_argument("--rounds", type=int, default=3, help="interleaved rounds (A B C A B C ...; default 3)")
    sw.add_argument("--batch", type=int, default=1)
    sw.add_argument("--out", default="runs/sweep", help="output folder (default runs/sweep)")
    sw.set_defaults(func=cmd_sweep)

    dr = sub.add_parser(
        "doctor", help="what this machine can run, and what to install for the rest",
        description="Backends and their versions, CUDA bindings and GPU, DLA cores, the JetPack/L4T release, power "
                    "mode, and OpenCV's video back-ends (FFmpeg, GStreamer, V4L2), with what to install for each "
                    "missing part.",
    )
    dr.add_argument("--json", action="store_true", help="machine-readable output")
    dr.set_defaults(func=cmd_doctor)

    demo = sub.add_parser(
        "demo", help="run the whole available chain on the shipped models and synthetic data",
        description="Generate synthetic test data, export both shipped models, build INT8 engines on the best "
                    "available backend and measure checkpoint and engine accuracy on the test split.",
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
