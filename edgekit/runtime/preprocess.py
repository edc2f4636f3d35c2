"""The one preprocessing function, derived from the model card.

Training, calibration, evaluation and streaming all call this, so INT8 calibration can never see
different pixels than inference does (DESIGN.md section 1).
"""

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from edgekit.runtime.card import ModelCard


@dataclass(frozen=True)
class Transform:
    """How a source frame maps onto the network input: input = source * scale + pad."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    src_w: int
    src_h: int

    @classmethod
    def identity(cls, width: int, height: int) -> "Transform":
        """The network input itself as the frame (to compare two runs of one model on the same input)."""
        return cls(1.0, 1.0, 0.0, 0.0, width, height)

    def boxes_to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map xyxy boxes from network-input pixels back to source pixels, clipped to the frame."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[..., 0::2] = (boxes[..., 0::2] - self.pad_x) / self.scale_x
        out[..., 1::2] = (boxes[..., 1::2] - self.pad_y) / self.scale_y
        out[..., 0::2] = out[..., 0::2].clip(0, self.src_w)
        out[..., 1::2] = out[..., 1::2].clip(0, self.src_h)
        return out

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Map xyxy boxes from source pixels to network-input pixels."""
        out = np.empty_like(boxes, dtype=np.float32)
        out[..., 0::2] = boxes[..., 0::2] * self.scale_x + self.pad_x
        out[..., 1::2] = boxes[..., 1::2] * self.scale_y + self.pad_y
        return out

    def valid_region(self, in_w: int, in_h: int) -> Tuple[int, int, int, int]:
        """The (x0, y0, x1, y1) part of the network input that shows the source (no padding)."""
        x0, y0 = int(round(self.pad_x)), int(round(self.pad_y))
        x1 = min(in_w, int(round(self.pad_x + self.src_w * self.scale_x)))
        y1 = min(in_h, int(round(self.pad_y + self.src_h * self.scale_y)))
        return x0, y0, x1, y1


def resize(
    image: np.ndarray, card: ModelCard, interpolation: int = cv2.INTER_LINEAR, pad_value: Optional[int] = None
) -> Tuple[np.ndarray, Transform]:
    """Letterbox or stretch a BGR uint8 frame (or a class mask, with INTER_NEAREST) to the card's input size.

    Letterbox padding uses the card's pad value unless `pad_value` is given (masks pad with 'ignore').
    """
    in_h, in_w = card.input_size
    h, w = image.shape[:2]
    if card.resize_mode == "stretch":
        sx, sy = in_w / w, in_h / h
        out = cv2.resize(image, (in_w, in_h), interpolation=interpolation)
        return out, Transform(sx, sy, 0.0, 0.0, w, h)
    pad = card.pad_value if pad_value is None else pad_value
    out, (nw, nh), (px, py) = letterbox(image, (in_w, in_h), pad, card.pad_placement == "center", interpolation)
    return out, Transform(nw / w, nh / h, float(px), float(py), w, h)


def letterbox(image: np.ndarray, size: Tuple[int, int], pad_value: int = 0, center: bool = True,
              interpolation: int = cv2.INTER_LINEAR) -> Tuple[np.ndarray, Tuple[int, int], Tuple[int, int]]:
    """`image` scaled to fit `size` (width, height) with its aspect ratio kept and padded with `pad_value`
    (centred, or in the top-left corner); returns it with the scaled size and the padding's offset."""
    in_w, in_h = size
    h, w = image.shape[:2]
    r = min(in_w / w, in_h / h)
    nw, nh = max(1, min(in_w, int(round(w * r)))), max(1, min(in_h, int(round(h * r))))
    px, py = ((in_w - nw) // 2, (in_h - nh) // 2) if center else (0, 0)
    resized = image if (nw, nh) == (w, h) else cv2.resize(image, (nw, nh), interpolation=interpolation)
    out = cv2.copyMakeBorder(
        resized, py, in_h - nh - py, px, in_w - nw - px, cv2.BORDER_CONSTANT, value=(pad_value,) * 3
    )
    return out, (nw, nh), (px, py)


def to_tensor(resized_bgr: np.ndarray, card: ModelCard) -> np.ndarray:
    """HxWx3 uint8 BGR at input size -> 1x3xHxW float32, colour order and normalization from the card."""
    img = resized_bgr
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if card.color == "RGB":
        img = img[..., ::-1]
    scale, bias = normalization(tuple(card.mean), tuple(card.std))
    chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)
    chw *= scale
    chw += bias
    return chw[None]


@functools.lru_cache(maxsize=8)
def normalization(mean: Tuple[float, ...], std: Tuple[float, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """(scale, bias), shaped [3, 1, 1], so that x * scale + bias == (x / 255 - mean) / std."""
    s = np.asarray(std, dtype=np.float32)
    return (1.0 / (255.0 * s))[:, None, None], (-np.asarray(mean, dtype=np.float32) / s)[:, None, None]


def to_frames(resized_bgr: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 BGR at input size -> 1xHxWx3 uint8 BGR: the input of a graph with preprocessing fused into it
    (card input_format "nhwc_uint8"), which converts the colour order and normalises itself."""
    img = resized_bgr
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img, dtype=np.uint8)[None]


def preprocess(frame_bgr: np.ndarray, card: ModelCard) -> Tuple[np.ndarray, Transform]:
    """A source frame (BGR uint8, any size) -> the network input tensor and the transform used: [1, 3, H, W]
    float32, or, where the card's graph does its own preprocessing (input_format "nhwc_uint8"), the letterboxed
    frame itself as [1, H, W, 3] uint8 BGR (a quarter of the bytes, no float work on the host)."""
    resized, transform = resize(frame_bgr, card)
    if card.input_format == "nhwc_uint8":
        return to_frames(resized), transform
    return to_tensor(resized, card), transform
