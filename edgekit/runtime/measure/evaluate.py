"""Task accuracy of any runner (PyTorch model, ONNX, engine) on a labelled dataset, through the exact
runtime preprocessing, decoding and the task's own metric. Runtime side: NumPy/OpenCV only."""

from typing import Any, Callable, Dict, Mapping

import numpy as np

from edgekit.runtime import registry
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import Transform, preprocess
from edgekit.runtime.text import printable

SCHEMA = "edgekit.eval/1"


def primary_metric(task: str) -> str:
    """The figure variants are ranked by (COCO's mAP@0.5:0.95, mIoU, ...)."""
    return registry.task(task).primary_metric


def accuracy_text(task: str, m: Mapping[str, Any], compact: bool = False) -> str:
    """'mAP@0.5 0.891, mAP@0.5:0.95 0.688' / 'mIoU 0.818'; compact (table cells): '0.891 / 0.688' / '0.818'."""
    return registry.task(task).accuracy_text(m, compact)


def decoder(card: ModelCard) -> Callable[..., Any]:
    """Raw outputs of a network input (batch axis first), and which image of the batch (default 0) -> the task's
    result in input pixels, through the card's layout and thresholds: what agreement between two engines
    compares."""
    layout = registry.layout(card.output_layout)
    h, w = card.input_size
    same_frame, params = Transform.identity(w, h), DecodeParams.of(card)

    def result(outputs: Mapping[str, np.ndarray], index: int = 0) -> Any:
        return layout.decode(layout.image(outputs, index), same_frame, card, params)

    return result


def agreement(card: ModelCard, reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> float:
    """How closely one network input's outputs follow another's once decoded through the card (the task's
    measure on one frame: detections matched, pixels given the same class, ...; 1.0 for the same result).
    Compares models whose outputs vary in length (suppression in the graph) and INT8 against FP32 alike."""
    result = decoder(card)
    return float(registry.task(card.task).agreement(result(reference), result(other)))


class Scorer:
    """One image at a time: raw outputs by name (batch axis first) + the transform + the ground truth."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.task = registry.task(card.task)
        self.layout = registry.layout(card.output_layout)
        self.params = DecodeParams.of(card, self.task.eval_score_threshold)
        self.accuracy = self.task.accuracy(card)
        self.images = 0

    def add(self, outputs: Mapping[str, np.ndarray], tf: Transform, truth: Mapping[str, Any], index: int = 0) -> None:
        self.images += 1
        one = self.layout.image(outputs, index)
        self.accuracy.add(self.layout.decode(one, tf, self.card, self.params), truth)

    def result(self) -> Dict[str, Any]:
        return {"images": self.images, **self.accuracy.summary()}


def truth_of(sample: Any) -> Dict[str, Any]:
    """A dataset sample (image, boxes, classes, mask) as the tasks' ground truth."""
    _img, boxes, classes, mask = sample
    return {"boxes": boxes, "classes": classes, "mask": mask}


def evaluate(predict: Callable[[np.ndarray], Mapping[str, np.ndarray]], card: ModelCard, ds: datasets.Dataset,
             limit: int = 0) -> Dict[str, Any]:
    """`predict` maps one preprocessed [1, 3, H, W] tensor to the model's raw outputs by name."""
    datasets.check_classes(ds, card.classes, "model")
    scorer = Scorer(card)
    n = len(ds) if not limit else min(limit, len(ds))
    for i in range(n):
        sample = datasets.load_sample(ds, i)
        x, tf = preprocess(sample[0], card)
        scorer.add(predict(x), tf, truth_of(sample))
    return scorer.result()


def markdown(r: Dict[str, Any]) -> str:
    """The eval report: the artifact, the data, the accuracy and the task's details (IoU per class, ...). Strings
    from the model's card or manifest are shown `printable`, and the whole text once more (class names too)."""
    m = r["metrics"]
    task = registry.task(r["task"])
    lines = [f"# Accuracy: {printable(r['artifact'])}", "",
             f"- model: {printable(r['model'])} ({printable(r['task'])}); backend {printable(r['backend']['name'])}; "
             f"precision {printable(r['precision'])}",
             f"- data: {printable(r['data'])} split '{printable(r['split'])}' ({m['images']} images)",
             f"- **{task.accuracy_text(m)}**"]
    lines += task.accuracy_details(m)
    return printable("\n".join(lines) + "\n", multiline=True)
