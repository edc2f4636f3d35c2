"""Inference backends behind one small interface (DESIGN.md section 3), chosen by name or `auto`.

Backends know nothing about detection or segmentation. Each module imports its runtime lazily, so a
machine with only ONNX Runtime (or only TensorRT) can use the other parts of edgekit.
"""

import importlib
from typing import List, Sequence, Tuple, Type

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import Backend, Timing  # noqa: F401

_MODULES = {
    "tensorrt": ("edgekit.runtime.backends.tensorrt", "TensorRTBackend"),
    "onnxruntime": ("edgekit.runtime.backends.onnxruntime", "OnnxRuntimeBackend"),
    "torch": ("edgekit.build.torch_backend", "TorchBackend"),  # runs checkpoints; builds no engine
}
AUTO_ORDER = ("tensorrt", "onnxruntime")  # the engine-building backends, in `auto` preference order


def backend_class(name: str) -> Type[Backend]:
    if name not in _MODULES:
        raise EdgekitError(f"unknown backend '{name}' (known: auto, {', '.join(_MODULES)})")
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(module), cls)


def availability(names: Sequence[str] = AUTO_ORDER) -> List[Tuple[str, bool, str]]:
    """(name, available, why not / version) for each backend, by default the engine builders in `auto` order."""
    out = []
    for name in names:
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
