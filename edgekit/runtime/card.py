"""The model card: what every stage needs to know about a model, written once and carried along.

It travels as YAML beside a checkpoint, as JSON in ONNX metadata_props and in an engine's manifest
(DESIGN.md section 1). This module is runtime-side: it needs no torch; YAML is imported only when a
YAML file is read or written.
"""

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from edgekit.errors import EdgekitError, MissingDependency
from edgekit.runtime import records, registry
from edgekit.runtime.text import printable

RESIZE_MODES = ("letterbox", "stretch")
PAD_PLACEMENTS = ("center", "corner")  # letterbox: image centred, or at the top-left corner (YOLOX)
# What the graph's input takes: the preprocessed [N, 3, H, W] float tensor, or (preprocessing fused into the graph:
# `--fuse-preprocess`) the letterboxed frame as OpenCV gives it, [N, H, W, 3] uint8 BGR, whatever `color` says.
INPUT_FORMATS = ("nchw_float", "nhwc_uint8")
CARD_KEY = "edgekit.card"  # the card as JSON in an ONNX file's metadata_props
# The largest input side a card may give: above it a card is refused before anything is allocated (one
# 100000x100000 input would be 120 GB as float32). Detection and segmentation models run well below it.
MAX_INPUT_SIDE = 8192

# key -> (required, subkeys or None). Subkeys are checked the same way (all required unless listed
# in _OPTIONAL_SUBKEYS).
_SCHEMA: Dict[str, Optional[Tuple[str, ...]]] = {
    "name": None,
    "task": None,
    "arch": None,
    "arch_args": None,
    "classes": None,
    "input": ("name", "shape", "layout", "color", "format"),
    "normalize": ("mean", "std"),
    "resize": ("mode", "pad_value", "pad"),
    "output": ("name", "layout", "params"),
    "postprocess": ("score_threshold", "iou_threshold", "max_detections", "agnostic_nms"),
}
_OPTIONAL_KEYS = ("description", "metrics", "training", "edgekit_version", "pruning", "sparsity", "source")
# Keys added after cards were first written are optional, and written only when they differ from the default,
# so the cards and ONNX files made before them stay as they were.
_OPTIONAL_SUBKEYS = {"postprocess": ("score_threshold", "iou_threshold", "max_detections", "agnostic_nms"),
                     "resize": ("pad",), "output": ("params",), "input": ("format",)}


@dataclass
class ModelCard:
    name: str
    task: str
    arch: str
    classes: List[str]
    input_size: Tuple[int, int]  # (height, width) of the network input
    arch_args: Dict[str, Any] = field(default_factory=dict)
    input_name: str = "images"
    color: str = "RGB"
    mean: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize_mode: str = "letterbox"
    pad_value: int = 114
    pad_placement: str = "center"
    output_name: str = "output0"
    output_layout: str = ""
    layout_params: Dict[str, Any] = field(default_factory=dict)  # what the layout needs beyond the outputs
    score_threshold: float = 0.25
    iou_threshold: float = 0.5
    max_detections: int = 100
    agnostic_nms: bool = False  # one NMS over all classes instead of one per class
    input_format: str = "nchw_float"  # one of INPUT_FORMATS; "nhwc_uint8": preprocessing fused into the graph
    extra: Dict[str, Any] = field(default_factory=dict)  # description, metrics, training, pruning, sparsity, ...

    def __post_init__(self) -> None:
        if not self.output_layout and self.task in registry.task_names():
            self.output_layout = registry.default_layout(self.task)
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_dtype(self) -> str:
        """The numpy dtype name the graph's input takes."""
        return "uint8" if self.input_format == "nhwc_uint8" else "float32"

    def input_shape(self, batch: int = 1) -> Tuple[int, int, int, int]:
        """The graph's input shape for `batch` frames: [N, 3, H, W], or [N, H, W, 3] where preprocessing is fused."""
        h, w = self.input_size
        return (batch, h, w, 3) if self.input_format == "nhwc_uint8" else (batch, 3, h, w)

    def validate(self, source: str = "model card") -> None:
        def bad(msg: str) -> EdgekitError:
            return EdgekitError(f"{source}: {printable(msg)}")  # values quoted from a planted card shown inert

        tasks = registry.task_names()
        if self.task not in tasks:
            raise bad(f"task must be one of {', '.join(tasks)}, not '{self.task}'")
        if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
            raise bad("classes must be a non-empty list of names")
        if len(set(self.classes)) != len(self.classes):
            raise bad("class names must be unique")
        h, w = self.input_size
        if h <= 0 or w <= 0:
            raise bad(f"input shape must be positive, got {h}x{w}")
        if h > MAX_INPUT_SIDE or w > MAX_INPUT_SIDE:
            raise bad(f"input shape {h}x{w} is larger than edgekit takes ({MAX_INPUT_SIDE} pixels a side at most)")
        if self.input_format not in INPUT_FORMATS:
            raise bad(f"input.format must be one of {', '.join(INPUT_FORMATS)}, not '{self.input_format}'")
        if self.color not in ("RGB", "BGR"):
            raise bad(f"input.color must be RGB or BGR, not '{self.color}'")
        if self.resize_mode not in RESIZE_MODES:
            raise bad(f"resize.mode must be one of {', '.join(RESIZE_MODES)}, not '{self.resize_mode}'")
        if self.pad_placement not in PAD_PLACEMENTS:
            raise bad(f"resize.pad must be one of {', '.join(PAD_PLACEMENTS)}, not '{self.pad_placement}'")
        if not 0 <= self.pad_value <= 255:
            raise bad(f"resize.pad_value is a pixel value 0..255, not {self.pad_value}")
        if (len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in (*self.mean, *self.std))
                or any(s <= 0 for s in self.std)):
            raise bad("normalize.mean and normalize.std need 3 finite values each, std > 0")
        # The card normalises 0..1 pixels: (x / 255 - mean) / std. Values on the 0..255 scale (ImageNet's
        # 123.7 / 58.4) would make every input an extreme value, silently.
        if any(not 0 <= m <= 1 for m in self.mean) or any(s > 1 for s in self.std):
            raise bad(f"normalize.mean {list(self.mean)} / std {list(self.std)}: these apply to 0..1 pixels, "
                      "so mean lies in 0..1 and std in (0, 1] (0..255 values divide by 255: 123.7 -> 0.485; "
                      "a model fed raw 0..255 pixels has mean 0 and std 1/255 = 0.00392)")
        fitting = [lay.name for lay in registry.layouts(self.task)]
        if self.output_layout not in fitting:
            raise bad(f"output.layout '{self.output_layout}' does not fit task '{self.task}' (its layouts: "
                      f"{', '.join(fitting)})")
        if not 0 <= self.score_threshold <= 1 or not 0 <= self.iou_threshold <= 1:  # (NaN fails both)
            raise bad("postprocess thresholds must lie in [0, 1]")
        if self.max_detections < 1:
            raise bad(f"postprocess.max_detections must be 1 or more, not {self.max_detections}")
        registry.layout(self.output_layout).check_params(self.layout_params, f"{source}: output.params")

    # --- serialization -------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        h, w = self.input_size
        d: Dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "arch": self.arch,
            "arch_args": dict(self.arch_args),
            "classes": list(self.classes),
            "input": {"name": self.input_name, "shape": list(self.input_shape()),
                      "layout": "NHWC" if self.input_format == "nhwc_uint8" else "NCHW", "color": self.color},
            "normalize": {"mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std]},
            "resize": {"mode": self.resize_mode, "pad_value": int(self.pad_value)},
            "output": {"name": self.output_name, "layout": self.output_layout},
            "postprocess": {
                "score_threshold": float(self.score_threshold),
                "iou_threshold": float(self.iou_threshold),
                "max_detections": int(self.max_detections),
            },
        }
        if self.input_format != "nchw_float":
            d["input"]["format"] = self.input_format
        if self.pad_placement != "center":
            d["resize"]["pad"] = self.pad_placement
        if self.layout_params:
            d["output"]["params"] = copy.deepcopy(self.layout_params)
        if self.agnostic_nms:
            d["postprocess"]["agnostic_nms"] = True
        d.update(copy.deepcopy(self.extra))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "model card") -> "ModelCard":
        """A card from its YAML/JSON form, every key checked for presence and kind: one line naming `source` and
        the key otherwise (quoted values shown printable: a card may come from a planted file)."""
        def fail(msg: str) -> EdgekitError:
            return EdgekitError(f"{source}: {printable(msg)}")

        if not isinstance(d, Mapping):
            raise fail(f"expected a mapping of card keys, got {type(d).__name__}")
        if records.too_deep(dict(d)):
            raise fail(f"not a valid model card (nested more than {records.MAX_DEPTH} deep)")
        unknown = sorted(str(k) for k in set(d) - set(_SCHEMA) - set(_OPTIONAL_KEYS))
        if unknown:
            raise fail(f"unknown key(s) {', '.join(unknown[:5])}" + (" ..." if len(unknown) > 5 else ""))
        missing = sorted(set(_SCHEMA) - set(d))
        if missing:
            raise fail(f"missing key(s) {', '.join(missing)}")
        for key, subkeys in _SCHEMA.items():
            if subkeys is None:
                continue
            sub = d[key]
            if not isinstance(sub, Mapping):
                raise fail(f"'{key}' must be a mapping with keys {', '.join(subkeys)}")
            unknown = sorted(str(k) for k in set(sub) - set(subkeys))
            if unknown:
                raise fail(f"unknown key(s) {', '.join(key + '.' + u for u in unknown[:5])}")
            required = set(subkeys) - set(_OPTIONAL_SUBKEYS.get(key, ()))
            missing = sorted(required - set(sub))
            if missing:
                raise fail(f"missing key(s) {', '.join(key + '.' + m for m in missing)}")
        try:
            inp, norm, resize, out, post = d["input"], d["normalize"], d["resize"], d["output"], d["postprocess"]
            shape = [_integer(v, "input.shape") for v in _list(inp["shape"], "input.shape")]
            fmt = _text(inp.get("format", "nchw_float"), "input.format")
            if fmt not in INPUT_FORMATS:
                raise _Malformed(f"input.format must be one of {', '.join(INPUT_FORMATS)}, not '{fmt}'")
            if fmt == "nhwc_uint8":  # preprocessing fused into the graph: it takes uint8 frames
                if len(shape) != 4 or shape[3] != 3 or inp["layout"] != "NHWC":
                    raise _Malformed(f"input.format nhwc_uint8 needs layout NHWC with 3 channels, got layout "
                                     f"{inp['layout']} shape {shape}")
                shape = [shape[0], shape[3], shape[1], shape[2]]  # as NCHW below
            elif len(shape) != 4 or shape[1] != 3 or inp["layout"] != "NCHW":
                raise _Malformed(f"input must be NCHW with 3 channels, got layout {inp['layout']} shape {shape}")
            return cls(
                name=_text(d["name"], "name"),
                task=_text(d["task"], "task"),
                arch=_text(d["arch"], "arch"),
                arch_args=_mapping(d["arch_args"], "arch_args"),
                classes=[_text(c, "classes") for c in _list(d["classes"], "classes")],
                input_size=(shape[2], shape[3]),
                input_name=_text(inp["name"], "input.name"),
                color=_text(inp["color"], "input.color"),
                mean=tuple(_number(v, "normalize.mean") for v in _list(norm["mean"], "normalize.mean")),  # type: ignore[arg-type]
                std=tuple(_number(v, "normalize.std") for v in _list(norm["std"], "normalize.std")),  # type: ignore[arg-type]
                resize_mode=_text(resize["mode"], "resize.mode"),
                pad_value=_integer(resize["pad_value"], "resize.pad_value"),
                pad_placement=_text(resize.get("pad", "center"), "resize.pad"),
                output_name=_text(out["name"], "output.name"),
                output_layout=_text(out["layout"], "output.layout"),
                layout_params=_mapping(out.get("params"), "output.params"),
                score_threshold=_number(post.get("score_threshold", 0.25), "postprocess.score_threshold"),
                iou_threshold=_number(post.get("iou_threshold", 0.5), "postprocess.iou_threshold"),
                max_detections=_integer(post.get("max_detections", 100), "postprocess.max_detections"),
                agnostic_nms=_flag(post.get("agnostic_nms", False), "postprocess.agnostic_nms"),
                input_format=fmt,
                extra={k: copy.deepcopy(d[k]) for k in _OPTIONAL_KEYS if k in d},
            )
        except _Malformed as e:
            raise fail(str(e)) from None
        except EdgekitError as e:
            if str(e).startswith(source):
                raise
            raise EdgekitError(f"{source}: {e}") from None
        except (TypeError, ValueError, KeyError) as e:  # what the checks above did not foresee
            raise fail(f"malformed value ({e})") from None

    @classmethod
    def from_value(cls, value: Any, source: str) -> "ModelCard":
        """The card inside a typed record (an engine manifest), see records.py."""
        return cls.from_dict(value, source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> "ModelCard":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise EdgekitError(f"{source}: model card is not valid JSON ({e.msg})") from None
        except RecursionError:
            raise EdgekitError(f"{source}: not a valid model card (nested too deeply)") from None
        except ValueError as e:  # an integer of thousands of digits
            raise EdgekitError(f"{source}: model card is not valid JSON ({printable(str(e)[:120])})") from None
        return cls.from_dict(d, source)

    def to_yaml(self) -> str:
        yaml = _yaml()
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def load(cls, path: "str | Path") -> "ModelCard":
        p = Path(path)
        if not p.is_file():
            raise EdgekitError(f"{p}: model card not found")
        yaml = _yaml()
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise EdgekitError(f"{p}: not valid YAML ({printable(str(e).splitlines()[0])})") from None
        except RecursionError:
            raise EdgekitError(f"{p}: not a valid model card (nested too deeply)") from None
        return cls.from_dict(d, str(p))

    def save(self, path: "str | Path") -> Path:
        from edgekit.runtime.artifacts import write_text

        return write_text(path, self.to_yaml())


class _Malformed(ValueError):
    """A card value of the wrong kind (turned into one EdgekitError naming the card)."""


def _text(value: Any, key: str) -> str:
    # YAML reads a bare 2024 or 1.5 as a number: a number is taken as the text it was written as.
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Malformed(f"{key} must be text, got {_kind(value)}")


def _number(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise _Malformed(f"{key} must be a number, got {_kind(value)}")


def _integer(value: Any, key: str) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Malformed(f"{key} must be a whole number, got {_kind(value)}")


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise _Malformed(f"{key} must be true or false, got {_kind(value)}")


def _list(value: Any, key: str) -> List[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise _Malformed(f"{key} must be a list, got {_kind(value)}")


def _mapping(value: Any, key: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    raise _Malformed(f"{key} must be a mapping, got {_kind(value)}")


def _kind(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else type(value).__name__


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise MissingDependency("pyyaml", "build") from None
    return yaml
