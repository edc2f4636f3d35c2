"""torchvision's detection models exported to ONNX (Faster R-CNN, RetinaNet, SSD, SSDlite, FCOS), exported as
pytorch/vision test/test_onnx.py does. The graph takes one image, normalises and resizes it itself, suppresses, and
returns that image's boxes float [N, 4] (x1, y1, x2, y2 in the pixels of the image it received, i.e. edgekit's
network input), labels int64 [N] and scores float [N], N varying with the image, with no batch axis
(torchvision/models/detection/*: `postprocess_detections`, transform.py `GeneralizedRCNNTransform.postprocess`).
test_onnx.py exports a list of one CHW image, giving an input without a batch axis; exported with one NCHW tensor
[1, 3, H, W] instead, as edgekit runs image models, the graph gives the same three outputs.

The three come in no fixed order (Faster R-CNN: boxes, labels, scores; SSD: boxes, scores, labels) and the exporter
names only those it is given names for, so they are told apart by shape and dtype.

torchvision counts its background class as label 0, so a model trained with num_classes=K gives labels 1..K-1 (COCO
models: 1..90, with 'N/A' gaps in their category list). Parameter `label_offset` (default 1) is subtracted from each
label: 1 where the card's classes omit the background, 0 where the card lists it first."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout
from edgekit.runtime.layouts.shapes import describe_outputs, fits
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections

Output = Tuple[str, Tuple[Any, ...], str]  # name, shape (no batch axis), dtype name




def roles(outputs: Sequence[Output]) -> Optional[Dict[str, str]]:
    """Output name by role (boxes, labels, scores), or None where the outputs are not this layout."""
    if len(outputs) != 3:
        return None
    boxes = [o for o in outputs if o[2].startswith("float") and len(o[1]) == 2 and fits(o[1][1], 4)]
    scores = [o for o in outputs if o[2].startswith("float") and len(o[1]) == 1]
    labels = [o for o in outputs if o[2].startswith(("int", "uint")) and len(o[1]) == 1]
    if len(boxes) != 1 or len(scores) != 1 or len(labels) != 1:
        return None
    n = boxes[0][1][0]
    if not (fits(scores[0][1][0], n) and fits(labels[0][1][0], n)):
        return None
    return {"boxes": boxes[0][0], "labels": labels[0][0], "scores": scores[0][0]}


@register_layout
class TorchvisionDetection(Layout):
    name = "torchvision"
    suppressed = True
    task = "detection"
    description = ("torchvision detectors (Faster R-CNN, RetinaNet, SSD, FCOS): boxes [N,4] in pixels, labels, "
                   "scores; no batch axis")
    params = {"label_offset": 1}

    def image(self, outputs: Mapping[str, np.ndarray], index: int) -> Dict[str, np.ndarray]:
        """The outputs whole: they have no batch axis, and the graph took one image."""
        if index != 0:
            raise EdgekitError(f"a torchvision detector's graph takes one image and gives its detections only; "
                               f"there is no image {index} in its outputs")
        return dict(outputs)

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        return roles([(o.name, tuple(o.shape), o.dtype) for o in outputs]) is not None

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        specs = [(o.name, tuple(o.shape), o.dtype) for o in outputs]
        if roles(specs) is None:
            raise EdgekitError(f"{source}: outputs {describe_outputs(specs)}; a torchvision detector has three, "
                               "without a batch axis: boxes float [N, 4], labels int64 [N], scores float [N]")
        offset = int(self.param(card, "label_offset"))
        if offset < 0:
            raise EdgekitError(f"{source}: output.params.label_offset is {offset}; it is 1 where the card's classes "
                               "omit torchvision's background label 0, else 0")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Detections:
        arrays = {name: np.asarray(a) for name, a in outputs.items()}
        found: List[Output] = [(n, a.shape, a.dtype.name) for n, a in arrays.items()]
        role = roles(found)
        if role is None:
            if any(a.shape == (4,) for a in arrays.values()):
                # What indexing the first axis as a batch axis leaves of one image's boxes [N, 4]: a caller that
                # bypassed image().
                raise EdgekitError(f"outputs {describe_outputs(found)} reached the torchvision layout indexed by "
                                   "image, but a torchvision detector's outputs have no batch axis and must be passed "
                                   "whole")
            raise EdgekitError(f"outputs {describe_outputs(found)} are not a torchvision detector's boxes [N, 4], "
                               "labels [N] and scores [N]")
        scores = arrays[role["scores"]].astype(np.float32)
        keep = np.flatnonzero(scores > params.score_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")][: params.max_detections]
        offset = int(self.param(card, "label_offset"))
        classes = arrays[role["labels"]][keep].astype(np.int64) - offset
        bad = classes[(classes < 0) | (classes >= card.num_classes)]
        if len(bad):
            raise EdgekitError(f"output '{role['labels']}' gives label {int(bad[0]) + offset}, which is class "
                               f"{int(bad[0])} with label_offset {offset}, but the card has {card.num_classes} "
                               "classes: list them without the background and label_offset 1, or with it first "
                               "and label_offset 0")
        boxes = arrays[role["boxes"]][keep].astype(np.float32)
        return Detections(transform.boxes_to_source(boxes), scores[keep], classes)
