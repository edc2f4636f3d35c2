"""YOLOX's default ONNX export (Megvii-BaseDetection/YOLOX tools/export_onnx.py, which sets the head's
decode_in_inference off): one output [B, anchors, 5 + classes] on the raw grid. For the row of grid cell
(gx, gy) at stride s: cx = (p0 + gx) * s, cy = (p1 + gy) * s, w = exp(p2) * s, h = exp(p3) * s; objectness
and class scores are already sigmoided in the graph (yolox/models/yolo_head.py `forward`). The rows run
stride by stride, each grid row-major, as the head's `decode_outputs` builds them. Score = objectness x
best class score, then class-aware NMS (yolox/utils/boxes.py `postprocess`).

How it is told from edgekit.runtime.layouts.yolov5, whose tensor has the same shape: YOLOX is anchor-free,
so this layout recognises an output with exactly one row per grid cell at its strides (output.params
strides, default 8, 16, 32; [8, 16, 32, 64] for the P6 models); YOLOv5/YOLOv7 have three anchors per cell.
A YOLOX export made with --decode_in_inference has the same row count but holds decoded boxes: its card
names output.layout yolov5, and decoding one with this layout stops with an error saying so.

Preprocessing is the card's: YOLOX feeds BGR 0..255 without normalisation (std 1/255), letterboxed with
114 at the top-left corner (resize.pad: corner), yolox/data/data_augment.py `preproc`."""

import functools
from typing import Any, Mapping, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.layouts.shapes import grid_cells
from edgekit.runtime.layouts.yolov5 import candidates
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections, cxcywh_to_xyxy, select

# exp(20) strides is billions of pixels: a raw-grid log size never gets there, a decoded size in pixels does.
_MAX_LOG_SIZE = 20.0


@functools.lru_cache(maxsize=8)
def grid(input_size: Tuple[int, int], strides: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """(cell x, y [N, 2], stride [N, 1]) for every row, float32, in the order of YOLOX's decode_outputs."""
    h, w = input_size
    cells, steps = [], []
    for s in strides:
        xv, yv = np.meshgrid(np.arange(w // s), np.arange(h // s))
        cells.append(np.stack((xv, yv), 2).reshape(-1, 2))
        steps.append(np.full((len(cells[-1]), 1), s))
    xy, stride = np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)
    xy.setflags(write=False)  # shared by every decode through the cache
    stride.setflags(write=False)
    return xy, stride


@register_layout
class YoloX(Layout):
    name = "yolox"
    task = "detection"
    description = "YOLOX default export [B, anchors, 5+classes] on the raw grid (xy + cell, exp(wh)) x stride"
    params = {"strides": [8, 16, 32]}

    def check_params(self, params: Mapping[str, Any], where: str) -> None:
        super().check_params(params, where)
        strides = params.get("strides", self.params["strides"])
        # The base check sees only "a list"; a zero or fractional stride would fail later, per frame.
        if not strides or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in strides):
            raise EdgekitError(f"{where}: strides must be positive integers like [8, 16, 32], got {strides!r}")

    def strides(self, card: ModelCard) -> Tuple[int, ...]:
        return tuple(self.param(card, "strides"))

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        if len(outputs) != 1:
            return False
        shape = outputs[0].shape
        return (len(shape) == 3 and shape[2] == 5 + card.num_classes
                and shape[1] == grid_cells(card.input_size, self.strides(card)))

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        shape = list(spec.shape)
        cells = grid_cells(card.input_size, self.strides(card))
        if (len(shape) != 3 or (isinstance(shape[2], int) and shape[2] != 5 + card.num_classes)
                or (isinstance(shape[1], int) and shape[1] != cells)):
            h, w = card.input_size
            raise EdgekitError(
                f"{source}: output '{spec.name}' has shape {shape}; a YOLOX raw-grid detector with "
                f"{card.num_classes} classes at {h}x{w}, strides {list(self.strides(card))}, has "
                f"[N, {cells}, {5 + card.num_classes}]"
            )

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Detections:
        raw = the_output(outputs, card)
        cell, stride = grid(tuple(card.input_size), self.strides(card))
        if len(raw) != len(cell):
            raise EdgekitError(f"output '{card.output_name}' has {len(raw)} rows; the YOLOX grid of "
                               f"{card.input_size[0]}x{card.input_size[1]} at strides "
                               f"{list(self.strides(card))} has {len(cell)}")
        # Only candidates are decoded: the other rows are dropped anyway, and exp() of them is wasted work.
        rows, scores, classes = candidates(raw, params.score_threshold)
        log_wh = raw[rows, 2:4]
        if len(rows) and float(log_wh.max()) > _MAX_LOG_SIZE:
            raise EdgekitError(f"output '{card.output_name}' holds box sizes of exp({float(log_wh.max()):.0f}) "
                               "strides: it is decoded already (YOLOX exported with --decode_in_inference), "
                               "so its card should name output.layout yolov5")
        s = stride[rows]
        cxcywh = np.concatenate([(raw[rows, :2] + cell[rows]) * s, np.exp(log_wh) * s], 1)
        d = select(cxcywh_to_xyxy(cxcywh), scores, classes, params)
        d.boxes = transform.boxes_to_source(d.boxes)
        return d
