"""What training needs to know per task (build side): the default architecture and resize mode, the targets
of one image, and the loss. One objective per task, looked up by the task's name."""

from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from edgekit.build.train.loss import detection_loss, segmentation_loss
from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.preprocess import Transform, resize


class Objective:
    task = ""
    default_arch = ""
    default_resize = ""
    logged_metrics: Tuple[str, ...] = ()  # logged each epoch besides the task's primary metric

    def target(self, tf: Transform, boxes: np.ndarray, classes: np.ndarray, mask: Any, card: ModelCard) -> Any:
        """One augmented image's ground truth in network-input coordinates."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, images: torch.Tensor, targets: List[Any],
             device: str) -> Tuple[torch.Tensor, Dict[str, float]]:
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

    def loss(self, model: torch.nn.Module, images: torch.Tensor, targets: List[Any],
             device: str) -> Tuple[torch.Tensor, Dict[str, float]]:
        return detection_loss(model, images, [(b.to(device), c.to(device)) for b, c in targets])

    def check_model(self, model: torch.nn.Module, card: ModelCard) -> None:
        if not hasattr(model, "forward_raw"):  # the loss assigns targets to the anchor points of edgekit's head
            raise EdgekitError(f"{card.arch}: edgekit's detection loss trains edgekit's own detectors only; prune "
                               "with --finetune-epochs 0 and fine-tune in your own training code, then import again")


class Segmentation(Objective):
    task = "segmentation"
    default_arch = "edgenet-seg-s"
    default_resize = "stretch"

    def target(self, tf: Transform, boxes: np.ndarray, classes: np.ndarray, mask: Any, card: ModelCard) -> Any:
        m, _ = resize(mask, card, interpolation=0, pad_value=datasets.IGNORE_INDEX)
        return torch.from_numpy(m.astype(np.int64))

    def loss(self, model: torch.nn.Module, images: torch.Tensor, targets: List[Any],
             device: str) -> Tuple[torch.Tensor, Dict[str, float]]:
        return segmentation_loss(model, images, torch.stack(targets).to(device))

    def check_model(self, model: torch.nn.Module, card: ModelCard) -> None:
        if card.output_layout != "logits":  # cross-entropy on per-class logits at the input size
            raise EdgekitError(f"{card.arch}: fine-tuning needs per-class logits (layout 'logits'), this model gives "
                               f"'{card.output_layout}'")


OBJECTIVES = {o.task: o for o in (Detection(), Segmentation())}


def objective(task: str) -> Objective:
    if task not in OBJECTIVES:
        raise EdgekitError(f"--task must be {' or '.join(OBJECTIVES)}, not '{task}'")
    return OBJECTIVES[task]
