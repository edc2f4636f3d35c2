"""Semantic segmentation: a result is a class per frame pixel; accuracy is mIoU with per-class IoU, INT8
agreement the IoU per class against FP32's map (their mean), the share of pixels given the same class beside it."""

import functools
from typing import Any, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np

from edgekit.runtime import draw
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.measure.metrics import ConfusionMatrix
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_task
from edgekit.runtime.tasks.base import Accuracy, Fidelity, Task, Truth


class ClassMap:
    """A class index per frame pixel.

    A layout gives the map at the model's resolution with how it lies on the frame (ClassMap.at_model); `classes`,
    the frame-size map, is made from it on first use (to_frame) and kept, and pixel_share counts the model's pixels,
    each weighted by the frame pixels it becomes, so a stream that only writes JSON never makes a frame-size map."""

    def __init__(self, classes: Optional[np.ndarray] = None) -> None:
        self._classes = classes  # HxW uint8 class index per frame pixel (made on first use where the layout left it)
        self._source: Optional[Tuple[np.ndarray, Transform, Tuple[int, int]]] = None

    @classmethod
    def at_model(cls, classes: np.ndarray, transform: Transform, input_size: Tuple[int, int]) -> "ClassMap":
        """A map at the network input's size (or a stride of it), brought to the frame by to_frame when read."""
        out = cls()
        out._source = (classes, transform, (int(input_size[0]), int(input_size[1])))
        return out

    @property
    def classes(self) -> np.ndarray:
        if self._classes is None:
            assert self._source is not None
            self._classes = to_frame(*self._source)
        return self._classes

    @classes.setter
    def classes(self, value: np.ndarray) -> None:
        self._classes, self._source = value, None

    def __repr__(self) -> str:
        h, w = self.shape
        return f"ClassMap({w}x{h} frame)"

    def pixel_share(self, names: List[str]) -> Dict[str, float]:
        """Each class's share of the frame's pixels."""
        counts = None
        if self._classes is None and self._source is not None:
            classes, transform, input_size = self._source
            weights = frame_weights(classes.shape, transform, input_size)
            if weights is not None:  # exact: whole numbers of frame pixels
                counts = np.bincount(classes.ravel(), weights, minlength=len(names)).astype(np.int64)
        if counts is None:
            counts = np.bincount(self.classes.ravel(), minlength=len(names))
        share = counts / (self.shape[0] * self.shape[1])
        return {n: round(float(s), 4) for n, s in zip(names, share)}

    @property
    def shape(self) -> Tuple[int, int]:
        """(height, width) of the frame."""
        if self._classes is None and self._source is not None:
            t = self._source[1]
            return int(t.src_h), int(t.src_w)
        return int(self.classes.shape[0]), int(self.classes.shape[1])


def to_frame(classes: np.ndarray, transform: Transform, input_size: Tuple[int, int]) -> np.ndarray:
    """A class map at the network input's size (or a stride of it: brought to the input size first, so the
    letterbox crop, in input pixels, applies) -> the part that shows the frame, resized to the frame."""
    in_h, in_w = input_size
    if classes.shape != (in_h, in_w):
        classes = cv2.resize(classes, (in_w, in_h), interpolation=cv2.INTER_NEAREST)
    x0, y0, x1, y1 = transform.valid_region(in_w, in_h)
    return cv2.resize(classes[y0:y1, x0:x1], (transform.src_w, transform.src_h), interpolation=cv2.INTER_NEAREST)


@functools.lru_cache(maxsize=4)
def frame_weights(shape: Tuple[int, ...], transform: Transform, input_size: Tuple[int, int]) -> Optional[np.ndarray]:
    """How many frame pixels each pixel of a model-resolution map of `shape` becomes through to_frame (float64
    [h * w], whole numbers), read off to_frame itself: a nearest-neighbour resize takes each frame pixel from one
    row and one column, so maps of row and column indices, passed through it as two uint8 bytes each, show which.
    None where they do not (the frame-size map is made then). Kept for the frames of a stream, which share it."""
    if len(shape) != 2 or not (0 < shape[0] < 1 << 16 and 0 < shape[1] < 1 << 16):
        return None
    h, w = shape

    def through(index: np.ndarray) -> np.ndarray:
        lo = to_frame((index & 255).astype(np.uint8), transform, input_size)
        hi = to_frame((index >> 8).astype(np.uint8), transform, input_size)
        return lo.astype(np.int64) | (hi.astype(np.int64) << 8)

    rows = through(np.repeat(np.arange(h)[:, None], w, 1))
    cols = through(np.repeat(np.arange(w)[None, :], h, 0))
    if rows.shape != (transform.src_h, transform.src_w) or not rows.size:
        return None
    if not ((rows == rows[:, :1]).all() and (cols == cols[:1]).all()):
        return None
    per_row, per_col = np.bincount(rows[:, 0], minlength=h), np.bincount(cols[0], minlength=w)
    if len(per_row) != h or len(per_col) != w:
        return None
    weights = np.outer(per_row, per_col).astype(np.float64).ravel()
    weights.flags.writeable = False  # cached: shared by every call
    return weights


def overlay(image: np.ndarray, classes: np.ndarray, num_classes: int) -> None:
    """draw.overlay_mask(image, classes, num_classes) (alpha 0.5), reading only the pixels with a class: the same
    arithmetic on the same pixels, without colouring the background first."""
    if image.ndim != 3 or image.shape[:2] != classes.shape or not image.flags.c_contiguous or \
            image.dtype != np.uint8 or classes.dtype != np.uint8:
        draw.overlay_mask(image, classes, num_classes)
        return
    colours = draw.palette(num_classes)
    flat = classes.ravel()
    fg = np.flatnonzero(flat)
    pixels = image.reshape(-1, image.shape[2])  # a view: written through
    pixels[fg] = (pixels[fg] * 0.5 + colours[flat[fg]] * 0.5).astype(np.uint8)


class MeanIoU(Accuracy):
    def __init__(self, card: ModelCard) -> None:
        self.names = list(card.classes)
        self.cm = ConfusionMatrix(card.num_classes)

    def add(self, result: ClassMap, truth: Truth) -> None:
        if truth.get("mask") is not None:
            self.cm.update(result.classes, truth["mask"])

    def summary(self) -> Dict[str, Any]:
        return self.cm.summary(self.names)


class MapFidelity(Fidelity):
    """Pooled over frames: the share of pixels given the same class, and the IoU of each class's pixels against
    the reference's (their mean over the classes either map shows is the agreement the budget reads). The pixel
    share hides a thin class: a text mask at IoU 0.85 on a white page still agrees on 99% of the pixels."""

    def __init__(self, card: ModelCard) -> None:
        self.names = list(card.classes)
        self.cm = ConfusionMatrix(max(card.num_classes, 1), ignore_index=-1)
        self.frames = 0

    def add(self, reference: ClassMap, other: ClassMap) -> None:
        self.frames += 1
        self.cm.update(other.classes, reference.classes)

    def summary(self) -> Dict[str, Any]:
        s = self.cm.summary(self.names)
        return {"frames": self.frames, "pixel_agreement": round(float(s["pixel_accuracy"]), 4),
                "mask_iou": round(float(s["mIoU"]), 4) if self.frames else 1.0, "per_class_iou": s["per_class_iou"]}


@register_task
class Segmentation(Task):
    name = "segmentation"
    description = "a class for every pixel"
    metric_label = "mIoU"
    primary_metric = "mIoU"
    agreement_key = "mask_iou"
    truth_kind = "mask"

    def load_dataset(self, root: Any, split: str, fmt: str = "auto") -> datasets.Dataset:
        return datasets.load_segmentation(root, split)

    def draw(self, image: np.ndarray, result: ClassMap, card: ModelCard) -> None:
        overlay(image, result.classes, card.num_classes)

    def to_json(self, result: ClassMap, card: ModelCard) -> Dict[str, Any]:
        return {"pixel_share": result.pixel_share(card.classes)}

    def served_outputs(self, card: ModelCard) -> List[Tuple[str, str, List[int]]]:
        return [("CLASS_MAP", "uint8", [-1, -1])]  # the class index of every frame pixel

    def to_tensors(self, result: ClassMap, card: ModelCard) -> Dict[str, np.ndarray]:
        return {"CLASS_MAP": np.ascontiguousarray(result.classes, np.uint8)}

    def accuracy(self, card: ModelCard) -> Accuracy:
        return MeanIoU(card)

    def agreement(self, reference: ClassMap, other: ClassMap) -> float:
        return float((reference.classes == other.classes).mean())

    def fidelity(self, card: ModelCard) -> Fidelity:
        return MapFidelity(card)

    def accuracy_text(self, metrics: Mapping[str, Any], compact: bool = False) -> str:
        return f"{metrics['mIoU']:.3f}" if compact else f"mIoU {metrics['mIoU']:.3f}"

    def accuracy_details(self, metrics: Mapping[str, Any]) -> List[str]:
        lines = ["", "| class | IoU |", "|---|---:|"]
        lines += [f"| {c} | {'–' if v is None else f'{v:.3f}'} |" for c, v in metrics["per_class_iou"].items()]
        lines.append(f"\npixel accuracy {metrics['pixel_accuracy']:.3f}")
        return lines
