"""What every output layout provides. One instance per layout is registered (edgekit.runtime.registry)."""

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.preprocess import Transform


@dataclass(frozen=True)
class DecodeParams:
    """The post-processing settings a decode uses (the card's, unless a command overrides them)."""

    score_threshold: float = 0.25
    iou_threshold: float = 0.5
    max_detections: int = 100
    agnostic_nms: bool = False

    @classmethod
    def of(cls, card: ModelCard, score_threshold: Optional[float] = None,
           iou_threshold: Optional[float] = None) -> "DecodeParams":
        return cls(card.score_threshold if score_threshold is None else score_threshold,
                   card.iou_threshold if iou_threshold is None else iou_threshold, card.max_detections,
                   card.agnostic_nms)


class Layout:
    name = ""
    task = ""  # the registered task whose result decode() returns
    description = ""
    default = False  # the layout a card of its task gets when it names none
    suppressed = False  # its detections come without duplicates (NMS in the graph, or a set-prediction model)
    params: Mapping[str, Any] = {}  # the card's output.params this layout reads, with their defaults

    def param(self, card: ModelCard, name: str) -> Any:
        return card.layout_params.get(name, self.params[name])

    def check_params(self, params: Mapping[str, Any], where: str) -> None:
        """A one-line error for a parameter this layout does not know or of the wrong kind."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise EdgekitError(f"{where}: unknown parameter(s) {', '.join(unknown)} for layout '{self.name}' "
                               f"(it takes: {known})")
        for key, value in params.items():
            if not _same_kind(value, self.params[key]):
                raise EdgekitError(f"{where}: {key} must be like {self.params[key]!r}, got {value!r}")

    def image(self, outputs: Mapping[str, np.ndarray], index: int) -> Dict[str, np.ndarray]:
        """Image `index` of a batch of raw outputs, as decode() takes them. Layouts whose graphs give outputs
        without a batch axis (torchvision's detectors) override this."""
        return {name: out[index] for name, out in outputs.items()}

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        """Whether a graph with these outputs is in this layout (shapes and names; batch axis first)."""
        raise NotImplementedError

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        """A one-line EdgekitError where the outputs do not fit this layout and the card (class count,
        rank, ...)."""
        raise NotImplementedError

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Any:
        """One image's raw outputs by name (batch axis removed) -> the task's result in frame coordinates."""
        raise NotImplementedError


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return isinstance(value, type(default))
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # numbers: int and float alike


def the_output(outputs: Mapping[str, Any], card: ModelCard) -> Any:
    """The one output of a single-output layout: the card's output name, or the graph's only output."""
    if card.output_name in outputs:
        return outputs[card.output_name]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    raise EdgekitError(f"the model has outputs {', '.join(outputs)}; its card names '{card.output_name}', "
                       "which is none of them")


def the_output_spec(outputs: Sequence[TensorSpec], card: ModelCard) -> TensorSpec:
    return the_output({s.name: s for s in outputs}, card)
