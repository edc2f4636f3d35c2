"""`edgekit demo`: the whole available chain on the shipped models and synthetic data."""

import argparse
from typing import List

from edgekit.cli.common import add_out


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    demo = sub.add_parser(
        "demo", help="run the whole available chain on the shipped models and synthetic data", parents=parents,
        description="Generate synthetic test data, export both shipped models, build INT8 engines on the best "
                    "available backend and measure checkpoint and engine accuracy on the test split.",
    )
    add_out(demo, "build/demo")
    demo.set_defaults(func=run)
    return demo


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edgekit.build.demo import run as run_demo

    run_demo(Path(args.out))
    return 0
