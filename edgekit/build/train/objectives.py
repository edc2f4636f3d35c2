"""What training needs to know per task (build side): the default architecture and resize mode, the targets
of one image, the model's training-time predictions, the loss on them and the distillation loss between a
student's and a teacher's. One objective per task, looked up by the task's name."""

from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from edgekit.build.models import ultralytics
from edgekit.build.train.loss import detection_distill, detection_loss, segmentation_distill, segmentation_loss
from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.preprocess import Transform, resize


class Objective:
    task = ""
    default_arch = ""
    default_resize = ""
    logged_metrics: Tuple[str, ...] = ()  # logged each epoch besides the task's primary metric
    distill_weight = 1.0  # default weight of the distillation loss (benchmarks/distill_shipped.sh measured it)

    def target(self, tf: Transform, boxes: np.ndarray, classes: np.ndarray, mask: Any, card: ModelCard) -> Any:
        """One augmented image's ground truth in network-input coordinates."""
        raise NotImplementedError

    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> Any:
        """The predictions the loss and the distillation compare (in the model's current mode)."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, images: torch.Tensor, targets: List[Any], device: str,
             predicted: Any = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The task loss; `predicted` is predict()'s result where the caller has it already."""
        raise NotImplementedError

    def distill(self, student: Any, teacher: Any) -> torch.Tensor:
        """How far the student's predictions are from the teacher's (a model of the same outputs)."""
        raise NotImplementedError

    def check_model(self, model: torch.nn.Module, card: ModelCard) -> None:
        """A one-line error where this loss cannot train the model (before anything is written)."""


class Detection(Objective):
    task = "detection"
    default_arch = "edgenet-det-s"
    default_resize = "letterbox"
    logged_metrics = ("mAP50",)

    def target(self, tf: Transform, boxes: np.ndarray, classes: np.ndarray, mask: Any, card: ModelCard) -> Any:
        return torch.from_numpy(tf.boxes_to_input(boxes)), torch.from_numpy(classes)

    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> Any:
        if ultralytics.is_model(model):  # an imported Ultralytics detector trains with Ultralytics' own loss
            return ultralytics.raw_predictions(model, images)
        return model.forward_raw(images)

    def loss(self, model: torch.nn.Module, images: torch.Tensor, targets: List[Any], device: str,
             predicted: Any = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        targets = [(b.to(device), c.to(device)) for b, c in targets]
        predicted = self.predict(model, images) if predicted is None else predicted
        if ultralytics.is_model(model):
            return ultralytics.detection_loss(model, predicted, targets, images.shape[2:])
        return detection_loss(model, predicted, targets)

    def distill(self, student: Any, teacher: Any) -> torch.Tensor:
        boxes = ultralytics.boxes_and_logits  # Ultralytics' raw predictions decoded; edgekit's are already
        return detection_distill(*(boxes(p) if isinstance(p, dict) else p for p in (student, teacher)))

    def check_model(self, model: torch.nn.Module, card: ModelCard) -> None:
        # the loss assigns targets to the anchor points of edgekit's head, or is Ultralytics' own
        if not hasattr(model, "forward_raw") and not ultralytics.is_model(model):
            raise EdgekitError(f"{card.arch}: edgekit trains its own detectors and Ultralytics' (with Ultralytics' "
                               "loss); prune another detector with --finetune-epochs 0 and fine-tune it in your own "
                               "training code, then import it again")


class Segmentation(Objective):
    task = "segmentation"
    default_arch = "edgenet-seg-s"
    default_resize = "stretch"
    # at 1, the pruned shipped segmenter never learned two of its classes (mIoU 0.41 vs 0.77 without); at 0.3 it
    # lands within a point of plain fine-tuning (README, "Pruning")
    distill_weight = 0.3

    def target(self, tf: Transform, boxes: np.ndarray, classes: np.ndarray, mask: Any, card: ModelCard) -> Any:
        m, _ = resize(mask, card, interpolation=0, pad_value=datasets.IGNORE_INDEX)
        return torch.from_numpy(m.astype(np.int64))

    def predict(self, model: torch.nn.Module, images: torch.Tensor) -> Any:
        return model(images)

    def loss(self, model: torch.nn.Module, images: torch.Tensor, targets: List[Any], device: str,
             predicted: Any = None) -> Tuple[torch.Tensor, Dict[str, float]]:
        logits = self.predict(model, images) if predicted is None else predicted
        return segmentation_loss(logits, torch.stack(targets).to(device))

    def distill(self, student: Any, teacher: Any) -> torch.Tensor:
        return segmentation_distill(student, teacher)

    def check_model(self, model: torch.nn.Module, card: ModelCard) -> None:
        if card.output_layout != "logits":  # cross-entropy on per-class logits at the input size
            raise EdgekitError(f"{card.arch}: fine-tuning needs per-class logits (layout 'logits'), this model gives "
                               f"'{card.output_layout}'")


OBJECTIVES = {o.task: o for o in (Detection(), Segmentation())}


def objective(task: str) -> Objective:
    if task not in OBJECTIVES:
        raise EdgekitError(f"--task must be {' or '.join(OBJECTIVES)}, not '{task}'")
    return OBJECTIVES[task]
