"""Object detection: results are boxes with scores and classes in frame pixels; accuracy is COCO mAP,
INT8 agreement the F1 of matching detections, stream accuracy precision/recall at IoU 0.5."""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Tuple

import cv2
import numpy as np

from edgekit.runtime import draw
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.measure.metrics import detection_map
from edgekit.runtime.registry import register_task
from edgekit.runtime.tasks.base import Accuracy, Fidelity, Task, Truth


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


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, max_detections: int,
        agnostic: bool = False) -> np.ndarray:
    """Indices kept by greedy NMS over xyxy boxes, highest score first, at most max_detections: a box goes
    when its IoU with a kept box of the same class (any class, if agnostic) exceeds iou_threshold.

    OpenCV's NMSBoxes (in every OpenCV 4, JetPack 5's 4.5.4 too, which lacks NMSBoxesBatched) with each
    class's boxes moved to a region of their own, the offset trick of torchvision's batched_nms; float64,
    so the offset does not round IoUs near the threshold."""
    if len(scores) == 0:
        return np.zeros(0, np.int64)
    b = boxes.astype(np.float64)
    if not agnostic:
        b = b + (classes.astype(np.float64) * (float(b.max() - b.min()) + 1.0))[:, None]
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
    idx = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float64).tolist(), 0.0, iou_threshold),
                     np.int64).reshape(-1)
    return idx[np.argsort(-scores[idx], kind="stable")][:max_detections]


def select(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, params: Any) -> "Detections":
    """Candidates (xyxy in input pixels, score, class) -> detections over the score threshold after NMS."""
    keep = scores > params.score_threshold
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    idx = nms(boxes, scores, classes, params.iou_threshold, params.max_detections, params.agnostic_nms)
    return Detections(boxes[idx].astype(np.float32), scores[idx].astype(np.float32), classes[idx].astype(np.int64))


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    """[N, 4] centre x, centre y, width, height -> x1, y1, x2, y2 (float32)."""
    b = b.astype(np.float32)
    half = b[:, 2:4] / 2
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], 1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of two xyxy box sets."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def match_pairs(found: Detections, boxes: np.ndarray, classes: np.ndarray,
                iou: float = 0.5) -> List[Tuple[int, int, float]]:
    """(index in found, index in boxes, IoU) of the detections that match a box of the same class (IoU >= iou),
    greedily from the highest score; each box matches once."""
    if len(found) == 0 or len(boxes) == 0:
        return []
    ious = box_iou(found.boxes, boxes)
    ious[found.classes[:, None] != classes[None, :]] = 0
    pairs = []
    for i in np.argsort(-found.scores):
        j = int(np.argmax(ious[i]))
        if ious[i, j] >= iou:
            pairs.append((int(i), j, float(ious[i, j])))
            ious[:, j] = 0
    return pairs


def matches(found: Detections, boxes: np.ndarray, classes: np.ndarray, iou: float = 0.5) -> int:
    """How many of `found` match a box of the same class (IoU >= iou); see match_pairs."""
    return len(match_pairs(found, boxes, classes, iou))


def detection_f1(ref: Detections, other: Detections, iou: float = 0.5) -> float:
    """F1 of greedily matching `other` to `ref` (same class, IoU >= iou); 1.0 when both are empty."""
    if len(ref) == 0 and len(other) == 0:
        return 1.0
    return 2 * matches(other, ref.boxes, ref.classes, iou) / (len(ref) + len(other))


class MatchFidelity(Fidelity):
    """Pooled over frames: F1 of the detections (or instances) matched to the reference's, the mean IoU of the
    matched pairs, and how far their scores moved. F1 alone is decided by borderline boxes near the score
    threshold; the score difference shows a quantized head that compresses scores (every score capped at 0.5)
    while F1 at a low threshold stays perfect."""

    key, iou_name = "detection_f1", "mean_box_iou"
    BORDERLINE = 0.05  # an unmatched result scored within this of the threshold was a coin toss in FP32 too

    def __init__(self, score_threshold: float = 0.0) -> None:
        self.threshold = score_threshold
        self.frames = self.matched = self.n_ref = self.n_other = self.borderline = 0
        self.iou_sum = self.score_sum = self.score_max = 0.0

    def pairs(self, reference: Any, other: Any) -> List[Tuple[int, int, float]]:
        return match_pairs(other, reference.boxes, reference.classes)

    def add(self, reference: Any, other: Any) -> None:
        pairs = self.pairs(reference, other)
        self.frames += 1
        self.n_ref += len(reference)
        self.n_other += len(other)
        self.matched += len(pairs)
        for i, j, iou in pairs:
            diff = abs(float(other.scores[i]) - float(reference.scores[j]))
            self.iou_sum += iou
            self.score_sum += diff
            self.score_max = max(self.score_max, diff)
        matched_ref, matched_other = {j for _, j, _ in pairs}, {i for i, _, _ in pairs}
        near = self.threshold + self.BORDERLINE
        self.borderline += sum(1 for j, s in enumerate(reference.scores) if j not in matched_ref and s < near)
        self.borderline += sum(1 for i, s in enumerate(other.scores) if i not in matched_other and s < near)

    def summary(self) -> Dict[str, Any]:
        total = self.n_ref + self.n_other
        m = max(1, self.matched)
        return {"frames": self.frames, self.key: round(2 * self.matched / total if total else 1.0, 4),
                self.iou_name: round(self.iou_sum / m if self.matched else 1.0, 4),
                "mean_score_diff": round(self.score_sum / m, 4), "max_score_diff": round(self.score_max, 4),
                "reference_count": self.n_ref, "count": self.n_other, "matched": self.matched,
                "unmatched": total - 2 * self.matched, "unmatched_borderline": self.borderline}


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


# A served detector's typed outputs per frame (export-triton): how many, then xyxy boxes in frame pixels, scores and
# class indices, one row each
SERVED_DETECTIONS = [("COUNT", "int32", [1]), ("BOXES", "float32", [-1, 4]), ("SCORES", "float32", [-1]),
                     ("CLASSES", "int32", [-1])]


def detection_tensors(d: "Detections") -> Dict[str, np.ndarray]:
    return {"COUNT": np.array([len(d)], np.int32), "BOXES": np.asarray(d.boxes, np.float32).reshape(-1, 4),
            "SCORES": np.asarray(d.scores, np.float32), "CLASSES": np.asarray(d.classes, np.int32)}


@register_task
class Detection(Task):
    name = "detection"
    description = "boxes with a class and a score"
    metric_label = "mAP@0.5 / mAP@0.5:0.95"
    primary_metric = "mAP50_95"
    agreement_key = "detection_f1"
    truth_kind = "boxes"
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

    def served_outputs(self, card: ModelCard) -> List[Tuple[str, str, List[int]]]:
        return SERVED_DETECTIONS

    def to_tensors(self, result: Detections, card: ModelCard) -> Dict[str, np.ndarray]:
        return detection_tensors(result)

    def accuracy(self, card: ModelCard) -> Accuracy:
        return MeanAveragePrecision(card)

    def stream_accuracy(self, card: ModelCard) -> Accuracy:
        return PrecisionRecall()

    def agreement(self, reference: Detections, other: Detections) -> float:
        return detection_f1(reference, other)

    def fidelity(self, card: ModelCard) -> Fidelity:
        return MatchFidelity(card.score_threshold)

    def accuracy_text(self, metrics: Mapping[str, Any], compact: bool = False) -> str:
        if compact:
            return f"{metrics['mAP50']:.3f} / {metrics['mAP50_95']:.3f}"
        return f"mAP@0.5 {metrics['mAP50']:.3f}, mAP@0.5:0.95 {metrics['mAP50_95']:.3f}"

    def stream_accuracy_text(self, metrics: Mapping[str, Any]) -> str:
        return f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f} (IoU >= 0.5, same class)"
