"""Semantic segmentation with the argmax inside the graph (../shared/LAYOUTS.md, row "semantic seg, argmax
in graph": a segmenter exported with ArgMax as its last op): one integer output [B, H, W] or [B, 1, H, W]
holding a class index per pixel, at the input size or a fraction of it.

A class index the card has no name for is an error, not clipped: it means the card lists fewer classes than
the model has (a 150-class ADE20K model described with 21 VOC names), and clipping would colour and score
those pixels as the card's last class without a word."""

from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.layouts.shapes import fits, is_integer, known
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.segmentation import ClassMap

# Heads that skip the final upsampling emit the map at the backbone's output stride.
STRIDES = (1, 2, 4, 8, 16, 32)
MAX_CLASSES = 256  # ClassMap holds uint8 indices






def plausible_size(h: Any, w: Any, card: ModelCard) -> bool:
    """Whether an [h, w] map covers the card's input at one of the usual strides (unknown sizes pass)."""
    if not (known(h) and known(w)):
        return True
    in_h, in_w = card.input_size
    return any(h in (in_h // s, -(-in_h // s)) and w in (in_w // s, -(-in_w // s)) for s in STRIDES)


def spatial(shape: Sequence[Any]) -> Optional[List[Any]]:
    """[H, W] of a [B, H, W] or [B, 1, H, W] output shape; None for any other shape."""
    if len(shape) == 3:
        return list(shape[1:])
    if len(shape) == 4 and fits(shape[1], 1):
        return list(shape[2:])
    return None


def class_indices(output: np.ndarray, card: ModelCard) -> np.ndarray:
    """One image's [H, W] or [1, H, W] class indices -> uint8 [H, W], refusing an index the card lacks."""
    indices = output.reshape(output.shape[-2:])
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= card.num_classes:
        bad = hi if hi >= card.num_classes else lo
        raise EdgekitError(f"the model's output holds class index {bad}, but the card has {card.num_classes} classes "
                           f"(0..{card.num_classes - 1}); list every class the model predicts, in its order "
                           "(--classes or the card's classes)")
    return indices.astype(np.uint8)


@register_layout
class Argmax(Layout):
    name = "argmax"
    task = "segmentation"
    description = "semantic segmentation class indices computed in the graph, integer [B, H, W] or [B, 1, H, W]"

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        if len(outputs) != 1 or not is_integer(outputs[0].dtype):
            return False
        hw = spatial(outputs[0].shape)
        return hw is not None and plausible_size(hw[0], hw[1], card)

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        shape = list(spec.shape)
        hw = spatial(shape)
        in_h, in_w = card.input_size
        if hw is None:
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {shape}; the argmax layout expects class "
                               "indices [N, H, W] or [N, 1, H, W] (logits [N, C, H, W] take layout 'logits')")
        if not is_integer(spec.dtype):
            raise EdgekitError(f"{source}: output '{spec.name}' is {spec.dtype}; the argmax layout expects integer "
                               "class indices (float scores take layout 'logits' or 'binary')")
        if not plausible_size(hw[0], hw[1], card):
            raise EdgekitError(f"{source}: output '{spec.name}' is {hw[0]}x{hw[1]}, which does not cover the card's "
                               f"{in_h}x{in_w} input at a stride of {', '.join(map(str, STRIDES))}; is the card's "
                               "input size the one the model was exported at?")
        if card.num_classes > MAX_CLASSES:
            raise EdgekitError(f"{source}: the card has {card.num_classes} classes; segmentation results hold at "
                               f"most {MAX_CLASSES}")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> ClassMap:
        classes = class_indices(the_output(outputs, card), card)
        return ClassMap.at_model(classes, transform, card.input_size)
