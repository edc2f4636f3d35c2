"""Handing a built model to serving systems: a Triton Inference Server model repository (export-triton), Triton
as run-stream's backend (triton://HOST:PORT/MODEL) and a DeepStream nvinfer configuration (export-deepstream).
Runtime side: NumPy, OpenCV and, for Triton, the `triton` extra (tritonclient)."""

from typing import Any

SCHEME = "triton://"


def is_served(path: Any) -> bool:
    """A model on a Triton server (triton://HOST:PORT/MODEL), not a file."""
    return isinstance(path, str) and path.startswith(SCHEME)
