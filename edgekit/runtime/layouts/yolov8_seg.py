"""The Ultralytics YOLOv8/11 segmentation head: `output0` [B, 4 + classes + 32, anchors] (box centre x, y, width,
height in input pixels, class sigmoids, 32 mask coefficients) and `output1` [B, 32, H/4, W/4] mask prototypes.
Decoded as ultralytics/utils/ops.py does for prediction: class-aware NMS on the boxes, then `process_mask` with
upsample (coefficients x prototypes, cropped to the box at prototype resolution, upsampled bilinearly to the input,
logits > 0), then `scale_masks` to the frame (padding cut, bilinear, > 0.5). Decoding stops at the input: the
result brings each mask's window to the frame when something first reads it (Instances.at_input)."""

from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import cxcywh_to_xyxy, nms
from edgekit.runtime.tasks.instance import InputMask, Instances, linear_taps, shows, window


def head_and_protos(outputs: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """One image's (head [4 + C + M, N], prototypes [M, h, w]), told apart by rank, whatever they are named."""
    arrays = list(outputs.values())
    heads = [a for a in arrays if a.ndim == 2]
    protos = [a for a in arrays if a.ndim == 3]
    if len(arrays) != 2 or len(heads) != 1 or len(protos) != 1:
        shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in outputs.items())
        raise EdgekitError(f"a YOLOv8-seg model gives a head [4+classes+32, anchors] and prototypes [32, h, w] per "
                           f"image; got {shapes}")
    return heads[0], protos[0]


def process_mask(protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, in_h: int,
                 in_w: int) -> List[Optional[InputMask]]:
    """Ultralytics' process_mask(upsample=True) for each box (xyxy, input pixels): the mask logits
    coefficients @ prototypes, zero outside the box scaled to prototype resolution (crop_mask: a prototype
    pixel c stays where x1 <= c < x2), upsampled bilinearly to the input, > 0. Only the box's window is computed,
    and upsampled when the mask is first read; None for a mask without pixels (found computing few of them, see
    shows), which Ultralytics' predictor drops with its box."""
    m, mh, mw = protos.shape
    ratio = np.array([mw / in_w, mh / in_h, mw / in_w, mh / in_h], np.float32)
    taps_x, taps_y = linear_taps(in_w, mw), linear_taps(in_h, mh)
    out: List[Optional[InputMask]] = []
    for coef, box in zip(coefficients.astype(np.float32), boxes.astype(np.float32) * ratio):
        # the prototype pixels crop_mask keeps: first c with c >= x1 up to the last with c < x2
        c0, r0 = (max(0, int(np.ceil(v))) for v in box[:2])
        c1, r1 = min(mw, int(np.ceil(box[2]))), min(mh, int(np.ceil(box[3])))
        if c0 >= c1 or r0 >= r1:
            out.append(None)
            continue
        logits = np.tensordot(coef, protos[:, r0:r1, c0:c1], 1).astype(np.float32)
        x0, x1, cols = window(taps_x, c0, c1)
        y0, y1, rows = window(taps_y, r0, r1)
        if rows is None or cols is None or not shows(logits, rows, cols):
            out.append(None)
            continue
        out.append(InputMask(y0, x0, logits=logits, rows=rows, cols=cols))  # upsampled when read
    return out


def decode_seg(head: np.ndarray, protos: np.ndarray, transform: Transform, in_h: int, in_w: int,
               params: DecodeParams) -> Instances:
    """One image's head and prototypes -> instances in frame pixels (masks brought to the frame when read)."""
    m = protos.shape[0]
    scores_all = head[4:-m]
    classes = scores_all.argmax(0)
    scores = scores_all[classes, np.arange(scores_all.shape[1])]
    cand = np.flatnonzero(scores > params.score_threshold)
    boxes = cxcywh_to_xyxy(head[:4, cand].T)
    kept = nms(boxes, scores[cand], classes[cand], params.iou_threshold, params.max_detections, params.agnostic_nms)
    sel = cand[kept]
    masks = process_mask(protos, head[-m:, sel].T, boxes[kept], in_h, in_w)
    has = [i for i, mask in enumerate(masks) if mask is not None]
    shown = [mask for mask in masks if mask is not None]
    return Instances.at_input(transform.boxes_to_source(boxes[kept][has]), scores[sel][has].astype(np.float32),
                              classes[sel][has].astype(np.int64), shown, transform, in_w, in_h)


@register_layout
class YoloV8Seg(Layout):
    name = "yolov8_seg"
    task = "instance_segmentation"
    description = ("Ultralytics YOLOv8/11-seg: [B, 4+classes+32, anchors] boxes, class sigmoids and mask "
                   "coefficients + [B, 32, H/4, W/4] prototypes")
    default = True

    @staticmethod
    def _split(outputs: Sequence[TensorSpec]) -> Tuple[Optional[TensorSpec], Optional[TensorSpec]]:
        heads = [s for s in outputs if len(s.shape) == 3]
        protos = [s for s in outputs if len(s.shape) == 4]
        if len(outputs) != 2 or len(heads) != 1 or len(protos) != 1:
            return None, None
        return heads[0], protos[0]

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        head, protos = self._split(outputs)
        if head is None or protos is None:
            return False
        m = protos.shape[1]
        return isinstance(m, int) and m > 0 and head.shape[1] == 4 + card.num_classes + m

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        head, protos = self._split(outputs)
        if head is None or protos is None:
            seen = ", ".join(f"'{s.name}' {list(s.shape)}" for s in outputs)
            raise EdgekitError(f"{source}: outputs {seen}; a YOLOv8-seg model has two: [N, 4+classes+32, anchors] "
                               "and prototypes [N, 32, H/4, W/4]")
        m, c = protos.shape[1], head.shape[1]
        if isinstance(m, int) and isinstance(c, int) and c != 4 + card.num_classes + m:
            raise EdgekitError(f"{source}: output '{head.name}' has {c} channels (shape {list(head.shape)}), which "
                               f"is 4 box values + classes + {m} mask coefficients ('{protos.name}' has {m} "
                               f"prototypes), so {c - 4 - m} classes, but the card names {card.num_classes}; pass "
                               f"--classes with {c - 4 - m} names")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Instances:
        head, protos = head_and_protos(outputs)
        in_h, in_w = card.input_size
        return decode_seg(head, protos, transform, in_h, in_w, params)
