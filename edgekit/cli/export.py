"""`edgekit export`: a checkpoint to ONNX, parity-checked against PyTorch."""

import argparse
from typing import List

from edgekit.cli.common import add_out, count, non_negative, positive_int


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    ex = sub.add_parser(
        "export", help="export a checkpoint to ONNX, parity-checked against PyTorch", parents=parents,
        description="Export a checkpoint to ONNX (static shapes unless --dynamic-batch), simplified with onnxslim, "
                    "the model card embedded in metadata_props. ONNX Runtime's outputs are compared with "
                    "PyTorch's on random and real frames; over tolerance nothing is written.",
    )
    ex.add_argument("checkpoint", help="NAME.safetensors (with NAME.card.yaml beside it) or its folder")
    add_out(ex, what="the .onnx file to write")
    ex.add_argument("--opset", type=positive_int, default=17)
    ex.add_argument("--dynamic-batch", type=count, default=0, metavar="MAX", help="dynamic batch axis up to MAX")
    ex.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    ex.add_argument("--parity-images", help="folder of real images for the parity check (default: synthetic scenes)")
    ex.add_argument("--atol", type=non_negative, default=1e-3, help="parity tolerance, absolute (default 1e-3)")
    ex.add_argument("--rtol", type=non_negative, default=1e-3, help="parity tolerance, relative (default 1e-3)")
    ex.add_argument("--fuse-preprocess", action="store_true",
                    help="move the card's preprocessing into the graph: its input takes the letterboxed frame as "
                         "OpenCV gives it, uint8 [N, H, W, 3] BGR, and casts, reorders channels, normalises and "
                         "transposes to NCHW itself (the host copies a quarter of the bytes, no float work); the "
                         "resize/letterbox stays on the host")
    ex.add_argument("--nms", default="host", choices=("host", "engine"),
                    help="where a detector's NMS runs: host (default; the output is the raw head, NMS in edgekit) or "
                         "engine (NMS appended to the graph, output end2end [N, K, 6], checked against host NMS)")
    ex.set_defaults(func=run)
    return ex


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekit.build.export import export

    rep = export(args.checkpoint, args.out, opset=args.opset, dynamic_batch=args.dynamic_batch,
                 simplify=not args.no_simplify, parity_images=Path(args.parity_images) if args.parity_images else None,
                 atol=args.atol, rtol=args.rtol, fuse_preprocess=args.fuse_preprocess,
                 nms=args.nms)
    print(f"wrote {rep.path} (opset {rep.opset}, {rep.nodes_before} -> {rep.nodes_after} nodes after simplification, "
          f"{rep.path.stat().st_size / 1024:.0f} KB) in {rep.seconds:.1f} s")
    if args.fuse_preprocess:
        print("input: letterboxed uint8 [N, H, W, 3] BGR frames (preprocessing fused into the graph; the resize "
              "stays on the host)")
    if args.nms == "engine":
        print("output: NMS in the graph (ONNX NonMaxSuppression), layout end2end [N, K, 6]; same detections as host "
              "NMS on the parity frames")
    print(f"parity vs PyTorch on {rep.parity_inputs}:")
    for p in rep.parity:
        if p.max_abs == float("inf"):
            print(f"  {p.output}: varies in length (suppression in the graph); compared decoded")
        else:
            print(f"  {p.output}: max abs error {p.max_abs:.3g}, max relative error {p.max_rel:.3g}")
    if rep.decoded:
        print(f"  decoded results: {rep.decoded[0]} {rep.decoded[1]:.4f}")
    return 0
