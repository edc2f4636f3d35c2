"""Accuracy metrics: COCO-protocol mAP of boxes and of instance masks (through faster-coco-eval) and
segmentation IoU."""

import contextlib
import io
from typing import Any, Dict, List, Optional, Sequence, Tuple, cast

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
    map50, map50_95 = _coco_map(images, anns, dets, num_classes, "bbox")
    return {"mAP50": map50, "mAP50_95": map50_95}



def _coco_map(images: List[Dict[str, Any]], anns: List[Dict[str, Any]], dets: List[Dict[str, Any]],
              num_classes: int, iou_type: str) -> Tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) of COCO-format ground truth and results through faster-coco-eval; 0 where
    either side is empty."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise MissingDependency("faster-coco-eval", "eval") from None
    if not anns or not dets:
        return 0.0, 0.0
    gt = COCO({"images": images, "annotations": anns,
               "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]})
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval_faster(gt, dt, iouType=iou_type)
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(0.0, float(ev.stats[1])), max(0.0, float(ev.stats[0]))

def instance_map(
    predictions: Sequence[Dict[str, Any]],
    targets: Sequence[Dict[str, Any]],
    num_classes: int,
) -> Dict[str, float]:
    """Mask mAP@0.5 and mAP@0.5:0.95 by the COCO protocol (iouType "segm").

    predictions[i]: {"masks", "scores": N, "classes": N}; targets[i]: {"masks", "classes"}. Masks are boolean
    [N, H, W] arrays or lists of COCO RLE dicts ({"size": [h, w], "counts"}), all of one image's size. Classes
    without ground truth are left out of the mean, as in COCO.
    """
    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(predictions, targets), start=1):
        gt_rles, gt_size = _rles(t["masks"])
        dt_rles, dt_size = _rles(p["masks"])
        h, w = gt_size or dt_size or (1, 1)
        images.append({"id": i, "width": w, "height": h})
        for rle, c in zip(gt_rles, np.asarray(t["classes"]).tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c) + 1, "segmentation": rle,
                         "area": _area(rle), "bbox": _bbox(rle), "iscrowd": 0})
        for rle, s, c in zip(dt_rles, np.asarray(p["scores"]).tolist(), np.asarray(p["classes"]).tolist()):
            dets.append({"image_id": i, "category_id": int(c) + 1, "segmentation": rle, "score": float(s)})
    # Without "bbox" in the results, loadRes takes each detection's area and box from its mask.
    map50, map50_95 = _coco_map(images, anns, dets, num_classes, "segm")
    return {"mask_mAP50": map50, "mask_mAP50_95": map50_95}


def _rles(masks: Any) -> Tuple[List[Dict[str, Any]], Optional[Tuple[int, int]]]:
    """One image's masks as compressed RLE dicts with string counts, and the image's (h, w) where known."""
    from faster_coco_eval.core import mask as coco_mask

    if isinstance(masks, np.ndarray):
        m = masks.astype(np.uint8).reshape(-1, *masks.shape[-2:])
        encoded = coco_mask.encode(np.asfortranarray(m.transpose(1, 2, 0))) if len(m) else []
        return [_compressed(r) for r in encoded], (int(m.shape[1]), int(m.shape[2]))
    rles = []
    for r in masks:
        h, w = (int(v) for v in r["size"])
        rle = coco_mask.frPyObjects(r, h, w) if isinstance(r["counts"], list) else r  # uncompressed: compress
        rles.append(_compressed(cast(Dict[str, Any], rle)))
    return rles, (tuple(rles[0]["size"]) if rles else None)  # type: ignore[return-value]


def _compressed(rle: Dict[str, Any]) -> Dict[str, Any]:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def _area(rle: Dict[str, Any]) -> float:
    from faster_coco_eval.core import mask as coco_mask

    return float(coco_mask.area(rle))


def _bbox(rle: Dict[str, Any]) -> List[float]:
    from faster_coco_eval.core import mask as coco_mask

    return [float(v) for v in coco_mask.toBbox(rle)]


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
