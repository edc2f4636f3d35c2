"""`edgekit doctor`: what this machine can run, and what to install for the rest."""

import argparse
from typing import List


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    dr = sub.add_parser(
        "doctor", help="what this machine can run, and what to install for the rest", parents=parents,
        description="Backends and their versions, CUDA bindings and GPU, DLA cores, the JetPack/L4T release, power "
                    "mode, and OpenCV's video back-ends (FFmpeg, GStreamer, V4L2), with what to install for each "
                    "missing part.",
    )
    dr.add_argument("--json", action="store_true", help="machine-readable output")
    dr.set_defaults(func=run)
    return dr


def run(args: argparse.Namespace) -> int:
    from edgekit.runtime.jetson.doctor import main

    return main(as_json=args.json)
