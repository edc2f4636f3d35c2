"""End-to-end detectors, duplicates already suppressed in the graph: one output [B, K, 6] of x1, y1, x2, y2 in
input pixels, score and class (a float), best rows first, unused rows zero.

Written by Ultralytics' exporter with `nms=True` (ultralytics/engine/exporter.py, NMSModel) and by the one-to-one
heads of YOLOv10 and YOLO26 (ultralytics/nn/modules/head.py, `Detect.postprocess`: top-k of the class scores over
boxes from `dist2bbox(xywh=False)`); THU-MIG/yolov10 writes the same. Decoded as Ultralytics' predictor does
(ultralytics/utils/nms.py, `non_max_suppression`, end-to-end branch): the rows whose score exceeds the threshold,
the first max_det of them, no NMS."""

from typing import Mapping, Sequence, Set, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections


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


@register_layout
class End2End(Layout):
    name = "end2end"
    task = "detection"
    description = ("NMS in the graph (Ultralytics nms=True, YOLOv10/YOLO26 heads) [B, K, 6]: x1, y1, x2, y2 in "
                   "pixels, score, class")

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        if len(outputs) != 1:
            return False
        shape = outputs[0].shape
        # A YOLOv8 head is [B, 4 + classes, anchors] with anchors >= 21, so a last axis of 6 is never one.
        return (len(shape) == 3 and shape[2] == 6
                and not (isinstance(shape[1], int) and shape[1] in dense_head_rows(card.input_size)))

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        shape = list(spec.shape)
        if len(shape) != 3 or shape[2] != 6:
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {shape}; an end-to-end detector (NMS in "
                               "the graph) has [N, K, 6]: x1, y1, x2, y2, score, class")
        if isinstance(shape[1], int) and shape[1] in dense_head_rows(card.input_size):
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {shape}: {shape[1]} rows is a dense "
                               f"head's row count at {card.input_size[1]}x{card.input_size[0]} (a one-class YOLOv5 "
                               "or YOLOX before NMS), not an end-to-end detector's K suppressed detections")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Detections:
        name = card.output_name if card.output_name in outputs else next(iter(outputs))
        rows = np.asarray(the_output(outputs, card), np.float32).reshape(-1, 6)
        rows = rows[rows[:, 4] > params.score_threshold][: params.max_detections]
        classes = class_indices(rows[:, 5], card, name)
        return Detections(transform.boxes_to_source(rows[:, :4]), rows[:, 4].copy(), classes)
