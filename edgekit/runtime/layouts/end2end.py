"""End-to-end detectors, duplicates already suppressed in the graph: one output [B, K, 6] of x1, y1, x2, y2 in
input pixels, score and class (a float), best rows first, unused rows zero.

Written by Ultralytics' exporter with `nms=True` (ultralytics/engine/exporter.py, NMSModel) and by the one-to-one
heads of YOLOv10 and YOLO26 (ultralytics/nn/modules/head.py, `Detect.postprocess`: top-k of the class scores over
boxes from `dist2bbox(xywh=False)`); THU-MIG/yolov10 writes the same. Decoded as Ultralytics' predictor does
(ultralytics/utils/nms.py, `non_max_suppression`, end-to-end branch): the rows whose score exceeds the threshold,
the first max_det of them, no NMS."""

from typing import Mapping, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.layouts.shapes import class_indices, dense_head_rows, fits
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections


@register_layout
class End2End(Layout):
    name = "end2end"
    suppressed = True
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
        if len(shape) != 3 or not fits(shape[2], 6):
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
