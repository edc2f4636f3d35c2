"""The `edgekit` command line: one module per verb (edgekit/cli/<verb>.py) that declares its arguments and
imports what it runs only when it runs, so the runtime-side verbs never pull in torch and a missing optional
package fails as one line. User errors print one line and exit with their code (1; 3 for a failed video source);
usage errors exit 2; Ctrl-C 130, SIGTERM 143 (edgekit.errors.EXIT_CODES)."""

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence

from edgekit import __version__
from edgekit.cli import (
    build_engine,
    calib_set,
    data,
    demo,
    doctor,
    export,
    export_deepstream,
    export_triton,
    import_model,
    layouts,
    models,
    profile,
    prune,
    run_stream,
    sweep,
    train,
)
from edgekit.cli import eval as eval_verb
from edgekit.errors import EXIT_INTERRUPTED, EXIT_USAGE, EdgekitError, MissingDependency, Terminated
from edgekit.runtime.text import printable

# In the order `edgekit --help` lists them.
VERBS = (data, train, import_model, prune, export, build_engine, calib_set, run_stream, export_deepstream,
         export_triton, profile, eval_verb, sweep, doctor, demo, models, layouts)

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
    "tritonclient": ("tritonclient", "triton"),
    "google": ("protobuf", "triton"),
}


def build_parser() -> argparse.ArgumentParser:
    # Global flags, accepted before the verb and after it (`edgekit run-stream ... --debug`).
    global_flags = argparse.ArgumentParser(add_help=False)
    global_flags.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help="show the full traceback on errors")
    p = argparse.ArgumentParser(
        prog="edgekit", parents=[global_flags],
        description="From a trained PyTorch vision model to a measured real-time stream on NVIDIA Jetson.",
    )
    p.add_argument("--version", action="version", version=f"edgekit {__version__}")
    p.set_defaults(help_of=p)  # (not debug: the --debug action is shared with every verb's parser)
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        verb.add(sub, [global_flags])
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:  # `edgekit` or `edgekit data` alone: show the relevant help
        args.help_of.print_help()
        return EXIT_USAGE
    if getattr(args, "debug", False):
        # OpenCV's and FFmpeg's own warning lines, silenced by default (edgekit says what went wrong in one
        # line), are wanted when debugging: the video sources read this when they are first imported.
        os.environ["EDGEKIT_VIDEO_LOG"] = "1"
    try:
        try:
            with _sigterm_raises():
                return func(args)
        except ModuleNotFoundError as e:  # an optional dependency this verb needs is not installed
            top = (e.name or "").split(".")[0]
            if top not in OPTIONAL_MODULES:
                raise
            raise MissingDependency(*OPTIONAL_MODULES[top]) from e
    except EdgekitError as e:
        if getattr(args, "debug", False):
            raise
        print(f"edgekit: error: {printable(str(e))}", file=sys.stderr)  # one line, whatever a file put in it
        return e.exit_code
    except KeyboardInterrupt as e:  # what the verb wrote is cleaned up (a stream run reports and exits itself)
        if isinstance(e, Terminated):
            print(f"edgekit: {str(e) or 'terminated (SIGTERM)'}; temporary files removed", file=sys.stderr)
        else:
            print(f"edgekit: {str(e) or 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_INTERRUPTED)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a verb runs, SIGTERM raises Terminated in the main thread, so its cleanup runs as on Ctrl-C (it
    used to leave build-engine's *.tmp folder); a second SIGTERM does not cut the cleanup short. run-stream
    installs its own handler during a run: SIGTERM stops the pipeline and the report is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(argv: Optional[List[str]] = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
