"""Name -> factory registry, in the manner of timm's create_model."""

import difflib
from typing import Any, Callable, Dict, List, Tuple

from edgekit.errors import EdgekitError

_REGISTRY: Dict[str, Tuple[str, Callable[..., Any], str]] = {}


def register(name: str, task: str, summary: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = (task, fn, summary)
        return fn

    return deco


def _entry(name: str) -> Tuple[str, Callable[..., Any], str]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(sorted(_REGISTRY))})"
        raise EdgekitError(f"unknown model architecture '{name}'{hint}")
    return _REGISTRY[name]


def model_task(name: str) -> str:
    return _entry(name)[0]


def create(name: str, num_classes: int, input_size: Tuple[int, int], **arch_args: Any) -> Any:
    """Build architecture `name` for `num_classes` classes at `input_size` (height, width)."""
    _task, factory, _ = _entry(name)
    try:
        return factory(num_classes=num_classes, input_size=tuple(input_size), **arch_args)
    except TypeError as e:
        raise EdgekitError(f"architecture '{name}': bad arguments ({e})") from None


def list_models(task: str = "") -> List[Tuple[str, str, str]]:
    return [(n, t, s) for n, (t, _, s) in sorted(_REGISTRY.items()) if not task or t == task]
