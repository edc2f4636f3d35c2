"""Training augmentation at source resolution: flip, scale/translate, colour jitter."""

from typing import Optional, Tuple

import cv2
import numpy as np

from edgekit.runtime.data.datasets import IGNORE_INDEX


def augment(
    rng: np.random.Generator,
    img: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    mask: Optional[np.ndarray],
    pad_value: int,
    scale: Tuple[float, float] = (0.7, 1.3),
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    h, w = img.shape[:2]
    boxes = boxes.copy()
    if rng.random() < 0.5:
        img = img[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    s = rng.uniform(*scale)
    tx = rng.uniform(min(0.0, w - w * s), max(0.0, w - w * s))
    ty = rng.uniform(min(0.0, h - h * s), max(0.0, h - h * s))
    m = np.array([[s, 0, tx], [0, s, ty]], np.float32)
    img = cv2.warpAffine(np.ascontiguousarray(img), m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(pad_value,) * 3)
    if mask is not None:
        mask = cv2.warpAffine(np.ascontiguousarray(mask), m, (w, h), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE_INDEX)
    if len(boxes):
        area0 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * s * s
        boxes = boxes * s + np.array([tx, ty, tx, ty], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        keep = (area > 0.4 * area0) & (boxes[:, 2] - boxes[:, 0] > 2) & (boxes[:, 3] - boxes[:, 1] > 2)
        boxes, classes = boxes[keep], classes[keep]
    img = _hsv_jitter(rng, img)
    return img, boxes.astype(np.float32), classes, mask


def _hsv_jitter(rng: np.random.Generator, img: np.ndarray, hgain: float = 0.015, sgain: float = 0.6,
                vgain: float = 0.4) -> np.ndarray:
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * r[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
