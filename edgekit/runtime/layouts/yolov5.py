"""The YOLOv5 detection head (ultralytics/yolov5 models/yolo.py `Detect.forward`, exported by export.py) and
YOLOv7's plain export (WongKinYiu/yolov7 models/yolo.py): one output [B, anchors, 5 + classes] of box
centre x, y, width and height in input pixels, objectness and per-class scores, both already sigmoided;
a box's score is objectness times its best class score, then class-aware NMS, as YOLOv5's
`non_max_suppression` (utils/general.py) does with multi_label off. YOLOX exported with
--decode_in_inference (Megvii-BaseDetection/YOLOX tools/export_onnx.py) writes this same tensor.

Telling it from YOLOX's raw grid (edgekit.runtime.layouts.yolox), which has the same shape: YOLOv5 and
YOLOv7 put three anchors on every grid cell, so this layout recognises an output whose anchor count is
three times the number of cells at strides 8, 16, 32 (or 8 to 64, the P6 models); YOLOX is anchor-free,
one row per cell. A YOLOX --decode_in_inference export therefore looks like the raw grid, and its card
names this layout (output.layout: yolov5)."""

from typing import Mapping, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.layouts.shapes import grid_cells
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections, cxcywh_to_xyxy, select

STRIDES = (8, 16, 32)
P6_STRIDES = (8, 16, 32, 64)




def candidates(raw: np.ndarray, threshold: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of one image's [N, 5 + C] output whose objectness times best class score clears the threshold:
    (row indices, scores, classes)."""
    # Class scores are at most 1, so only rows with obj > threshold can pass; filtering on obj first (as
    # YOLOv5 does) keeps the N x C product off the ~25k mostly empty rows.
    rows = np.flatnonzero(raw[:, 4] > threshold)
    cls = raw[rows, 5:]
    classes = cls.argmax(1)
    scores = raw[rows, 4] * cls[np.arange(len(rows)), classes]
    keep = scores > threshold
    return rows[keep], scores[keep], classes[keep]


def decode_raw(raw: np.ndarray, params: DecodeParams) -> Detections:
    """One image's output [N, 5 + C] -> NMS'd detections in input pixels."""
    rows, scores, classes = candidates(raw, params.score_threshold)
    return select(cxcywh_to_xyxy(raw[rows, :4]), scores, classes, params)


@register_layout
class YoloV5(Layout):
    name = "yolov5"
    task = "detection"
    description = ("YOLOv5 / YOLOv7 / decoded YOLOX [B, anchors, 5+classes]: cx, cy, w, h in pixels, "
                   "objectness x class score")

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        if len(outputs) != 1:
            return False
        shape = outputs[0].shape
        return (len(shape) == 3 and shape[2] == 5 + card.num_classes
                and shape[1] in (3 * grid_cells(card.input_size, s) for s in (STRIDES, P6_STRIDES)))

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        shape = list(spec.shape)
        if len(shape) != 3 or (isinstance(shape[2], int) and shape[2] != 5 + card.num_classes):
            raise EdgekitError(
                f"{source}: output '{spec.name}' has shape {shape}; a YOLOv5-layout detector with "
                f"{card.num_classes} classes has [N, anchors, {5 + card.num_classes}]"
            )

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Detections:
        d = decode_raw(the_output(outputs, card), params)
        d.boxes = transform.boxes_to_source(d.boxes)
        return d
