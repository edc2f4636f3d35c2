"""Semantic segmentation: a result is a class per frame pixel; accuracy is mIoU with per-class IoU, INT8
agreement the IoU per class against FP32's map (their mean), the share of pixels given the same class beside it."""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

import cv2
import numpy as np

from edgekit.runtime import draw
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.measure.metrics import ConfusionMatrix
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_task
from edgekit.runtime.tasks.base import Accuracy, Fidelity, Task, Truth


@dataclass
class ClassMap:
    classes: np.ndarray  # HxW uint8 class index per frame pixel

    def pixel_share(self, names: List[str]) -> Dict[str, float]:
        share = np.bincount(self.classes.ravel(), minlength=len(names)) / self.classes.size
        return {n: round(float(s), 4) for n, s in zip(names, share)}


def to_frame(classes: np.ndarray, transform: Transform, input_size: Tuple[int, int]) -> np.ndarray:
    """A class map at the network input's size (or a stride of it: brought to the input size first, so the
    letterbox crop, in input pixels, applies) -> the part that shows the frame, resized to the frame."""
    in_h, in_w = input_size
    if classes.shape != (in_h, in_w):
        classes = cv2.resize(classes, (in_w, in_h), interpolation=cv2.INTER_NEAREST)
    x0, y0, x1, y1 = transform.valid_region(in_w, in_h)
    return cv2.resize(classes[y0:y1, x0:x1], (transform.src_w, transform.src_h), interpolation=cv2.INTER_NEAREST)


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
        draw.overlay_mask(image, result.classes, card.num_classes)

    def to_json(self, result: ClassMap, card: ModelCard) -> Dict[str, Any]:
        return {"pixel_share": result.pixel_share(card.classes)}

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
