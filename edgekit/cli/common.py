"""What several verbs share: argument types, choices read from the registries (only when a verb is parsed),
and argument groups such as the output folder and the model-card flags."""

import argparse
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple


def size(text: str) -> Tuple[int, int]:
    """'320x240' -> (320, 240); '256' -> (256, 256)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or N, got '{text}'") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or N, got '{text}'")
    return parts[0], parts[1]


def percentiles(text: str) -> Tuple[float, ...]:
    """'90,95,99' -> (90.0, 95.0, 99.0)."""
    try:
        qs = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated percentiles like 90,95,99, got '{text}'") from None
    if not qs or not all(0 < q < 100 for q in qs):
        raise argparse.ArgumentTypeError(f"percentiles must lie strictly between 0 and 100, got '{text}'")
    return qs


def names(text: str) -> List[str]:
    """'fp32, int8' -> ['fp32', 'int8']."""
    return [v.strip().lower() for v in text.split(",") if v.strip()]


class LazyChoices:
    """argparse choices read from a registry the first time they are needed (parsing that verb's option,
    or its help), so `edgekit --help` imports no task, layout or backend module. Give the argument a
    metavar: without one, argparse lists the choices while the parser is being built."""

    def __init__(self, load: Callable[[], Iterable[str]]) -> None:
        self._load = load
        self._values: Optional[List[str]] = None

    def _get(self) -> List[str]:
        if self._values is None:
            self._values = list(self._load())
        return self._values

    def __contains__(self, value: object) -> bool:
        return value in self._get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _task_names() -> List[str]:
    from edgekit.runtime import registry

    return registry.task_names()


def _engine_builders() -> List[str]:
    from edgekit.runtime import backends

    return backends.engine_builders()


def _calib_methods() -> Tuple[str, ...]:
    from edgekit.build.quantize import METHODS

    return METHODS


TASKS = LazyChoices(_task_names)
ENGINE_BACKENDS = LazyChoices(_engine_builders)
BACKEND_OR_AUTO = LazyChoices(lambda: ["auto", *_engine_builders()])
CALIB_METHODS = LazyChoices(_calib_methods)


def add_out(p: argparse.ArgumentParser, default: Optional[str] = None, what: str = "output folder") -> None:
    """`-o/--out` on every verb; `--output`, the older spelling of some verbs, still works."""
    if default is None:
        p.add_argument("-o", "--out", "--output", dest="out", required=True, help=what)
    else:
        p.add_argument("-o", "--out", "--output", dest="out", default=default, help=f"{what} (default {default})")


def add_task_filter(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, metavar="TASK", help="refuse a model of another task (%(choices)s)")


def add_card_flags(p: argparse.ArgumentParser) -> None:
    card = p.add_argument_group("model card, for an ONNX not made by edgekit")
    card.add_argument("--card", help="model card YAML")
    card.add_argument("--task", choices=TASKS, metavar="TASK", help="%(choices)s")
    card.add_argument("--classes", help="comma-separated class names")
    card.add_argument("--input-size", type=size, help="WxH of the network input")
    card.add_argument("--mean", type=float, nargs=3, default=(0.0, 0.0, 0.0), help="per-channel mean on 0..1 pixels")
    card.add_argument("--std", type=float, nargs=3, default=(1.0, 1.0, 1.0), help="per-channel std on 0..1 pixels")
    card.add_argument("--resize", default="letterbox", choices=("letterbox", "stretch"))
    card.add_argument("--pad-value", type=int, default=114)
    card.add_argument("--input-name", default="images")
    card.add_argument("--output-name", default="output0")
    card.add_argument("--name", help="model name")


def card_from_flags(args: argparse.Namespace) -> Any:
    """A model card for an ONNX not made by edgekit: --card YAML, or flags; None where neither is given."""
    from edgekit.errors import EdgekitError
    from edgekit.runtime.card import ModelCard

    if args.card:
        return ModelCard.load(args.card)
    if not (args.task or args.classes):
        return None
    missing = [f for f, v in (("--task", args.task), ("--classes", args.classes), ("--input-size", args.input_size))
               if not v]
    if missing:
        raise EdgekitError(f"describing an imported ONNX needs {', '.join(missing)} too (or --card CARD.yaml)")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    w, h = args.input_size
    return ModelCard(name=args.name or "imported", task=args.task, arch="external", classes=classes, input_size=(h, w),
                     mean=tuple(args.mean), std=tuple(args.std), resize_mode=args.resize, pad_value=args.pad_value,
                     input_name=args.input_name, output_name=args.output_name)
