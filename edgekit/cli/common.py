"""What several verbs share: argument types, choices read from the registries (only when a verb is parsed),
and argument groups such as the output folder and the model-card flags."""

import argparse
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple


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


def _ranged(kind: type, lo: Optional[float] = None, hi: Optional[float] = None, lo_open: bool = False,
            hi_open: bool = False, what: str = "") -> Callable[[str], Any]:
    """An argparse type: a finite `kind` (int or float) within [lo, hi] (an end excluded with lo_open / hi_open);
    anything else, nan and inf included, is a usage error (exit 2) before any work starts."""
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}{what}, got '{text}'") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"expected a finite number{what}, got '{text}'")
        low_bad = lo is not None and (value <= lo if lo_open else value < lo)
        if low_bad or (hi is not None and (value >= hi if hi_open else value > hi)):
            raise argparse.ArgumentTypeError(f"expected {noun}{what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


# The ranges numeric flags take (issue: `--score-threshold 2`, `--max-frames -1` ran with wrong results).
positive_int = _ranged(int, 1, what=" of at least 1")  # queue sizes, counts, batch sizes
count = _ranged(int, 0, what=" of 0 or more")  # limits where 0 means none, seeds, epochs
positive_float = _ranged(float, 0, lo_open=True, what=" above 0")  # timeouts, learning rates
seconds = _ranged(float, 0, what=" of seconds, 0 or more")  # durations where 0 means none
non_negative = _ranged(float, 0, what=" of 0 or more")  # tolerances, weights
fraction = _ranged(float, 0, 1, what=" between 0 and 1")  # thresholds
open_fraction = _ranged(float, 0, 1, lo_open=True, hi_open=True, what=" strictly between 0 and 1")  # shares
byte_value = _ranged(int, 0, 255, what=" between 0 and 255")  # pixel values
points = _ranged(float, 0, 100, hi_open=True, what=" of points, from 0 to below 100")  # accuracy budgets
finite = _ranged(float)  # the card checks the range itself, with a hint (mean 123.7 -> 0.485)


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


def _layout_names() -> List[str]:
    from edgekit.runtime import registry

    return [lay.name for lay in registry.layouts()]


LAYOUTS = LazyChoices(_layout_names)


def layout_param(text: str) -> Tuple[str, Any]:
    """'threshold=0.3' -> ('threshold', 0.3); values are Python literals (numbers, lists), else strings."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def add_card_flags(p: argparse.ArgumentParser) -> None:
    card = p.add_argument_group(
        "model card", "for an ONNX not made by edgekit; Ultralytics exports describe themselves, and these flags "
                      "override what a file says")
    card.add_argument("--card", help="model card YAML")
    card.add_argument("--task", choices=TASKS, metavar="TASK", help="%(choices)s")
    card.add_argument("--classes", help="comma-separated class names")
    card.add_argument("--input-size", type=size, help="WxH of the network input (fixes a dynamic input)")
    card.add_argument("--mean", type=finite, nargs=3, help="per-channel mean on 0..1 pixels (default 0 0 0)")
    card.add_argument("--std", type=finite, nargs=3, help="per-channel std on 0..1 pixels (default 1 1 1)")
    card.add_argument("--channel-order", choices=("rgb", "bgr"), help="what the network takes (default rgb)")
    card.add_argument("--resize", choices=("letterbox", "stretch"), help="default letterbox")
    card.add_argument("--pad", choices=("center", "corner"), help="where letterbox puts the image (default center; "
                                                                   "corner: top-left, as YOLOX)")
    card.add_argument("--pad-value", type=byte_value, help="letterbox padding, 0..255 (default 114)")
    card.add_argument("--layout", choices=LAYOUTS, metavar="LAYOUT",
                      help="the output layout, when it should not be recognised (see edgekit layouts)")
    card.add_argument("--layout-param", type=layout_param, action="append", metavar="KEY=VALUE",
                      help="a parameter of the layout, e.g. threshold=0.3 (see edgekit layouts)")
    card.add_argument("--agnostic-nms", action="store_true", help="one NMS over all classes")
    card.add_argument("--input-name", help="the graph's image input (default: its only input)")
    card.add_argument("--output-name", help="the output a single-output layout reads (default: the first)")
    card.add_argument("--name", help="model name (default: the file's name)")


def card_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The ModelCard fields given as flags (what the user typed wins over what the file says)."""
    given: Dict[str, Any] = {}
    if args.task:
        given["task"] = args.task
    if args.classes:
        given["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.input_size:
        w, h = args.input_size
        given["input_size"] = (h, w)
    for flag, key in (("mean", "mean"), ("std", "std"), ("resize", "resize_mode"), ("pad", "pad_placement"),
                      ("pad_value", "pad_value"), ("input_name", "input_name"), ("output_name", "output_name"),
                      ("name", "name")):
        value = getattr(args, flag)
        if value is not None:
            given[key] = tuple(value) if isinstance(value, list) else value
    if args.channel_order:
        given["color"] = args.channel_order.upper()
    if args.layout_param:
        given["layout_params"] = dict(args.layout_param)
    if args.agnostic_nms:
        given["agnostic_nms"] = True
    return given
