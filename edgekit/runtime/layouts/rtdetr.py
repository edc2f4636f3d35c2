"""RT-DETR as Ultralytics exports it: one output [B, queries (300), 4 + classes] of box centre x, y, width and height
as fractions (0..1) of the input, then per-class sigmoid scores (ultralytics/nn/modules/head.py, `RTDETRDecoder`).

Decoded as Ultralytics' predictor does (ultralytics/models/rtdetr/predict.py, `RTDETRPredictor.postprocess`): each
query's best class and its score, queries over the threshold, boxes scaled by the image size; the queries are
one-to-one, so no NMS. Its preprocessing stretches the frame to the input without padding (card resize.mode
stretch): scaling by the input size and mapping back through the Transform gives the predictor's frame pixels."""

from typing import Mapping, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.layouts.shapes import dense_head_rows, fits
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections, cxcywh_to_xyxy


@register_layout
class RTDETR(Layout):
    name = "rtdetr"
    suppressed = True
    task = "detection"
    description = ("RT-DETR, Ultralytics export [B, queries, 4+classes]: cx, cy, w, h as fractions of the input, "
                   "class sigmoids")

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        if len(outputs) != 1:
            return False
        shape = outputs[0].shape
        # A YOLOv5 or YOLOX head with one class more than the card is [B, rows, 5 + classes]: the same last axis,
        # but its row count is a grid's.
        return (len(shape) == 3 and shape[2] == 4 + card.num_classes
                and not (isinstance(shape[1], int) and shape[1] in dense_head_rows(card.input_size)))

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        shape = list(spec.shape)
        if len(shape) != 3 or not fits(shape[2], 4 + card.num_classes):
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {shape}; an RT-DETR detector with "
                               f"{card.num_classes} classes has [N, queries, {4 + card.num_classes}]")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Detections:
        raw = np.asarray(the_output(outputs, card), np.float32)
        scores_all = raw[:, 4:]
        classes = scores_all.argmax(1)
        scores = scores_all[np.arange(len(raw)), classes]
        keep = np.flatnonzero(scores > params.score_threshold)
        # Queries come in no score order; the best max_detections are the ones to keep.
        keep = keep[np.argsort(-scores[keep], kind="stable")][: params.max_detections]
        in_h, in_w = card.input_size
        boxes = cxcywh_to_xyxy(raw[keep, :4]) * np.array([in_w, in_h, in_w, in_h], np.float32)
        return Detections(transform.boxes_to_source(boxes), scores[keep].astype(np.float32),
                          classes[keep].astype(np.int64))
