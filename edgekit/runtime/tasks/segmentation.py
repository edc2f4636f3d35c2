"""Segmentation post-processing: logits or class map at model resolution -> class per frame pixel."""

import cv2
import numpy as np

from edgekit.runtime.preprocess import Transform


def class_map(output: np.ndarray) -> np.ndarray:
    """One image's output [C, H, W] logits (or an [H, W] class map) -> uint8 class map at model size."""
    if output.ndim == 2:
        return output.astype(np.uint8)
    return output.argmax(0).astype(np.uint8)


def to_frame(classes: np.ndarray, transform: Transform) -> np.ndarray:
    """Crop the part of the model-size class map that shows the frame and resize it to the frame."""
    h, w = classes.shape
    x0, y0, x1, y1 = transform.valid_region(w, h)
    return cv2.resize(classes[y0:y1, x0:x1], (transform.src_w, transform.src_h), interpolation=cv2.INTER_NEAREST)
