"""Task-level agreement between two runs of one model (e.g. INT8 against FP32) on the same input."""

import numpy as np

from edgekit.runtime.card import ModelCard
from edgekit.runtime.tasks import detection, segmentation


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of two xyxy box sets."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def detection_f1(ref: detection.Detections, other: detection.Detections, iou: float = 0.5) -> float:
    """F1 of greedily matching `other` to `ref` (same class, IoU >= iou); 1.0 when both are empty."""
    if len(ref) == 0 and len(other) == 0:
        return 1.0
    if len(ref) == 0 or len(other) == 0:
        return 0.0
    ious = box_iou(other.boxes, ref.boxes)
    ious[other.classes[:, None] != ref.classes[None, :]] = 0
    matched = 0
    for i in np.argsort(-other.scores):  # highest score first; each reference box matches once
        j = int(np.argmax(ious[i]))
        if ious[i, j] >= iou:
            ious[:, j] = 0
            matched += 1
    return 2 * matched / (len(ref) + len(other))


def task_agreement(card: ModelCard, ref_output: np.ndarray, output: np.ndarray) -> float:
    """One image's raw outputs (no batch axis) -> detection F1 or share of pixels with the same class."""
    if card.task == "detection":
        args = (card.score_threshold, card.iou_threshold, card.max_detections)
        return detection_f1(detection.decode(ref_output, *args), detection.decode(output, *args))
    return float((segmentation.class_map(ref_output) == segmentation.class_map(output)).mean())
