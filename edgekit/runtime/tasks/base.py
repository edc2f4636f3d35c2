"""What every task provides. One instance per task is registered (edgekit.runtime.registry)."""

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from edgekit.runtime.card import ModelCard

# Ground truth of one image or frame: detection "boxes" (Nx4 xyxy, frame pixels) and "classes"; segmentation
# "mask" (class index per pixel, 255 = ignore). A source or dataset gives what it has.
Truth = Mapping[str, Any]


class Accuracy:
    """Accumulates results against ground truth, one image at a time; summary() gives the metrics."""

    def add(self, result: Any, truth: Truth) -> None:
        raise NotImplementedError

    def summary(self) -> Dict[str, Any]:
        raise NotImplementedError


class Fidelity:
    """How closely one engine's results follow another's (INT8 against FP32), pooled over frames: add() one
    frame's pair of results; summary() gives the task's agreement measure (under its agreement_key) and the
    figures beside it (box IoU and score differences of matched detections, IoU per class, ...)."""

    def add(self, reference: Any, other: Any) -> None:
        raise NotImplementedError

    def summary(self) -> Dict[str, Any]:
        raise NotImplementedError


class Task:
    name = ""
    description = ""
    metric_label = ""  # the accuracy figures, as table headers show them
    primary_metric = ""  # the figure variants are ranked by
    agreement_key = ""  # how INT8 agreement with FP32 is named in manifests and reports
    eval_score_threshold: Optional[float] = None  # decode threshold when scoring accuracy (None: the card's)
    truth_kind = ""  # which ground truth its accuracy reads ("boxes", "mask"); see Truth

    def load_dataset(self, root: Any, split: str, fmt: str = "auto") -> Any:
        """The labelled dataset (edgekit.runtime.data.datasets.Dataset) of this task in `root`."""
        raise NotImplementedError

    def draw(self, image: np.ndarray, result: Any, card: ModelCard) -> None:
        """Draw a result onto a BGR frame, in place."""
        raise NotImplementedError

    def to_json(self, result: Any, card: ModelCard) -> Dict[str, Any]:
        """One frame's result as JSON values (a line of results.jsonl)."""
        raise NotImplementedError

    def served_outputs(self, card: ModelCard) -> List[Tuple[str, str, List[int]]]:
        """The typed tensors a served model (export-triton's postprocess) returns for one frame beside its JSON:
        (name, numpy dtype, dims with -1 for a length that varies); none unless the task gives them."""
        return []

    def to_tensors(self, result: Any, card: ModelCard) -> Dict[str, np.ndarray]:
        """One frame's result as the tensors of served_outputs, by name."""
        return {}

    def accuracy(self, card: ModelCard) -> Accuracy:
        """The accumulator of this task's accuracy metric (eval, sweep, training)."""
        raise NotImplementedError

    def stream_accuracy(self, card: ModelCard) -> Accuracy:
        """Accuracy against a stream's per-frame ground truth (run-stream): cheap enough for every frame."""
        return self.accuracy(card)

    def agreement(self, reference: Any, other: Any) -> float:
        """How closely `other` follows `reference` on one image, 1.0 for identical results."""
        raise NotImplementedError

    def fidelity(self, card: ModelCard) -> Fidelity:
        """The accumulator of agreement over many frames (build-engine's INT8 report)."""
        raise NotImplementedError

    def accuracy_text(self, metrics: Mapping[str, Any], compact: bool = False) -> str:
        """The accuracy in words; compact for table cells."""
        raise NotImplementedError

    def accuracy_details(self, metrics: Mapping[str, Any]) -> List[str]:
        """Markdown lines that follow the headline accuracy in an eval report."""
        return []

    def stream_accuracy_text(self, metrics: Mapping[str, Any]) -> str:
        return self.accuracy_text(metrics)
