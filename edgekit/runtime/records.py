"""Typed records read from JSON: dataclasses checked field by field against their type hints, so an edited
or foreign file fails in one line that names the field, never later as a KeyError deep in a stage.

Supported field types: str, int, float (ints accepted), bool, Any, Optional[T], List[T], Dict[str, T],
Union[A, B] of those, and nested record dataclasses. A class may define `from_value(value, where)` for
a custom conversion (the model card does) and `OMIT_NONE = True` to leave unset optional fields out of
its JSON.
"""

import dataclasses
import typing
from typing import Any, Dict, Type, TypeVar

from edgekit.errors import EdgekitError
from edgekit.runtime.text import printable

T = TypeVar("T")
# How deep a record's JSON may nest: manifests and cards go 6 levels down; a planted file nested thousands deep
# would otherwise end in a RecursionError wherever it is next walked (copied, compared, written).
MAX_DEPTH = 32
_NONE = type(None)
_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
          dict: "a mapping"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp in _NAMES:
        return _NAMES[tp]
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is typing.Union:
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not _NONE)
    return getattr(tp, "__name__", str(tp))


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON-like `value` nests lists and mappings more than `limit` deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                return True
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def convert(tp: Any, value: Any, where: str, source: str) -> Any:
    """`value` as type `tp`, or an EdgekitError naming `source` and the field path `where`."""
    def bad() -> EdgekitError:
        shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
        return EdgekitError(f"{source}: field '{printable(where)}' must be {_describe(tp)}, got {shown}")

    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and _NONE in args:
            return None
        for a in (a for a in args if a is not _NONE):
            try:
                return convert(a, value, where, source)
            except EdgekitError:
                continue
        raise bad()
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        return [convert(args[0] if args else Any, v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad()
        item = args[1] if len(args) == 2 else Any
        return {k: convert(item, v, f"{where}.{k}", source) for k, v in value.items()}
    if isinstance(tp, type) and hasattr(tp, "from_value"):
        return tp.from_value(value, f"{source}: field '{where}'")  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, where)  # type: ignore[arg-type]
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise bad()


def from_dict(cls: Type[T], data: Any, source: str, where: str = "") -> T:
    """An instance of the record dataclass `cls` from a JSON mapping, every field checked."""
    if not isinstance(data, dict):
        raise EdgekitError(f"{source}: {'field ' + repr(where) if where else 'the file'} must be a mapping, "
                           f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    prefix = f"{where}." if where else ""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise EdgekitError(f"{source}: unknown field(s) {printable(', '.join(prefix + u for u in unknown[:5]))}{more}")
    values: Dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if has_default:
                continue
            raise EdgekitError(f"{source}: missing field {printable(prefix)}{name}")
        values[name] = convert(hints[name], data[name], prefix + name, source)
    return cls(**values)


def to_dict(record: Any) -> Dict[str, Any]:
    """The record as plain JSON values, in field order."""
    out: Dict[str, Any] = {}
    omit_none = getattr(record, "OMIT_NONE", False)
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if value is None and omit_none:
            continue
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
