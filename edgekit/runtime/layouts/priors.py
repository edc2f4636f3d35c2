"""Prior-box heads (SSD, RetinaFace): box offsets `loc` [B, priors, 4] to decode against prior boxes generated from
the input size, and class scores `conf` [B, priors, C]; RetinaFace exports add landmarks [B, priors, 10], which
this layout accepts and does not decode.

Priors as biubug6/Pytorch_Retinaface generates them (layers/functions/prior_box.py, `PriorBox`): for each level k a
feature map of ceil(H / steps[k]) x ceil(W / steps[k]) cells, row by row, and on each cell one square prior per
size in min_sizes[k], centred on the cell: (cx, cy, w, h) = ((j + 0.5) * step / W, (i + 0.5) * step / H,
size / W, size / H), clamped to 0..1 where `clip` is set. Boxes are decoded as utils/box_utils.py `decode` does:
centre = prior centre + loc[:2] * variances[0] * prior size, size = prior size * exp(loc[2:] * variances[1]),
fractions of the input, scaled by its width and height to input pixels.

Scores: with `softmax` (default true) softmax over conf's last axis first, for heads that give logits; set it false
for a graph that applies softmax itself, as biubug6's convert_to_onnx.py exports (the model's 'test' phase), and
ssd.pytorch's test phase do (decoding probabilities again is refused, not silently squashed). With `background`
(default true) conf column 0 is the background and columns 1..C-1 are the card's classes; false: all C columns are.
Every (prior, class) over the score threshold is a candidate, as SSD's own `Detect` thresholds and suppresses each
class on its own (for one class, RetinaFace's detect.py: conf[:, 1] > threshold); then NMS per class (or agnostic).

The prior parameters have no universal values. The defaults are RetinaFace's (data/config.py, cfg_mnet and
cfg_re50: min_sizes [[16, 32], [64, 128], [256, 512]], steps [8, 16, 32], variances [0.1, 0.2], clip false), so a
RetinaFace export is recognised without them; any other prior-box model (SSD variants, other face detectors) must
give its own in output.params (`build-engine --layout priors --layout-param min_sizes=... --layout-param
steps=...`). Priors made by other rules (ssd.pytorch's aspect ratios and max sizes) are not generated here.

Recognised by shape: two or three float outputs [B, N, k] with the same N, which must be the prior count of the
card's parameters at its input size (so this layout never claims another's outputs), one with k = 4 (loc), one
with k = the card's class count (+1 with background); where two fit one role (3 classes + background give conf
k = 4, like loc), names saying loc/conf decide, then the heads' order: loc, conf, landmarks.

biubug6's RetinaFace preprocessing (detect.py): BGR 0..255 minus (104, 117, 123), i.e. --channel-order bgr
--mean 0.408 0.459 0.482 --std 0.00392 0.00392 0.00392; it runs at the image's own size, edgekit letterboxes."""

import functools
import itertools
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout
from edgekit.runtime.layouts.shapes import fits, is_float, known
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections, select

Output = Tuple[str, Tuple[Any, ...]]  # name, shape without the batch axis
Sizes = Tuple[Tuple[float, ...], ...]

# Rows of a softmaxed conf sum to 1; an INT8 engine's to within about a percent.
_SOFTMAXED_TOLERANCE = 0.02


def prior_count(input_size: Tuple[int, int], min_sizes: Sequence[Sequence[float]], steps: Sequence[int]) -> int:
    """The number of priors PriorBox makes for an (h, w) input."""
    h, w = input_size
    return sum(math.ceil(h / s) * math.ceil(w / s) * len(sizes) for sizes, s in zip(min_sizes, steps))


@functools.lru_cache(maxsize=8)
def prior_boxes(input_size: Tuple[int, int], min_sizes: Sizes, steps: Tuple[int, ...], clip: bool) -> np.ndarray:
    """[N, 4] (cx, cy, w, h) as fractions of the input, float32, in PriorBox's order: level, cell row, cell
    column, size. Computed in float64 as PriorBox does in Python floats, then float32 as its torch.Tensor."""
    h, w = input_size
    levels = []
    for sizes, step in zip(min_sizes, steps):
        fh, fw = math.ceil(h / step), math.ceil(w / step)
        ys, xs = np.meshgrid(np.arange(fh, dtype=np.float64), np.arange(fw, dtype=np.float64), indexing="ij")
        cells = np.stack([(xs + 0.5) * step / w, (ys + 0.5) * step / h], -1).reshape(-1, 1, 2)
        wh = np.array([[size / w, size / h] for size in sizes], np.float64).reshape(1, -1, 2)
        cells, wh = np.broadcast_arrays(cells, wh)
        levels.append(np.concatenate([cells, wh], -1).reshape(-1, 4))
    priors = np.concatenate(levels).astype(np.float32) if levels else np.zeros((0, 4), np.float32)
    if clip:
        priors = priors.clip(0, 1)
    priors.setflags(write=False)  # shared by every decode through the cache
    return priors


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances: Sequence[float]) -> np.ndarray:
    """box_utils.decode: offsets [N, 4] against priors [N, 4] (cx, cy, w, h) -> x1, y1, x2, y2 as fractions."""
    loc = loc.astype(np.float32)
    centre = priors[:, :2] + loc[:, :2] * np.float32(variances[0]) * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * np.float32(variances[1]))
    top_left = centre - size / 2
    return np.concatenate([top_left, size + top_left], 1)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def roles(outputs: Sequence[Output], conf_columns: int) -> Optional[Dict[str, str]]:
    """Output name by role (loc, conf, and landmarks where there is a third), or None where no assignment fits:
    each output [N, k]; loc has k = 4, conf k = conf_columns, landmarks an even k (10: five points)."""
    if len(outputs) not in (2, 3):
        return None
    best: Optional[Tuple[Output, ...]] = None
    best_hints = -1
    for order in itertools.permutations(outputs):  # graph order first
        k = [o[1][-1] for o in order]
        if not fits(k[0], 4) or not fits(k[1], conf_columns) or (len(order) == 3 and (not known(k[2]) or k[2] % 2)):
            continue
        hints = int("loc" in order[0][0].lower()) + int("conf" in order[1][0].lower())
        if hints > best_hints:
            best, best_hints = order, hints
    if best is None:
        return None
    return dict(zip(("loc", "conf", "landmarks"), (o[0] for o in best)))


def _describe(outputs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"'{o.name}' {list(o.shape)}" for o in outputs)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@register_layout
class Priors(Layout):
    name = "priors"
    task = "detection"
    description = ("prior-box heads (SSD, RetinaFace): loc [B, priors, 4] offsets against priors from "
                   "min_sizes/steps/variances, conf [B, priors, C] (+ landmarks)")
    params = {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variances": [0.1, 0.2],
              "clip": False, "softmax": True, "background": True}

    def check_params(self, params: Mapping[str, Any], where: str) -> None:
        super().check_params(params, where)
        # The base check sees only "a list"; a malformed one would fail later, per frame.
        min_sizes = params.get("min_sizes", self.params["min_sizes"])
        steps = params.get("steps", self.params["steps"])
        variances = params.get("variances", self.params["variances"])
        if not min_sizes or not all(isinstance(sizes, list) and sizes and all(_is_number(s) and s > 0 for s in sizes)
                                    for sizes in min_sizes):
            raise EdgekitError(f"{where}: min_sizes must be one list of positive sizes in pixels per feature map, "
                               f"like [[16, 32], [64, 128], [256, 512]], got {min_sizes!r}")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in steps):
            raise EdgekitError(f"{where}: steps must be positive integers like [8, 16, 32], got {steps!r}")
        if len(steps) != len(min_sizes):
            raise EdgekitError(f"{where}: steps {steps!r} and min_sizes {min_sizes!r} must have one entry per "
                               f"feature map each, got {len(steps)} and {len(min_sizes)}")
        if len(variances) != 2 or not all(_is_number(v) and v > 0 for v in variances):
            raise EdgekitError(f"{where}: variances must be two positive numbers like [0.1, 0.2], got {variances!r}")

    def conf_columns(self, card: ModelCard) -> int:
        return card.num_classes + int(bool(self.param(card, "background")))

    def priors(self, card: ModelCard) -> np.ndarray:
        return prior_boxes(tuple(card.input_size), tuple(tuple(s) for s in self.param(card, "min_sizes")),
                           tuple(self.param(card, "steps")), bool(self.param(card, "clip")))

    def _settings(self, card: ModelCard) -> str:
        h, w = card.input_size
        return (f"min_sizes {self.param(card, 'min_sizes')}, steps {self.param(card, 'steps')} at {w}x{h} give "
                f"{prior_count(card.input_size, self.param(card, 'min_sizes'), self.param(card, 'steps'))}")

    def _problem(self, outputs: Sequence[TensorSpec], card: ModelCard) -> Optional[str]:
        """Why these outputs do not fit this layout and the card, or None where they do."""
        seen = _describe(outputs)
        if len(outputs) not in (2, 3) or not all(is_float(o.dtype) and len(o.shape) == 3 for o in outputs):
            return (f"outputs {seen}; a prior-box detector (SSD, RetinaFace) has two float outputs, loc [N, priors, 4] "
                    "and conf [N, priors, classes] (and RetinaFace's landmarks [N, priors, 10])")
        rows = outputs[0].shape[1]
        if not all(fits(o.shape[1], rows) for o in outputs):
            return f"outputs {seen} differ in their prior count (axis 1); loc and conf have one row per prior"
        count = prior_count(card.input_size, self.param(card, "min_sizes"), self.param(card, "steps"))
        if not fits(rows, count):
            return (f"outputs {seen} have {rows} priors, but {self._settings(card)}: give the model's own "
                    "min_sizes and steps as output.params (--layout-param)")
        columns = self.conf_columns(card)
        if roles([(o.name, tuple(o.shape[1:])) for o in outputs], columns) is None:
            what = ("plus the background (background: true)" if self.param(card, "background")
                    else "(background: false)")
            classes = f"{card.num_classes} class{'' if card.num_classes == 1 else 'es'}"
            return (f"outputs {seen}: the card's {classes} {what} make conf [N, priors, {columns}]; "
                    "no output fits that next to loc [N, priors, 4]")
        if columns == 1 and self.param(card, "softmax"):
            return (f"outputs {seen}: softmax over conf's one column scores every prior 1; set softmax false, or "
                    "background true where column 0 is the background")
        return None

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        return self._problem(outputs, card) is None

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        problem = self._problem(outputs, card)
        if problem is not None:
            raise EdgekitError(f"{source}: {problem}")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Detections:
        arrays = {name: np.asarray(a) for name, a in outputs.items()}
        found: List[Output] = [(n, a.shape) for n, a in arrays.items()]
        role = roles([o for o in found if len(o[1]) == 2], self.conf_columns(card))
        if role is None or len(role) != len(found):
            shapes = ", ".join(f"'{n}' {list(s)}" for n, s in found)
            raise EdgekitError(f"outputs {shapes} (one image's) are not loc [priors, 4] and conf "
                               f"[priors, {self.conf_columns(card)}] of a prior-box detector")
        loc = arrays[role["loc"]].astype(np.float32)
        conf = arrays[role["conf"]].astype(np.float32)
        priors = self.priors(card)
        if len(loc) != len(priors):
            raise EdgekitError(f"outputs '{role['loc']}' and '{role['conf']}' have {len(loc)} priors, but "
                               f"{self._settings(card)}")
        if self.param(card, "softmax"):
            if (len(conf) and conf.min() >= 0 and conf.max() <= 1
                    and float(np.abs(conf.sum(1) - 1).max()) <= _SOFTMAXED_TOLERANCE):
                raise EdgekitError(f"output '{role['conf']}' holds probabilities already (every row sums to 1): the "
                                   "graph applies softmax itself, so the card needs output.params softmax: false")
            conf = softmax(conf)
        scores = conf[:, 1:] if self.param(card, "background") else conf
        rows, classes = np.nonzero(scores > params.score_threshold)
        h, w = card.input_size
        boxes = decode_boxes(loc[rows], priors[rows], self.param(card, "variances"))
        boxes = boxes * np.array([w, h, w, h], np.float32)
        d = select(boxes, scores[rows, classes], classes.astype(np.int64), params)
        d.boxes = transform.boxes_to_source(d.boxes)
        return d
