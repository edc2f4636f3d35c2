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
    positive_int,
)


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
    be.add_argument("--keep-fp32", action="append", metavar="NODE_OR_OP", help="keep a node or op type out of INT8")
    be.add_argument("--dla-core", type=count, help="build for this DLA core (TensorRT on Jetson), GPU fallback on")
    be.add_argument("--workspace", type=positive_int, default=1024, metavar="MB",
                    help="TensorRT workspace (default 1024)")
    be.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to read and update")
    be.add_argument("--sparsity", action="store_true", help="let TensorRT use 2:4 sparse weights")
    be.add_argument("--max-batch", type=positive_int, default=1,
                    help="largest batch (needs an ONNX with a dynamic batch axis: edgekit export --dynamic-batch N)")
    be.add_argument("--if-stale", action="store_true", help="rebuild only when an input or the environment changed")
    add_card_flags(be)
    be.set_defaults(func=run)
    return be


def run(args: argparse.Namespace) -> int:
    from edgekit.build.engine_build import BuildOptions, build_engine, placement_summary

    opts = BuildOptions(
        backend=args.backend, precision=args.precision, calib=args.calib, calib_method=args.calib_method,
        calib_size=args.calib_size, keep_fp32=args.keep_fp32 or [], dla_core=args.dla_core,
        workspace_mb=args.workspace, timing_cache=args.timing_cache, sparsity=args.sparsity,
        max_batch=args.max_batch, if_stale=args.if_stale, card_file=args.card, card_overrides=card_overrides(args),
        layout=args.layout,
    )
    rep = build_engine(args.model, args.out, opts)
    if rep.up_to_date:
        print(f"{rep.engine} is up to date (inputs and environment unchanged); nothing rebuilt")
        return 0
    print(f"engine:     {rep.engine} ({rep.backend}, {rep.precision}, {rep.bytes / 1024:.0f} KB, built in "
          f"{rep.seconds:.1f} s)")
    print(f"manifest:   {rep.manifest}")
    if rep.card is not None and rep.card_source != "edgekit metadata":
        c = rep.card
        print(f"model card: from {rep.card_source}: {c.task}, {c.num_classes} classes, input {c.input_size[1]}x"
              f"{c.input_size[0]} {c.color} {c.resize_mode}, output layout {c.output_layout}" +
              (f"; fixed the dynamic input's {', '.join(rep.fixed_input)}" if rep.fixed_input else ""))
    for kind, path in rep.extra_files.items():
        print(f"also wrote: {path} ({kind})")
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
    key = rep.agreement_key
    print(f"agreement with FP32 on {a.get('source') or str(a['frames']) + ' frames'}: {key} {a[key]:.4f}, "
          f"max abs output diff {a['max_abs_diff']}")
    if "tensorrt_qdq_predicted" in a:
        t = a["tensorrt_qdq_predicted"]
        print(f"TensorRT Q/DQ file on this CPU (predicts the Jetson INT8 engine): {key} {t[key]:.4f}, "
              f"max abs output diff {t['max_abs_diff']}")
    return 0
