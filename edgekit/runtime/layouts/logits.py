"""Semantic segmentation logits (edgekit's segmenters, torchvision and segmentation_models_pytorch heads):
one output [B, classes, H, W]; the class of a pixel is the argmax over channels. An [B, H, W] class map
is taken as it is."""

from typing import Mapping, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.layouts.shapes import is_integer
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.segmentation import ClassMap


def class_map(output: np.ndarray) -> np.ndarray:
    """One image's output [C, H, W] logits (or an [H, W] class map) -> uint8 class map at model size."""
    if output.ndim == 2:
        return output.astype(np.uint8)
    return output.argmax(0).astype(np.uint8)


@register_layout
class Logits(Layout):
    name = "logits"
    task = "segmentation"
    description = "semantic segmentation logits [B, classes, H, W] (argmax per pixel)"
    default = True

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        # One channel per class, and more than one: a single sigmoid channel is the binary layout's.
        shape = outputs[0].shape if len(outputs) == 1 else ()
        return len(shape) == 4 and shape[1] == card.num_classes > 1 and outputs[0].dtype.startswith("float")

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        shape = list(spec.shape)
        if len(shape) not in (3, 4):
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {shape}; expected [N, C, H, W] logits")
        if len(shape) == 3 and not is_integer(spec.dtype):  # (a detector's [N, 4 + classes, anchors] is float)
            raise EdgekitError(f"{source}: output '{spec.name}' is {spec.dtype} {shape}; expected [N, C, H, W] logits "
                               "or an integer class map [N, H, W]")
        if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != card.num_classes:
            raise EdgekitError(f"{source}: output '{spec.name}' has {shape[1]} channels (shape {shape}), one per "
                               f"class, but the card names {card.num_classes} classes; pass --classes with {shape[1]} "
                               "names")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> ClassMap:
        return ClassMap.at_model(class_map(the_output(outputs, card)), transform, card.input_size)
