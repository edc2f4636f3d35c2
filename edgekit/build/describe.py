"""The model card of an ONNX that build-engine is given: edgekit's own (in the metadata), what Ultralytics'
exporter wrote there, a --card YAML, or flags; flags override whatever the file says. Then the graph is made
to fit the card (a dynamic input fixed to the card's size), run once to see its real outputs, and those
outputs recognised as one of the registered layouts of the card's task, or refused in one line."""

import ast
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.build import onnx_io
from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard

# Ultralytics' `task` metadata -> edgekit's task; what is not listed is refused with what edgekit supports.
ULTRALYTICS_TASKS = {"detect": "detection", "segment": "instance_segmentation"}


@dataclasses.dataclass
class Described:
    card: ModelCard
    layout_given: bool  # the layout came from the card or --layout, not from recognising the outputs
    source: str  # where the card came from, for messages: "edgekit metadata", "Ultralytics metadata", ...
    pending_params: Optional[Dict[str, Any]] = None  # --layout-param given without --layout


def card_for(model: Any, source: str, card_file: Optional[str], overrides: Mapping[str, Any],
             layout: Optional[str]) -> Described:
    """The card for `model`: a --card YAML, else edgekit's or Ultralytics' metadata, else flags alone;
    `overrides` (ModelCard fields from flags) win over all of them; `layout` forces the output layout."""
    inputs, outputs = onnx_io.io_specs(model)
    if len(inputs) != 1:
        raise EdgekitError(f"{source}: expected one image input, the graph has {len(inputs)} "
                           f"({', '.join(i.name for i in inputs)})")
    graph_in = inputs[0]
    base: Optional[ModelCard] = None
    origin, layout_given = "flags", layout is not None
    if card_file:
        base, origin, layout_given = ModelCard.load(card_file), f"card {card_file}", True
    else:
        base = onnx_io.embedded_card(model, source)
        if base is not None:
            origin, layout_given = "edgekit metadata", True
        else:
            base = ultralytics_card(onnx_io.metadata(model), graph_in, source)
            if base is not None:
                origin = "Ultralytics metadata"
                layout_given = layout_given or base.output_layout != registry.default_layout(base.task)
    fields = dict(overrides)
    if layout:
        fields["output_layout"] = layout
    elif base is not None and fields.get("task", base.task) != base.task:  # another task: recognise its layout
        fields["output_layout"], fields["layout_params"], layout_given = "", fields.get("layout_params", {}), False
    # Parameters belong to a layout: without one known, they wait until the outputs have been recognised.
    pending = fields.pop("layout_params", None) if not layout_given else None
    if base is None:
        missing = [flag for flag, key in (("--task", "task"), ("--classes", "classes"), ("--input-size", "input_size"))
                   if key not in fields and not (key == "input_size" and _static_hw(graph_in))]
        if missing:
            raise EdgekitError(f"{source}: no model card in the ONNX metadata (neither edgekit's nor Ultralytics'); "
                               f"describe the model with {', '.join(missing)} (and --mean/--std, --resize, "
                               "--channel-order as it was trained) or --card CARD.yaml")
        fields.setdefault("input_size", _static_hw(graph_in))
        fields.setdefault("name", Path(source).stem)
        fields.setdefault("input_name", graph_in.name)
        fields.setdefault("output_name", outputs[0].name)
        card = ModelCard(arch="external", **fields)
    else:
        if "input_name" not in fields and base.input_name != graph_in.name and origin != "edgekit metadata":
            fields["input_name"] = graph_in.name
        if not layout_given:  # the file's parameters belong to its layout, which is recognised again
            fields["layout_params"] = {}
        card = dataclasses.replace(base, **fields)
    if card.input_name != graph_in.name:
        raise EdgekitError(f"{source}: the graph's input is '{graph_in.name}', the card says '{card.input_name}'")
    _check_input(graph_in, card, source)
    return Described(card, layout_given, origin, pending)


def ultralytics_card(meta: Mapping[str, str], graph_in: TensorSpec, source: str) -> Optional[ModelCard]:
    """The card an Ultralytics export describes in its metadata_props (LAYOUTS.md: every value is
    str(python value); `names` is a dict with int keys in no particular order)."""
    if meta.get("author") != "Ultralytics" or "names" not in meta:
        return None
    where = f"{source} (Ultralytics metadata)"

    def value(key: str, default: Any = None) -> Any:
        if key not in meta:
            return default
        try:
            return ast.literal_eval(meta[key])
        except (ValueError, SyntaxError):
            raise EdgekitError(f"{where}: '{key}' is not a Python literal: {meta[key][:60]!r}") from None

    kind = meta.get("task", "detect")
    if kind not in ULTRALYTICS_TASKS:
        known = ", ".join(f"{k} ({v})" for k, v in ULTRALYTICS_TASKS.items())
        raise EdgekitError(f"{where}: an Ultralytics '{kind}' model; edgekit runs {known} exports so far")
    names = value("names")
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
        raise EdgekitError(f"{where}: 'names' must map 0..N-1 to class names, got {meta['names'][:80]!r}")
    imgsz = value("imgsz") or _static_hw(graph_in)
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    if not imgsz:
        raise EdgekitError(f"{where}: no imgsz and a dynamic input; pass --input-size WxH")
    # Ultralytics' preprocessing (LAYOUTS.md): RGB, /255, no mean/std, letterbox centred, pad 114; RT-DETR
    # stretches without padding. What the metadata says of the head settles layouts whose outputs look alike
    # (a 2-class RT-DETR and an end-to-end export are both [B, 300, 6]).
    description = str(meta.get("description", "")).split(" model trained on")[0].replace("Ultralytics ", "")
    args = value("args", {}) or {}
    rtdetr = "rtdetr" in description.lower().replace("-", "")
    layout = "rtdetr" if rtdetr else ("end2end" if value("end2end") is True or args.get("nms") is True else "")
    return ModelCard(
        name=Path(source).stem, task=ULTRALYTICS_TASKS[kind], arch="external", classes=[str(names[i]) for i in
                                                                                           range(len(names))],
        input_size=(int(imgsz[0]), int(imgsz[1])), input_name=graph_in.name, color="RGB", mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), resize_mode="stretch" if rtdetr else "letterbox", pad_value=114, iou_threshold=0.7,
        output_layout=layout,
        extra={"description": f"{description} (Ultralytics {meta.get('version', '?')} export, stride "
                              f"{meta.get('stride', '?')})"},
    )


def _static_hw(spec: TensorSpec) -> Optional[Tuple[int, int]]:
    h, w = (list(spec.shape) + [None, None, None, None])[2:4]
    return (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None


def _check_input(spec: TensorSpec, card: ModelCard, source: str) -> None:
    shape = list(spec.shape)
    h, w = card.input_size
    if card.input_format == "nhwc_uint8":  # preprocessing fused into the graph (edgekit --fuse-preprocess)
        if len(shape) != 4 or spec.dtype != "uint8" or any(isinstance(d, int) and d > 0 and d != want
                                                             for d, want in zip(shape[1:], (h, w, 3))):
            raise EdgekitError(f"{source}: input '{spec.name}' is {shape} {spec.dtype}; the card says its "
                               f"preprocessing is fused: [N, {h}, {w}, 3] uint8")
        return
    if len(shape) == 3 and shape[0] == 3:
        raise EdgekitError(f"{source}: input '{spec.name}' is one image without a batch axis {shape} (torchvision's "
                           "detectors exported from a list of images); export with a batch instead: "
                           "torch.onnx.export(model, (torch.rand(1, 3, H, W),), ...)")
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise EdgekitError(f"{source}: input '{spec.name}' has shape {shape}; edgekit runs image models with an "
                           "NCHW input of 3 channels")
    for axis, want, what in ((2, h, "height"), (3, w, "width")):
        if isinstance(shape[axis], int) and shape[axis] > 0 and shape[axis] != want:
            raise EdgekitError(f"{source}: input '{spec.name}' has shape {shape}, the card says NCHW [N, 3, {h}, {w}]"
                               f" (its {what} is fixed at {shape[axis]}; pass --input-size {shape[3]}x{shape[2]})")


def fix_input_shape(model: Any, card: ModelCard, max_batch: int) -> List[str]:
    """Give a dynamic input the card's height and width (and batch 1 unless --max-batch asks for more), in
    place; returns what was fixed, e.g. ['height 640', 'width 640']."""
    inputs, _ = onnx_io.io_names(model)
    dims = inputs[0].type.tensor_type.shape.dim
    h, w = card.input_size
    fixed = []
    hw_axes = (1, 2) if card.input_format == "nhwc_uint8" else (2, 3)
    for axis, value, what in ((0, 1, "batch"), (hw_axes[0], h, "height"), (hw_axes[1], w, "width")):
        d = dims[axis]
        if d.HasField("dim_value") and d.dim_value > 0:
            continue
        if axis == 0 and max_batch > 1:
            continue  # stays dynamic: the engine takes batches up to --max-batch
        d.Clear()
        d.dim_value = value
        fixed.append(f"{what} {value}")
    return fixed


def run_outputs(onnx_file: Path, card: ModelCard, source: str, fixed: Sequence[str] = ()) -> List[TensorSpec]:
    """The graph's outputs as ONNX Runtime gives them for one image of the card's size: real shapes and
    dtypes to recognise a layout by (and proof that the graph takes that size)."""
    import onnxruntime as ort

    def first_line(e: Exception) -> str:
        text = str(e).replace(str(onnx_file), source).strip()
        return text.splitlines()[0] if text else type(e).__name__

    try:
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own error types (unknown op, bad graph)
        hint = (f"; the dynamic input was given {', '.join(fixed)}, which the graph may not take: pass the size it "
                "was exported for with --input-size WxH") if fixed else ""
        raise EdgekitError(f"{source}: ONNX Runtime cannot load it: {first_line(e)[:240]}{hint}") from None
    try:
        outs = session.run(None, {card.input_name: np.zeros(card.input_shape(), card.input_dtype)})
    except Exception as e:  # a graph whose shapes do not work at this input size
        shown = "x".join(map(str, card.input_shape()))
        raise EdgekitError(f"{source}: the graph cannot run on a {shown} input ({first_line(e)[:200]}); pass "
                           "the size it was trained for with --input-size WxH") from None
    return [TensorSpec(o.name, tuple(int(d) for d in a.shape), a.dtype.name)
            for o, a in zip(session.get_outputs(), outs)]


def resolve_layout(described: Described, outputs: List[TensorSpec], source: str) -> ModelCard:
    """The card with the layout its outputs are in: the given one, checked, or the one registered layout
    of the task that recognises them (with the --layout-param values given, where that layout takes them)."""
    card = described.card
    if not described.layout_given:
        params = described.pending_params or {}
        fitting = []
        for lay in registry.layouts(card.task):
            try:
                lay.check_params(params, source)
            except EdgekitError:
                continue  # parameters of another layout
            trial = dataclasses.replace(card, output_layout=lay.name, layout_params=dict(params))
            if lay.recognises(outputs, trial):
                fitting.append(trial)
        if len(fitting) != 1:
            seen = ", ".join(f"{o.name} {list(o.shape)} {o.dtype}" for o in outputs)
            known = ", ".join(lay.name for lay in registry.layouts(card.task))
            if not fitting:
                raise EdgekitError(f"{source}: outputs {seen} fit no {card.task} layout edgekit knows ({known}) with "
                                   f"{card.num_classes} classes" + (f" and output.params {params}" if params else "") +
                                   "; check --classes, or force one with --layout NAME (edgekit layouts describes "
                                   "them)")
            raise EdgekitError(f"{source}: outputs {seen} fit the layouts "
                               f"{', '.join(c.output_layout for c in fitting)}; choose one with --layout NAME")
        card = fitting[0]
    registry.layout(card.output_layout).check(outputs, card, source)
    return card
