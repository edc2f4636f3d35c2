"""Task accuracy of any runner (PyTorch model, ONNX, engine) on a labelled dataset, through the exact
runtime preprocessing and post-processing. Runtime side: NumPy/OpenCV only."""

from typing import Any, Callable, Dict, List, Optional

import numpy as np

from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.measure.metrics import ConfusionMatrix, detection_map
from edgekit.runtime.preprocess import Transform, preprocess
from edgekit.runtime.tasks import detection, segmentation

MAP_SCORE_THRESHOLD = 0.001  # COCO practice: rank everything, let the precision-recall curve decide
SCHEMA = "edgekit.eval/1"


def primary_metric(task: str) -> str:
    """The figure variants are ranked by: COCO's mAP@0.5:0.95, or mIoU."""
    return "mAP50_95" if task == "detection" else "mIoU"


def accuracy_text(task: str, m: Dict[str, Any], compact: bool = False) -> str:
    """'mAP@0.5 0.891, mAP@0.5:0.95 0.688' / 'mIoU 0.818'; compact (table cells): '0.891 / 0.688' / '0.818'."""
    if task == "detection":
        if compact:
            return f"{m['mAP50']:.3f} / {m['mAP50_95']:.3f}"
        return f"mAP@0.5 {m['mAP50']:.3f}, mAP@0.5:0.95 {m['mAP50_95']:.3f}"
    return f"{m['mIoU']:.3f}" if compact else f"mIoU {m['mIoU']:.3f}"


class Accumulator:
    """Collects one image at a time (raw output without batch axis + its transform + ground truth)."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.preds: List[Dict[str, np.ndarray]] = []
        self.gts: List[Dict[str, np.ndarray]] = []
        self.cm = ConfusionMatrix(card.num_classes)
        self.images = 0

    def add(self, output: np.ndarray, tf: Transform, boxes: np.ndarray, classes: np.ndarray,
            mask: Optional[np.ndarray]) -> None:
        self.images += 1
        if self.card.task == "detection":
            d = detection.decode(output, MAP_SCORE_THRESHOLD, self.card.iou_threshold, self.card.max_detections)
            self.preds.append({"boxes": tf.boxes_to_source(d.boxes), "scores": d.scores, "classes": d.classes})
            self.gts.append({"boxes": boxes, "classes": classes})
        else:
            assert mask is not None
            self.cm.update(segmentation.to_frame(segmentation.class_map(output), tf), mask)

    def result(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"images": self.images}
        if self.card.task == "detection":
            out.update(detection_map(self.preds, self.gts, self.card.num_classes))
        else:
            out.update(self.cm.summary(self.card.classes))
        return out


def evaluate(predict: Callable[[np.ndarray], np.ndarray], card: ModelCard, ds: datasets.Dataset,
             limit: int = 0) -> Dict[str, Any]:
    """`predict` maps one preprocessed [1, 3, H, W] tensor to the model's raw output [1, ...]."""
    datasets.check_classes(ds, card.classes, "model")
    acc = Accumulator(card)
    n = len(ds) if not limit else min(limit, len(ds))
    for i in range(n):
        img, boxes, classes, mask = datasets.load_sample(ds, i)
        x, tf = preprocess(img, card)
        acc.add(predict(x)[0], tf, boxes, classes, mask)
    return acc.result()


def markdown(r: Dict[str, Any]) -> str:
    """The eval report: the artifact, the data, the accuracy and, for segmentation, IoU per class."""
    m = r["metrics"]
    lines = [f"# Accuracy: {r['artifact']}", "",
             f"- model: {r['model']} ({r['task']}); backend {r['backend']['name']}; precision {r['precision']}",
             f"- data: {r['data']} split '{r['split']}' ({m['images']} images)",
             f"- **{accuracy_text(r['task'], m)}**"]
    if r["task"] == "segmentation":
        lines += ["", "| class | IoU |", "|---|---:|"]
        lines += [f"| {c} | {'–' if v is None else f'{v:.3f}'} |" for c, v in m["per_class_iou"].items()]
        lines.append(f"\npixel accuracy {m['pixel_accuracy']:.3f}")
    return "\n".join(lines) + "\n"
