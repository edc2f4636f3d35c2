"""Detection post-processing for the YOLOv8 output layout [B, 4 + num_classes, anchors]."""

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Detections:
    boxes: np.ndarray  # Nx4 float32 xyxy
    scores: np.ndarray  # N float32
    classes: np.ndarray  # N int64

    def __len__(self) -> int:
        return len(self.scores)


def decode(raw: np.ndarray, score_threshold: float, iou_threshold: float, max_detections: int) -> Detections:
    """One image's raw head output [4 + C, N] -> class-aware NMS'd detections in input pixels."""
    scores_all = raw[4:]
    classes = scores_all.argmax(0)
    scores = scores_all[classes, np.arange(scores_all.shape[1])]
    keep = scores > score_threshold
    if not keep.any():
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    cxcywh = raw[:4, keep].T.astype(np.float32)
    scores, classes = scores[keep].astype(np.float32), classes[keep].astype(np.int64)
    xywh = cxcywh.copy()
    xywh[:, :2] -= xywh[:, 2:] / 2
    idx = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), score_threshold, iou_threshold)
    idx = np.asarray(idx, np.int64).reshape(-1)
    idx = idx[np.argsort(-scores[idx], kind="stable")][:max_detections]
    boxes = xywh[idx]
    boxes[:, 2:] += boxes[:, :2]
    return Detections(boxes, scores[idx], classes[idx])
