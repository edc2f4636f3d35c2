"""Drawing primitives for the tasks and the video/window sinks: labelled boxes, a colour mask overlay, and a
status line with the stream's FPS and latency."""

from typing import Sequence

import cv2
import numpy as np


def palette(n: int) -> np.ndarray:
    """n distinct BGR colours (class 0 of a segmenter, the background, is black)."""
    rng = np.random.default_rng(1234)
    colours = rng.integers(60, 256, (n, 3)).astype(np.uint8)
    return colours


def draw_boxes(img: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
               names: Sequence[str]) -> None:
    colours = palette(len(names))
    for (x1, y1, x2, y2), s, c in zip(boxes.astype(int), scores, classes):
        colour = tuple(int(v) for v in colours[c])
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
        label = f"{names[c]} {s:.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        cv2.rectangle(img, (x1, max(0, y1 - th - 4)), (x1 + tw + 2, y1), colour, -1)
        cv2.putText(img, label, (x1 + 1, y1 - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)


def overlay_mask(img: np.ndarray, classes_map: np.ndarray, num_classes: int, alpha: float = 0.5) -> None:
    colours = palette(num_classes)
    colours[0] = 0
    coloured = colours[classes_map]
    fg = classes_map > 0
    img[fg] = (img[fg] * (1 - alpha) + coloured[fg] * alpha).astype(np.uint8)


def draw_status(img: np.ndarray, text: str) -> None:
    """White text on a dark band along the bottom edge, clear of the boxes' labels."""
    h, w = img.shape[:2]
    img[h - 24:] = (img[h - 24:] * 0.4).astype(np.uint8)
    cv2.putText(img, text, (8, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
