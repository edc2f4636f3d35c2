"""What several layouts ask of an output's shape and dtype: dtype kinds, dimensions that may be dynamic, and
the row counts of dense detection heads (which tell a head's raw rows from K already-suppressed detections)."""

from typing import Any, Sequence, Set, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard


def is_integer(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind in "iu"
    except TypeError:  # a runtime's own name for a type NumPy lacks, e.g. "tensor(bool)"
        return False


def is_float(dtype: str) -> bool:
    try:
        return np.dtype(dtype).kind == "f"
    except TypeError:
        return False


def known(dim: Any) -> bool:
    """A dimension with a value (ONNX Runtime names a dynamic axis with a string or None, TensorRT with -1)."""
    return isinstance(dim, (int, np.integer)) and bool(dim > 0)


def fits(dim: Any, want: Any) -> bool:
    """Two dimensions agree where both are known."""
    return not (known(dim) and known(want)) or dim == want


def describe_outputs(outputs: Sequence[Tuple[str, Sequence[Any], str]]) -> str:
    """"'boxes' [1, 100, 4] float32, ..." for messages; outputs as (name, shape, dtype name)."""
    return ", ".join(f"'{n}' {list(s)} {d}" for n, s, d in outputs)


def grid_cells(input_size: Tuple[int, int], strides: Tuple[int, ...]) -> int:
    """Cells of the feature maps at these strides for an (h, w) input: the anchor count of an anchor-free head."""
    h, w = input_size
    return sum((h // s) * (w // s) for s in strides)


def dense_head_rows(input_size: Tuple[int, int]) -> Set[int]:
    """The row counts of a dense head at this input size: one row per grid cell of strides 8-32 (or 8-64 for P6
    models), once (YOLOX, Ultralytics) or three times (YOLOv5/v7 anchors), cells rounded down or up.

    A single-class YOLOX or YOLOv5 output is [B, rows, 6] too (ddddocr's detector is [1, 3549, 6] at 416): its
    row count, not its shape, tells it from K suppressed detections."""
    h, w = input_size
    rows = set()
    for strides in ((8, 16, 32), (8, 16, 32, 64)):
        for up in (0, 1):
            cells = sum(((h + up * (s - 1)) // s) * ((w + up * (s - 1)) // s) for s in strides)
            rows.update((cells, 3 * cells))
    return rows


def class_indices(values: np.ndarray, card: ModelCard, output: str) -> np.ndarray:
    """Class numbers from a model -> int64 indices into the card's classes; a one-line error for one outside them,
    which would otherwise fail later, where the result is drawn or written, far from the cause."""
    classes = np.rint(np.asarray(values, np.float64)).astype(np.int64)
    bad = classes[(classes < 0) | (classes >= card.num_classes)]
    if len(bad):
        raise EdgekitError(f"output '{output}' gives class {int(bad[0])}, but the card has {card.num_classes} "
                           f"classes (0..{card.num_classes - 1}): the card's class list does not fit this model")
    return classes
