"""Inference backends as plugins behind one interface (DESIGN.md section 3), chosen by name or `auto`.

The runtime side ships TensorRT and ONNX Runtime. Other packages, and edgekit's own build side (the eager
PyTorch backend), add backends through the `edgekit.backends` entry point group, so the runtime side never
imports them. Backends know nothing about tasks; each module imports its runtime lazily.
"""

import functools
import importlib
import sys
from typing import Dict, List, Sequence, Tuple, Type

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import Backend, Capabilities, Timing  # noqa: F401

ENTRY_POINTS = "edgekit.backends"
_BUILTIN = {
    "tensorrt": "edgekit.runtime.backends.tensorrt:TensorRTBackend",
    "onnxruntime": "edgekit.runtime.backends.onnxruntime:OnnxRuntimeBackend",
}
AUTO_ORDER = ("tensorrt", "onnxruntime")  # the engine-building backends, in `auto` preference order


@functools.lru_cache(maxsize=None)
def _plugins() -> Tuple[Tuple[str, str], ...]:
    """(name, 'module:Class') of the backends other packages register as entry points."""
    from importlib import metadata

    eps = metadata.entry_points()
    group = eps.select(group=ENTRY_POINTS) if hasattr(eps, "select") else eps.get(ENTRY_POINTS, [])  # 3.8/3.9
    return tuple((ep.name, ep.value) for ep in group if ep.name not in _BUILTIN)


def _registered() -> Dict[str, str]:
    """name -> 'module:Class' of every backend: the built-in ones, then the plugins."""
    return {**_BUILTIN, **dict(_plugins())}


def names() -> List[str]:
    return list(_registered())


def backend_class(name: str) -> Type[Backend]:
    registered = _registered()
    if name not in registered:
        raise EdgekitError(f"unknown backend '{name}' (known: auto, {', '.join(registered)})")
    module, _, cls = registered[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def engine_builders() -> List[str]:
    """The backends that build engines, `auto`'s choices first."""
    rest = [n for n in names() if n not in AUTO_ORDER]
    return [n for n in [*AUTO_ORDER, *rest] if backend_class(n).capabilities.builds_engines]


def checkpoint_runner() -> Type[Backend]:
    """The backend that runs edgekit checkpoints directly (the build side's eager PyTorch backend)."""
    for n in names():
        cls = backend_class(n)
        if cls.capabilities.opens_checkpoints:
            return cls
    raise EdgekitError("opening a checkpoint needs edgekit's build side, which is not installed here: "
                       "pip install 'edgekit[build]'" + (" (Python 3.10+)" if sys.version_info < (3, 10) else ""))


def availability(which: Sequence[str] = AUTO_ORDER) -> List[Tuple[str, bool, str]]:
    """(name, available, why not / version) for each backend, by default the engine builders in `auto` order."""
    out = []
    for name in which:
        ok, why = backend_class(name).available()
        out.append((name, ok, why))
    return out


def resolve(name: str) -> str:
    """The backend `name` stands for here; `auto` picks the first available (TensorRT before ONNX Runtime)."""
    if name != "auto":
        ok, why = backend_class(name).available()
        if not ok:
            raise EdgekitError(f"backend '{name}' is not available here: {why}")
        return name
    reasons = []
    for cand, ok, why in availability():
        if ok:
            return cand
        reasons.append(f"{cand}: {why}")
    raise EdgekitError("no inference backend is available (" + "; ".join(reasons) + ")")
