"""`edgekit layouts`: the model output layouts edgekit decodes, by task."""

import argparse
from typing import List

from edgekit.cli.common import TASKS


def add(sub: "argparse._SubParsersAction", parents: List[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    lay = sub.add_parser("layouts", help="list the model output layouts edgekit decodes", parents=parents,
                         description="The registered tasks and, for each, the raw output layouts edgekit recognises "
                                     "and decodes (the card's output.layout); the default one first.")
    lay.add_argument("--task", choices=TASKS, metavar="TASK", help="%(choices)s")
    lay.set_defaults(func=run)
    return lay


def run(args: argparse.Namespace) -> int:
    from edgekit.runtime import registry

    for name in registry.task_names():
        if args.task and name != args.task:
            continue
        task = registry.task(name)
        print(f"{name}: {task.description}; accuracy {task.metric_label}")
        for layout in registry.layouts(name):
            print(f"  {layout.name:16s} {layout.description}{' (default)' if layout.default else ''}")
    return 0
