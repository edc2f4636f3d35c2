"""`edgekit export-triton`: an engine as a Triton Inference Server model repository."""

import argparse
from typing import List

from edgekit.cli.common import add_out, count, positive_int


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    ex = sub.add_parser(
        "export-triton", help="write a Triton Inference Server model repository for an engine", parents=parents,
        description="Write a Triton model repository from an engine and its manifest: the engine for Triton's "
                    "native backend (model.plan on tensorrt_plan, model.onnx on onnxruntime_onnx) with a config.pbtxt "
                    "made from the manifest (inputs, outputs, max_batch_size, dynamic batching, instances, the model "
                    "card in its parameters); NAME_preprocess and NAME_postprocess, Python-backend models running "
                    "edgekit's own preprocessing and decode; and NAME_ensemble chaining them (frame in, result out). "
                    "Every config is parsed back with Triton's schema. Serve it with tritonserver "
                    "--model-repository=REPO; stream through it with run-stream triton://HOST:PORT/NAME.",
    )
    ex.add_argument("engine", help="engine from build-engine (with its manifest) or an edgekit ONNX")
    add_out(ex, what="the repository folder to write (new, or empty)")
    ex.add_argument("--name", help="the engine's model name in the repository (default: from the model card)")
    ex.add_argument("--instances", type=positive_int, default=1, metavar="N",
                    help="instances of each model (instance_group count; default 1)")
    ex.add_argument("--max-queue-delay-us", type=count, default=500, metavar="U",
                    help="dynamic batching: microseconds the server waits to fill a batch (default 500; engines "
                         "with a dynamic batch axis only)")
    ex.add_argument("--infer-python", action="store_true",
                    help="run the engine in a Python-backend model through edgekit's own backend instead of Triton's "
                         "native backend (for a server without it, e.g. the tritonserver of the nvidia-pytriton "
                         "wheel)")
    ex.add_argument("--python-path", action="append", default=[], metavar="DIR",
                    help="a folder to put in front of the Python models' sys.path, where the server's Python lacks "
                         "edgekit or its runtime (repeatable; recorded in the configs)")
    ex.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    ex.set_defaults(func=run)
    return ex


def run(args: argparse.Namespace) -> int:
    from edgekit.runtime.serving.triton_repo import TritonOptions, export_triton

    rep = export_triton(args.engine, args.out, TritonOptions(
        name=args.name, instances=args.instances, max_queue_delay_us=args.max_queue_delay_us,
        infer_python=args.infer_python, python_path=args.python_path, overwrite=args.overwrite))
    print(f"wrote the Triton model repository {rep.repository} (configs parsed back with Triton's schema):")
    for name, what in rep.models.items():
        print(f"  {name}: {what}")
    batching = (f"max_batch_size {rep.max_batch_size}, dynamic batching" if rep.max_batch_size
                else "max_batch_size 0 (a static engine: one frame per request)")
    print(f"{batching}; serve it with: tritonserver --model-repository={rep.repository}")
    print(f"stream through it: edgekit run-stream triton://127.0.0.1:8001/{next(iter(rep.models))} SOURCE")
    return 0
