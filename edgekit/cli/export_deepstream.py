"""`edgekit export-deepstream`: an engine as a DeepStream Gst-nvinfer configuration folder."""

import argparse
from typing import List

from edgekit.cli.common import add_out


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    ex = sub.add_parser(
        "export-deepstream", help="write a DeepStream nvinfer configuration folder for an engine", parents=parents,
        description="Write a folder for NVIDIA DeepStream's nvinfer element from an engine and its manifest: "
                    "config_infer_primary.txt (model file, precision, batch size, the card's normalisation, channel "
                    "order and letterbox, classes and thresholds), labels.txt, the model file and a README. A "
                    "TensorRT engine is handed over as model-engine-file; for an ONNX Runtime engine DeepStream builds "
                    "its own TensorRT engine from the ONNX (for INT8 the TensorRT Q/DQ ONNX written beside it). "
                    "Written from NVIDIA's documentation, not run here. A detector needs a bounding-box parser "
                    "library: DeepStream's own parsers read none of edgekit's output layouts.",
    )
    ex.add_argument("engine", help="engine from build-engine (with its manifest) or an edgekit ONNX (FP32)")
    add_out(ex, what="the folder to write (new, or empty)")
    ex.add_argument("--parse-bbox-func", metavar="NAME",
                    help="detectors: the bounding-box parser function nvinfer calls (parse-bbox-func-name)")
    ex.add_argument("--custom-lib", metavar="LIB.so",
                    help="detectors: the shared library that exports it (custom-lib-path; relative to the folder, or "
                         "absolute)")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace a non-empty output folder (an earlier export-deepstream folder is replaced "
                         "without it)")
    ex.set_defaults(func=run)
    return ex


def run(args: argparse.Namespace) -> int:
    from edgekit.errors import EdgekitError
    from edgekit.runtime.serving.deepstream import CustomParser, export_deepstream

    if bool(args.parse_bbox_func) != bool(args.custom_lib):
        raise EdgekitError("--parse-bbox-func and --custom-lib go together: the parser function and its library")
    parser = CustomParser(args.parse_bbox_func, args.custom_lib) if args.parse_bbox_func else None
    rep = export_deepstream(args.engine, args.out, overwrite=args.overwrite, parser=parser)
    print(f"wrote the DeepStream nvinfer folder {rep.folder} (from the documentation; not run here):")
    for name in rep.files:
        print(f"  {name}")
    print(f"{rep.model_key}={rep.model_file}, network-mode {rep.network_mode}, network-type {rep.network_type}")
    for w in rep.warnings:
        print(f"warning: {w}")
    print(f"run it: gst-launch-1.0 ... ! nvinfer config-file-path={rep.config} ! ...  (see {rep.folder}/README.md)")
    return 0
