"""`edgekit models`: the built-in architectures."""

import argparse
from typing import List

from edgekit.cli.common import TASKS


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    models = sub.add_parser("models", help="list the built-in architectures", parents=parents,
                            description="The architectures `edgekit train --arch` builds.")
    models.add_argument("--task", choices=TASKS, metavar="TASK", help="%(choices)s")
    models.set_defaults(func=run)
    return models


def run(args: argparse.Namespace) -> int:
    from edgekit.build.models import list_models

    for name, task, summary in list_models(args.task or ""):
        print(f"{name:20s} {task:13s} {summary}")
    return 0
