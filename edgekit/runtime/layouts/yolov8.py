"""The Ultralytics YOLOv8/11 detection head (and edgekit's own detectors): one output [B, 4 + classes,
anchors] of box centre x, y, width and height in input pixels followed by per-class sigmoid scores, no
objectness; class-aware NMS after decoding."""

from typing import Mapping, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections, cxcywh_to_xyxy, select


def decode_raw(raw: np.ndarray, params: DecodeParams) -> Detections:
    """One image's head output [4 + C, N] -> class-aware NMS'd detections in input pixels."""
    scores_all = raw[4:]
    classes = scores_all.argmax(0)
    scores = scores_all[classes, np.arange(scores_all.shape[1])]
    keep = scores > params.score_threshold
    return select(cxcywh_to_xyxy(raw[:4, keep].T), scores[keep], classes[keep], params)


@register_layout
class YoloV8(Layout):
    name = "yolov8"
    task = "detection"
    description = "Ultralytics YOLOv8/11 head [B, 4+classes, anchors]: cx, cy, w, h in pixels, class sigmoids"
    default = True

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        if len(outputs) != 1:
            return False
        shape = outputs[0].shape
        return len(shape) == 3 and (not isinstance(shape[1], int) or shape[1] == 4 + card.num_classes)

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        shape = list(spec.shape)
        if len(shape) != 3 or (isinstance(shape[1], int) and shape[1] != 4 + card.num_classes):
            raise EdgekitError(
                f"{source}: output '{spec.name}' has shape {shape}; a YOLOv8-layout detector with "
                f"{card.num_classes} classes has [N, {4 + card.num_classes}, anchors]"
            )

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Detections:
        d = decode_raw(the_output(outputs, card), params)
        d.boxes = transform.boxes_to_source(d.boxes)
        return d
