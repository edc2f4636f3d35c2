"""edgekit: from a trained PyTorch vision model to a measured real-time stream on NVIDIA Jetson.

The runtime side's Python API is here too, loaded on first use (`import edgekit` stays light):
`edgekit.open(path)` gives a Model to call on BGR frames, `edgekit.frames(uri)` the frames of a source;
see edgekit/runtime/api.py."""

from typing import Any

__version__ = "0.1.0"
_API = ("open", "frames", "Model")


def __getattr__(name: str) -> Any:  # PEP 562: the API is imported when first used
    if name in _API:
        from edgekit.runtime import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekit' has no attribute '{name}'")
