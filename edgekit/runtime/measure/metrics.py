"""Accuracy metrics: COCO-protocol mAP (through faster-coco-eval) and segmentation IoU."""

import contextlib
import io
from typing import Dict, List, Sequence

import numpy as np

from edgekit.errors import MissingDependency


def detection_map(
    predictions: Sequence[Dict[str, np.ndarray]],
    targets: Sequence[Dict[str, np.ndarray]],
    num_classes: int,
) -> Dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 by the COCO protocol.

    predictions[i]: {"boxes": Nx4 xyxy, "scores": N, "classes": N}; targets[i]: {"boxes", "classes"},
    both in the same pixel frame. Classes without ground truth are left out of the mean, as in COCO.
    """
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise MissingDependency("faster-coco-eval", "eval") from None
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(predictions, targets), start=1):
        images.append({"id": i, "width": 1, "height": 1})
        for b, c in zip(np.asarray(t["boxes"]).tolist(), np.asarray(t["classes"]).tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
        for b, s, c in zip(np.asarray(p["boxes"]).tolist(), np.asarray(p["scores"]).tolist(),
                           np.asarray(p["classes"]).tolist()):
            dets.append({"image_id": i, "category_id": int(c) + 1,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
    if not anns or not dets:
        return {"mAP50": 0.0, "mAP50_95": 0.0}
    gt = COCO({"images": images, "annotations": anns,
               "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval_faster(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    return {"mAP50": max(0.0, float(stats[1])), "mAP50_95": max(0.0, float(stats[0]))}


class ConfusionMatrix:
    """Accumulates a segmentation confusion matrix; pixels labelled `ignore_index` are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.n = num_classes
        self.ignore = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        valid = target != self.ignore
        t = target[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        self.matrix += np.bincount(t * self.n + p, minlength=self.n * self.n).reshape(self.n, self.n)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both prediction and target."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def summary(self, class_names: List[str]) -> Dict[str, object]:
        iou = self.iou()
        total = self.matrix.sum()
        return {
            "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "pixel_accuracy": float(np.diag(self.matrix).sum() / total) if total else 0.0,
            "per_class_iou": {n: (None if np.isnan(v) else round(float(v), 4)) for n, v in zip(class_names, iou)},
        }
