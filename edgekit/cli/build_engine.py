"""`edgekit build-engine`: an engine for TensorRT or ONNX Runtime (FP32/FP16/INT8) with a manifest."""

import argparse
from typing import List

from edgekit.cli.common import (
    BACKEND_OR_AUTO,
    CALIB_METHODS,
    add_card_flags,
    add_out,
    card_overrides,
    count,
    points,
    positive_int,
)
from edgekit.runtime.text import printable


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    be = sub.add_parser(
        "build-engine", help="build a TensorRT or ONNX Runtime engine (FP32/FP16/INT8) with a manifest",
        parents=parents,
        description="Build an engine from an ONNX. INT8 is calibrated on real images through the model card's "
                    "preprocessing. The engine and ENGINE.manifest.json are written atomically; loading checks the "
                    "manifest against the machine.",
    )
    be.add_argument("model", help="ONNX file (from edgekit export, or any with --card)")
    add_out(be, what="engine file to write")
    be.add_argument("--backend", default="auto", choices=BACKEND_OR_AUTO, metavar="BACKEND",
                    help="%(choices)s (default auto: the first available)")
    be.add_argument("--precision", default="fp32", help="fp32, fp16, int8 or best (default fp32)")
    be.add_argument("--calib", help="calibration images: a folder or a video (INT8)")
    be.add_argument("--calib-method", default="minmax", choices=CALIB_METHODS, metavar="METHOD",
                    help="INT8 calibration: %(choices)s (default minmax)")
    be.add_argument("--calib-size", type=positive_int, default=200, help="calibration images to use (default 200)")
    be.add_argument("--val", metavar="IMAGES_OR_VIDEO",
                    help="frames to measure agreement with FP32 on (default for INT8: the end of --calib, held out "
                         "of calibration)")
    be.add_argument("--val-size", type=positive_int, default=50, help="agreement frames to use (default 50)")
    be.add_argument("--accuracy-budget", type=points, metavar="POINTS",
                    help="INT8: take the parts of the network whose quantization costs most out of INT8 until "
                         "agreement with FP32 on the held-out frames is within POINTS (100 x (1 - agreement)) "
                         "for both INT8 files")
    be.add_argument("--keep-fp32", action="append", metavar="NODE_OR_OP", help="keep a node or op type out of INT8")
    be.add_argument("--dla-core", type=count, help="build for this DLA core (TensorRT on Jetson), GPU fallback on")
    be.add_argument("--workspace", type=positive_int, default=1024, metavar="MB",
                    help="TensorRT workspace (default 1024)")
    be.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to read and update")
    be.add_argument("--sparsity", action="store_true", help="let TensorRT use 2:4 sparse weights")
    be.add_argument("--max-batch", type=positive_int, default=1,
                    help="largest batch (needs an ONNX with a dynamic batch axis: edgekit export --dynamic-batch N)")
    be.add_argument("--if-stale", action="store_true", help="rebuild only when an input or the environment changed")
    be.add_argument("--fuse-preprocess", action="store_true",
                    help="first move the card's preprocessing into the graph (before calibration, quantization and "
                         "agreement checks): the engine takes the letterboxed frame as OpenCV gives it, uint8 "
                         "[N, H, W, 3] BGR, and casts, reorders channels, normalises and transposes to NCHW itself; "
                         "the resize/letterbox stays on the host")
    be.add_argument("--provider", default="cpu", choices=("cpu", "cuda", "tensorrt"),
                    help="with --backend onnxruntime: the execution provider that runs the engine: cpu (default), "
                         "cuda or tensorrt (both need onnxruntime-gpu; on a Jetson NVIDIA's wheel). The TensorRT "
                         "provider runs FP16 and the INT8 Q/DQ file, caching its engines in ENGINE.ort-trt-cache")
    be.add_argument("--nms", default="host", choices=("host", "engine"),
                    help="where a detector's NMS runs: host (default, after the engine) or engine (appended to the "
                         "graph before calibration, ONNX NonMaxSuppression; the engine gives end2end [N, K, 6] "
                         "detections with the card's thresholds built in)")
    add_card_flags(be)
    be.set_defaults(func=run)
    return be


def run(args: argparse.Namespace) -> int:
    from edgekit.build.engine_build import BuildOptions, build_engine, placement_summary
    from edgekit.build.int8_search import SHOWN

    opts = BuildOptions(
        backend=args.backend, precision=args.precision, calib=args.calib, calib_method=args.calib_method,
        calib_size=args.calib_size, keep_fp32=args.keep_fp32 or [], dla_core=args.dla_core,
        workspace_mb=args.workspace, timing_cache=args.timing_cache, sparsity=args.sparsity,
        max_batch=args.max_batch, if_stale=args.if_stale, card_file=args.card, card_overrides=card_overrides(args),
        layout=args.layout, val=args.val, val_size=args.val_size, accuracy_budget=args.accuracy_budget,
        fuse_preprocess=args.fuse_preprocess, nms=args.nms, provider=args.provider,
    )
    rep = build_engine(args.model, args.out, opts)
    if rep.up_to_date:
        print(f"{rep.engine} is up to date (inputs and environment unchanged); nothing rebuilt")
        return 0
    print(f"engine:     {rep.engine} ({rep.backend}, {rep.precision}, {rep.bytes / 1024:.0f} KB, built in "
          f"{rep.seconds:.1f} s)")
    print(f"manifest:   {rep.manifest}")
    if args.nms == "engine" and rep.card is not None:
        c = rep.card
        print(f"nms:        in the graph (score > {c.score_threshold:g}, IoU {c.iou_threshold:g}, at most "
              f"{c.max_detections}), output layout {c.output_layout}")
    if rep.card is not None and rep.card_source != "edgekit metadata":
        c = rep.card
        print(f"model card: from {rep.card_source}: {c.task}, {c.num_classes} classes, input {c.input_size[1]}x"
              f"{c.input_size[0]} {c.color} {c.resize_mode}, output layout {c.output_layout}" +
              (f"; fixed the dynamic input's {', '.join(rep.fixed_input)}" if rep.fixed_input else ""))
    for kind, path in rep.extra_files.items():
        print(f"also wrote: {path} ({kind})")
    if rep.card is not None and rep.card.input_format == "nhwc_uint8":
        print(f"input:      '{printable(rep.card.input_name)}' takes letterboxed uint8 [N, H, W, 3] BGR frames "
              "(preprocessing fused into the graph; the resize stays on the host)")
    if rep.placement:
        print(placement_summary(rep.placement, rep.dla_core))
    if rep.precision == "int8":
        shown = ", ".join(rep.kept_fp32[:12]) or "none"
        more = f" and {len(rep.kept_fp32) - 12} more (all listed in the manifest)" if len(rep.kept_fp32) > 12 else ""
        print(f"kept in higher precision ({len(rep.kept_fp32)} nodes): {shown}{more}")
    if rep.sparsity is not None:
        s = rep.sparsity
        print(f"2:4 sparsity: {s['sparse']} of {s['eligible']} eligible conv weights follow the pattern" +
              ("" if s["sparse"] else " (none: TensorRT keeps dense kernels; make zeros with edgekit prune "
                                      "--sparsity 2:4)"))
    a = rep.agreement
    print(f"agreement with FP32 on {a.get('source') or str(a['frames']) + ' frames'}:")
    print(f"  {'engine':<14}{agreement_text(rep.agreement_key, a)}")
    if "tensorrt_qdq_predicted" in a:
        print(f"  {'TensorRT Q/DQ':<14}{agreement_text(rep.agreement_key, a['tensorrt_qdq_predicted'])} (this file on "
              "this CPU predicts the Jetson INT8 engine)")
    if a.get("note"):
        print(f"  note: {a['note']}")
    if rep.sensitivity:
        top = ", ".join(f"{printable(s['tensor'])} {s['sqnr_db']:.1f} dB" for s in rep.sensitivity[:SHOWN])
        print(f"noisiest INT8 tensors (SQNR of their own Q/DQ; all {len(rep.sensitivity)} in the manifest): {top}")
    if rep.budget is not None:
        print(budget_text(rep.budget))
    return 0


def agreement_text(key: str, a: dict) -> str:
    """'detection_f1 0.9876, mean box IoU 0.951, mean |score diff| 0.012 (max 0.08), max abs output diff 0.3'."""
    from edgekit.runtime.tasks.detection import MatchFidelity

    parts = [f"{key} {a[key]:.4f}"]
    if "mean_box_iou" in a or "mean_mask_iou" in a:
        iou = a.get("mean_box_iou", a.get("mean_mask_iou"))
        parts.append(f"mean {'box' if 'mean_box_iou' in a else 'mask'} IoU {iou:.3f}, mean |score diff| "
                     f"{a['mean_score_diff']:.3f} (max {a['max_score_diff']:.3f}), {a['matched']} of "
                     f"{a['reference_count']} FP32 results matched" +
                     (f", {a['unmatched']} unmatched ({a['unmatched_borderline']} scored within "
                      f"{MatchFidelity.BORDERLINE} of the threshold)" if a.get("unmatched") else ""))
    if "pixel_agreement" in a:
        worst = min(((v, c) for c, v in a.get("per_class_iou", {}).items() if v is not None), default=None)
        parts.append(f"pixel agreement {a['pixel_agreement']:.4f}" +
                     (f", lowest class IoU {worst[0]:.3f} ({printable(worst[1])})" if worst else ""))
    parts.append(f"max abs output diff {a['max_abs_diff']}")
    return ", ".join(parts)


def budget_text(b: dict, shown: int = 10) -> str:
    """The budget search: one line per step, then the outcome."""
    lines = [f"accuracy budget {b['budget_points']:g} points of {b['measure']} (the worse INT8 file):"]
    for s in b["steps"]:
        agreement = ", ".join(f"{k} {v:.4f}" for k, v in s["agreement"].items())
        latency = "" if s["latency_vs_fp32"] is None else f", latency {s['latency_vs_fp32']:.2f}x FP32"
        lines.append(f"  {s['groups_in_float']:>3} groups ({s['tensors_in_float']} tensors) in float: "
                     f"{agreement}{latency}")
    outcome = "met" if b["met"] else "NOT met: the closest step is what was written"
    groups = ", ".join(printable(g) for g in b["groups_in_float"][:shown]) or "none"
    lines.append(f"  {outcome}: {b['points_lost']:.2f} points lost with {len(b['groups_in_float'])} groups in float "
                 f"({groups})")
    return "\n".join(lines)
