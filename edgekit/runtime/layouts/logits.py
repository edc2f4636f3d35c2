"""Semantic segmentation logits (edgekit's segmenters, torchvision and segmentation_models_pytorch heads):
one output [B, classes, H, W]; the class of a pixel is the argmax over channels. An [B, H, W] class map
is taken as it is."""

from typing import Mapping, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.segmentation import ClassMap, to_frame


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
        return len(outputs) == 1 and len(outputs[0].shape) == 4

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        if len(spec.shape) not in (3, 4):
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {list(spec.shape)}; expected [N, C, H, W] "
                               "logits")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> ClassMap:
        return ClassMap(to_frame(class_map(the_output(outputs, card)), transform))
