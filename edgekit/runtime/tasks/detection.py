"""Object detection: results are boxes with scores and classes in frame pixels; accuracy is COCO mAP,
INT8 agreement the F1 of matching detections, stream accuracy precision/recall at IoU 0.5."""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

import cv2
import numpy as np

from edgekit.runtime import draw
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.measure.metrics import detection_map
from edgekit.runtime.registry import register_task
from edgekit.runtime.tasks.base import Accuracy, Task, Truth


@dataclass
class Detections:
    boxes: np.ndarray  # Nx4 float32 xyxy
    scores: np.ndarray  # N float32
    classes: np.ndarray  # N int64

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


def nms(xywh: np.ndarray, scores: np.ndarray, classes: np.ndarray, score_threshold: float, iou_threshold: float,
        max_detections: int) -> np.ndarray:
    """Indices kept by class-aware NMS over xywh boxes, highest score first, at most max_detections."""
    idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), score_threshold, iou_threshold)
    idx = np.asarray(idx, np.int64).reshape(-1)
    return idx[np.argsort(-scores[idx], kind="stable")][:max_detections]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of two xyxy box sets."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def matches(found: Detections, boxes: np.ndarray, classes: np.ndarray, iou: float = 0.5) -> int:
    """How many of `found` match a box of the same class (IoU >= iou), greedily from the highest score;
    each box matches once."""
    if len(found) == 0 or len(boxes) == 0:
        return 0
    ious = box_iou(found.boxes, boxes)
    ious[found.classes[:, None] != classes[None, :]] = 0
    matched = 0
    for i in np.argsort(-found.scores):
        j = int(np.argmax(ious[i]))
        if ious[i, j] >= iou:
            ious[:, j] = 0
            matched += 1
    return matched


def detection_f1(ref: Detections, other: Detections, iou: float = 0.5) -> float:
    """F1 of greedily matching `other` to `ref` (same class, IoU >= iou); 1.0 when both are empty."""
    if len(ref) == 0 and len(other) == 0:
        return 1.0
    return 2 * matches(other, ref.boxes, ref.classes, iou) / (len(ref) + len(other))


class MeanAveragePrecision(Accuracy):
    """mAP@0.5 and mAP@0.5:0.95 by the COCO protocol (faster-coco-eval)."""

    def __init__(self, card: ModelCard) -> None:
        self.num_classes = card.num_classes
        self.preds: List[Dict[str, np.ndarray]] = []
        self.gts: List[Dict[str, np.ndarray]] = []

    def add(self, result: Detections, truth: Truth) -> None:
        self.preds.append({"boxes": result.boxes, "scores": result.scores, "classes": result.classes})
        self.gts.append({"boxes": truth["boxes"], "classes": truth["classes"]})

    def summary(self) -> Dict[str, Any]:
        return detection_map(self.preds, self.gts, self.num_classes)


class PrecisionRecall(Accuracy):
    """Precision and recall at IoU 0.5 (same class): cheap enough for every frame of a stream."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0

    def add(self, result: Detections, truth: Truth) -> None:
        if "boxes" not in truth:
            return
        boxes = np.asarray(truth["boxes"], np.float32).reshape(-1, 4)
        matched = matches(result, boxes, np.asarray(truth["classes"], np.int64))
        self.tp += matched
        self.fp += len(result) - matched
        self.fn += len(boxes) - matched

    def summary(self) -> Dict[str, Any]:
        return {"precision": self.tp / max(1, self.tp + self.fp), "recall": self.tp / max(1, self.tp + self.fn),
                "true_positives": self.tp, "false_positives": self.fp, "false_negatives": self.fn}


@register_task
class Detection(Task):
    name = "detection"
    description = "boxes with a class and a score"
    metric_label = "mAP@0.5 / mAP@0.5:0.95"
    primary_metric = "mAP50_95"
    agreement_key = "detection_f1"
    eval_score_threshold = 0.001  # COCO practice: rank everything, let the precision-recall curve decide

    def load_dataset(self, root: Any, split: str, fmt: str = "auto") -> datasets.Dataset:
        return datasets.load_detection(root, split, fmt)

    def draw(self, image: np.ndarray, result: Detections, card: ModelCard) -> None:
        draw.draw_boxes(image, result.boxes, result.scores, result.classes, card.classes)

    def to_json(self, result: Detections, card: ModelCard) -> Dict[str, Any]:
        return {"detections": [
            {"class": card.classes[int(c)], "class_id": int(c), "score": round(float(s), 4),
             "box": [round(float(v), 1) for v in b]}
            for b, s, c in zip(result.boxes, result.scores, result.classes)
        ]}

    def accuracy(self, card: ModelCard) -> Accuracy:
        return MeanAveragePrecision(card)

    def stream_accuracy(self, card: ModelCard) -> Accuracy:
        return PrecisionRecall()

    def agreement(self, reference: Detections, other: Detections) -> float:
        return detection_f1(reference, other)

    def accuracy_text(self, metrics: Mapping[str, Any], compact: bool = False) -> str:
        if compact:
            return f"{metrics['mAP50']:.3f} / {metrics['mAP50_95']:.3f}"
        return f"mAP@0.5 {metrics['mAP50']:.3f}, mAP@0.5:0.95 {metrics['mAP50_95']:.3f}"

    def stream_accuracy_text(self, metrics: Mapping[str, Any]) -> str:
        return f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f} (IoU >= 0.5, same class)"
