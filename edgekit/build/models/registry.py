"""Name -> factory registry, in the manner of timm's create_model."""

from typing import Any, Callable, Dict, List, Tuple

from edgekit.errors import EdgekitError
from edgekit.runtime.registry import lookup

_REGISTRY: Dict[str, Tuple[str, Callable[..., Any], str]] = {}


def register(name: str, task: str, summary: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = (task, fn, summary)
        return fn

    return deco


def _entry(name: str) -> Tuple[str, Callable[..., Any], str]:
    return lookup(_REGISTRY, "model architecture", name)


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
