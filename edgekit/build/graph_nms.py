"""NMS in the graph (`--nms engine` on export and build-engine): a dense YOLO head's ONNX gets non-maximum
suppression appended, and its card the already-suppressed layout that decodes the result, so run-stream, eval
and profile decode it with no other change. Host-side NMS (edgekit.runtime.tasks.detection.nms) stays the default
and the reference; the appended graph keeps what it keeps.

Two tails, one per runtime family (TENSORRT.md, "In-engine NMS"):

* `onnx` (ONNX Runtime, and TensorRT 8.5+ whose ONNX parser imports NonMaxSuppression as an INMSLayer): the
  ONNX NonMaxSuppression op (onnx.ai operator page; opset 11: center_point_box 1 takes cx, cy, w, h; boxes
  [B, N, 4], scores [B, C, N] -> selected_indices [S, 3] of (batch, class, box)), then a fixed-size
  gather into the `end2end` layout [B, K, 6] (x1, y1, x2, y2, score, class; best first, unused rows zero;
  edgekit/runtime/layouts/end2end.py): the kept scores scattered into a zero [B, N] map (ScatterND), TopK K of
  each image's row, the kept boxes and classes gathered (GatherElements), rows past the last kept box zeroed.
  K = min(card.max_detections, N); the output shape is static, so a TensorRT engine allocates it once.
* `efficient_nms` (TensorRT only): the EfficientNMS_TRT plugin node (NVIDIA/TensorRT
  plugin/efficientNMSPlugin/README.md; box_coding 1 = centre-size in, corners out; background_class -1,
  score_activation 0, class_agnostic from the card), whose four outputs the `efficient_nms` layout decodes.
  ONNX Runtime cannot run it.

Which boxes compete is host NMS's rule: each anchor's best class only (argmax, first on ties, as NumPy's), its
score that class's (YOLOv5: objectness x best class score); per class unless card.agnostic_nms; kept while the
score is above score_threshold, suppressed where IoU exceeds iou_threshold; the best max_detections overall.
Per-class NMS sees the best-class score in that class's row and 0 elsewhere, so an anchor is never kept twice.
The thresholds are constants of the graph: a command may raise the score threshold at decode time (the layout
filters again), but never lower it nor change the IoU threshold.

The NMS tail comes after the last convolution, so the INT8 quantizer leaves it in float (quantize.output_tail)."""

import dataclasses
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.card import ModelCard

MODES = ("host", "engine")
ONNX_NMS = "onnx"  # ONNX NonMaxSuppression + gather -> end2end
EFFICIENT_NMS = "efficient_nms"  # TensorRT's EfficientNMS_TRT plugin -> efficient_nms
HEADS = ("yolov8", "yolov5")  # the dense heads whose outputs this module can suppress
MIN_OPSET = 11  # NonMaxSuppression with center_point_box, ScatterND, GatherElements, TopK with largest/sorted
TOPK_LIMIT = 3840  # TensorRT's largest TopK K (ITopKLayer)
PLUGIN_DOMAIN = "TRT"  # YOLOv7's TRT_NMS writes the plugin node as TRT::EfficientNMS_TRT
END2END_OUTPUT = "output0"  # Ultralytics' name for its nms=True output
EFFICIENT_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise EdgekitError(f"--nms {mode}: choose host (NMS on the host, the default) or engine (NMS in the graph)")
    return mode


def tensorrt_graph(parses_onnx_nms: bool, plugins: Iterable[str]) -> str:
    """Which NMS graph a TensorRT build gets: ONNX_NMS wherever TensorRT's ONNX parser imports NonMaxSuppression
    (8.5 and later, every JetPack edgekit supports: feature-detect with hasattr(trt.INetworkDefinition, "add_nms")),
    else EFFICIENT_NMS where the plugin registry holds EfficientNMS_TRT, else a one-line error.

    The ONNX graph is preferred because it is the one file every stage runs: build-engine resolves the layout,
    calibrates INT8 and measures agreement with FP32 on ONNX Runtime, which cannot run the plugin; one graph means
    one card and one set of results on the CPU and on the Jetson. EfficientNMS_TRT is also deprecated from TensorRT
    10.12 (and absent in 11.x), and its fixed-size outputs bring no advantage here: the ONNX tail's output is
    fixed-size [B, K, 6] too."""
    if parses_onnx_nms:
        return ONNX_NMS
    if "EfficientNMS_TRT" in set(plugins):
        return EFFICIENT_NMS
    raise EdgekitError("--nms engine needs TensorRT 8.5 or later (ONNX NonMaxSuppression) or the EfficientNMS_TRT "
                       "plugin (call trt.init_libnvinfer_plugins first); build with --nms host")


@dataclasses.dataclass
class _Graph:
    """Nodes and constants appended to a model, with unique names under one prefix."""

    model: Any
    prefix: str = "nms/"
    count: int = 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}{what}_{self.count}"

    def const(self, what: str, values: Any, dtype: Any) -> str:
        from onnx import numpy_helper

        name = self.name(what)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, domain: str = "",
           out_names: Optional[Sequence[str]] = None, **attrs: Any) -> Any:
        from onnx import helper

        name = self.name(op_type)
        outs = list(out_names) if out_names else [f"{name}_out{i}" for i in range(outputs)]
        self.model.graph.node.append(helper.make_node(op_type, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs


def opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def check_card(card: ModelCard, source: str) -> None:
    """A one-line error for a model whose card says its outputs are not a head this module can suppress (called
    before anything is exported or built)."""
    layout = card.output_layout
    if card.task != "detection":
        raise EdgekitError(f"{source}: --nms engine applies to detectors; this model's task is {card.task}")
    if registry.layout(layout).suppressed:
        raise EdgekitError(f"{source}: output layout {layout} has no duplicates to suppress (NMS is in the graph "
                           "already or the model is end-to-end); build with --nms host")
    if layout not in HEADS:
        raise EdgekitError(f"{source}: --nms engine handles the dense heads {', '.join(HEADS)}, not output layout "
                           f"{layout}; use --nms host (host NMS decodes it)")
    if card.max_detections > TOPK_LIMIT:
        raise EdgekitError(f"{source}: postprocess.max_detections {card.max_detections} is over {TOPK_LIMIT}, "
                           "TensorRT's largest TopK; lower it in the card for --nms engine")


def _refuse(card: ModelCard, model: Any, source: str) -> None:
    """A one-line error for a graph this module cannot suppress."""
    check_card(card, source)
    if len(model.graph.output) != 1:
        raise EdgekitError(f"{source}: --nms engine needs a detector with one output; this graph has "
                           f"{len(model.graph.output)}")
    if opset(model) < MIN_OPSET:
        raise EdgekitError(f"{source}: --nms engine needs opset {MIN_OPSET} or later (NonMaxSuppression with "
                           f"center_point_box); this graph is opset {opset(model)}: export it again with --opset 17")


def _head_dims(model: Any, card: ModelCard) -> Tuple[Optional[int], int]:
    """(anchors N if static, else None; classes C) of the head output, from shape inference."""
    import onnx

    head = model.graph.output[0]
    dims: List[Any] = []
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        found = {v.name: v for v in list(inferred.graph.output) + list(inferred.graph.value_info)}
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in found[head.name].type.tensor_type.shape.dim]
    except Exception:  # inference fails on some foreign graphs: the anchor count stays unknown (dynamic K)
        dims = []
    anchors = None
    if len(dims) == 3:
        anchors = dims[2] if card.output_layout == "yolov8" else dims[1]
    return anchors, card.num_classes


def _rename_output(model: Any, old: str, new: str) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _candidates(g: _Graph, head: str, layout: str, classes: int) -> Tuple[str, str, str]:
    """(boxes cx, cy, w, h [B, N, 4], best-class score [B, 1, N], best class as float [B, 1, N]) of a head."""
    if layout == "yolov8":  # [B, 4 + C, N]
        boxes = g.op("Transpose", [g.op("Slice", [head, g.const("zero", [0], np.int64), g.const("four", [4], np.int64),
                                                  g.const("axis", [1], np.int64)])], perm=[0, 2, 1])
        cls = g.op("Slice", [head, g.const("four", [4], np.int64), g.const("end", [4 + classes], np.int64),
                             g.const("axis", [1], np.int64)])  # [B, C, N]
        best = g.op("ArgMax", [cls], axis=1, keepdims=1)  # [B, 1, N], the first of equal scores, as np.argmax
        score = g.op("GatherElements", [cls, best], axis=1)
    else:  # yolov5: [B, N, 5 + C], score = objectness x best class score
        boxes = g.op("Slice", [head, g.const("zero", [0], np.int64), g.const("four", [4], np.int64),
                               g.const("axis", [2], np.int64)])
        obj = g.op("Slice", [head, g.const("four", [4], np.int64), g.const("five", [5], np.int64),
                             g.const("axis", [2], np.int64)])  # [B, N, 1]
        cls = g.op("Slice", [head, g.const("five", [5], np.int64), g.const("end", [5 + classes], np.int64),
                             g.const("axis", [2], np.int64)])  # [B, N, C]
        arg = g.op("ArgMax", [cls], axis=2, keepdims=1)  # [B, N, 1]
        prod = g.op("Mul", [g.op("GatherElements", [cls, arg], axis=2), obj])  # obj * cls, as host: same float32
        score = g.op("Transpose", [prod], perm=[0, 2, 1])
        best = g.op("Transpose", [arg], perm=[0, 2, 1])
    best_f = g.op("Cast", [best], to=1)  # float: TensorRT has no int64 tensors; classes are small integers
    return boxes, score, best_f


def _per_class(g: _Graph, score: str, best_f: str, classes: int) -> str:
    """[B, C, N]: each anchor's score in its best class's row, 0 in the others (never kept: thresholds >= 0)."""
    rows = g.const("classes", np.arange(classes, dtype=np.float32).reshape(1, classes, 1), np.float32)
    return g.op("Where", [g.op("Equal", [best_f, rows]), score, g.const("zero_f", [0.0], np.float32)])


def append_onnx_nms(model: Any, card: ModelCard, source: str = "model") -> ModelCard:
    """Append NonMaxSuppression and the gather into the end2end layout to `model` (in place); returns the card
    of the result. One-line errors for what it cannot handle."""
    _refuse(card, model, source)
    from onnx import TensorProto, helper

    anchors, classes = _head_dims(model, card)
    head_out = model.graph.output[0]
    out_name = END2END_OUTPUT
    head = head_out.name
    if head == out_name:  # the end2end output takes the name: the head's tensor gets another
        head = f"{head_out.name}_head"
        _rename_output(model, head_out.name, head)
    g = _Graph(model)
    boxes, score, best_f = _candidates(g, head, card.output_layout, classes)
    nms_scores = score if card.agnostic_nms else _per_class(g, score, best_f, classes)
    k = card.max_detections if anchors is None else min(card.max_detections, anchors)
    selected = g.op("NonMaxSuppression", [boxes, nms_scores, g.const("max_out", [k], np.int64),
                                          g.const("iou", [card.iou_threshold], np.float32),
                                          g.const("score_thr", [card.score_threshold], np.float32)],
                    center_point_box=1)  # [S, 3]: batch, class, box
    score2d = g.op("Reshape", [score, g.const("shape_bn", [0, -1], np.int64)])  # [B, N]
    where = g.op("Gather", [selected, g.const("batch_box", [0, 2], np.int64)], axis=1)  # [S, 2]
    kept = g.op("ScatterND", [g.op("ConstantOfShape", [g.op("Shape", [score2d])],
                                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
                              where, g.op("GatherND", [score2d, where])])  # [B, N]: kept scores, 0 elsewhere
    if anchors is None:  # anchors unknown until run: K = min(max_detections, N) computed in the graph
        n = g.op("Slice", [g.op("Shape", [score2d]), g.const("one", [1], np.int64), g.const("two", [2], np.int64)])
        k_in = g.op("Min", [g.const("k", [k], np.int64), n])
    else:
        k_in = g.const("k", [k], np.int64)
    top, idx = g.op("TopK", [kept, k_in], outputs=2, axis=1, largest=1, sorted=1)  # [B, K] best first
    rows = g.op("Concat", [boxes, g.op("Transpose", [best_f], perm=[0, 2, 1])], axis=2)  # [B, N, 5]
    picked = g.op("GatherElements", [rows, g.op("Tile", [g.op("Reshape", [idx, g.const("shape_bk1", [0, -1, 1],
                                                                                           np.int64)]),
                                                          g.const("repeats", [1, 1, 5], np.int64)])], axis=1)
    part = {what: g.op("Slice", [picked, g.const("start", [a], np.int64), g.const("stop", [b], np.int64),
                                  g.const("axis", [2], np.int64)])
            for what, (a, b) in {"xy": (0, 2), "wh": (2, 4), "cls": (4, 5)}.items()}
    half = g.op("Div", [part["wh"], g.const("two_f", [2.0], np.float32)])  # as cxcywh_to_xyxy: wh / 2, xy -/+ it
    top3 = g.op("Reshape", [top, g.const("shape_bk1", [0, -1, 1], np.int64)])
    valid = g.op("Greater", [top3, g.const("zero_f", [0.0], np.float32)])  # [B, K, 1]
    joined = g.op("Concat", [g.op("Sub", [part["xy"], half]), g.op("Add", [part["xy"], half]), top3, part["cls"]],
                  axis=2)
    g.op("Where", [valid, joined, g.const("zero_f", [0.0], np.float32)], out_names=[out_name])  # unused rows: 0
    model.graph.output.remove(head_out)
    # K is static where the anchor count is known; else it may be below max_detections: a named dynamic axis.
    model.graph.output.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [
        _batch_dim(head_out), k if anchors is not None else "detections", 6]))
    return dataclasses.replace(card, output_layout="end2end", output_name=out_name, layout_params={})


def append_efficient_nms(model: Any, card: ModelCard, source: str = "model") -> ModelCard:
    """Append TensorRT's EfficientNMS_TRT plugin node (TensorRT only) to `model` in place; returns the card of the
    result (layout efficient_nms)."""
    _refuse(card, model, source)
    from onnx import TensorProto, helper

    _, classes = _head_dims(model, card)
    head_out = model.graph.output[0]
    g = _Graph(model)
    boxes, score, best_f = _candidates(g, head_out.name, card.output_layout, classes)
    per_class = _per_class(g, score, best_f, classes)  # one class per anchor, agnostic or not: host's candidates
    scores = g.op("Transpose", [per_class], perm=[0, 2, 1])  # the plugin takes [B, N, C]
    g.op("EfficientNMS_TRT", [boxes, scores], domain=PLUGIN_DOMAIN, out_names=list(EFFICIENT_OUTPUTS),
         plugin_version="1", background_class=-1, max_output_boxes=int(card.max_detections),
         score_threshold=float(card.score_threshold), iou_threshold=float(card.iou_threshold), score_activation=0,
         class_agnostic=int(card.agnostic_nms), box_coding=1)
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    batch, k = _batch_dim(head_out), card.max_detections
    model.graph.output.remove(head_out)
    for name, dtype, shape in zip(EFFICIENT_OUTPUTS, (TensorProto.INT32, TensorProto.FLOAT, TensorProto.FLOAT,
                                                      TensorProto.INT32), ([batch, 1], [batch, k, 4], [batch, k],
                                                                           [batch, k])):
        model.graph.output.append(helper.make_tensor_value_info(name, dtype, shape))
    return dataclasses.replace(card, output_layout="efficient_nms", output_name=EFFICIENT_OUTPUTS[0],
                               layout_params={})


def _batch_dim(value_info: Any) -> Any:
    dims = value_info.type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return dims[0].dim_param if dims and dims[0].dim_param else "batch"


META_KEY = "edgekit.nms"  # metadata_props: what was appended (the card schema has no place for it)


def record(card: ModelCard, flavour: str) -> Dict[str, Any]:
    """What the NMS in the graph was appended to and with which settings (JSON in metadata_props META_KEY)."""
    return {"graph": flavour, "head_layout": card.output_layout, "head_output": card.output_name,
            "score_threshold": float(card.score_threshold), "iou_threshold": float(card.iou_threshold),
            "max_detections": int(card.max_detections), "agnostic": bool(card.agnostic_nms)}


def append_nms(model: Any, card: ModelCard, flavour: str = ONNX_NMS, source: str = "model") -> ModelCard:
    """Append NMS of the given flavour to `model` (in place), embed the new card, check the graph; returns the
    new card."""
    import onnx

    from edgekit.build import onnx_io

    append = {ONNX_NMS: append_onnx_nms, EFFICIENT_NMS: append_efficient_nms}.get(flavour)
    if append is None:
        raise EdgekitError(f"unknown NMS graph '{flavour}' (known: {ONNX_NMS}, {EFFICIENT_NMS})")
    new = append(model, card, source)
    new.validate(f"{source} (with NMS in the graph)")
    onnx_io.set_card(model, new)
    for prop in list(model.metadata_props):
        if prop.key == META_KEY:
            model.metadata_props.remove(prop)
    meta = model.metadata_props.add()
    meta.key, meta.value = META_KEY, json.dumps(record(card, flavour), sort_keys=True)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:  # a bug here, not the user's: say where
        raise EdgekitError(f"{source}: the graph with NMS appended fails the ONNX checker: "
                           f"{str(e).splitlines()[0]}") from None
    return new


def host_agreement(card_head: ModelCard, card_nms: ModelCard, head_outputs: Sequence[Mapping[str, np.ndarray]],
                   nms_outputs: Sequence[Mapping[str, np.ndarray]]) -> Tuple[int, float]:
    """(frames whose detections differ, largest box difference in pixels among those that agree) between host NMS
    on the head's outputs and the appended NMS's outputs, each image of each batch decoded through its card."""
    from edgekit.runtime.measure.evaluate import decoder

    host, graph = decoder(card_head), decoder(card_nms)
    differ, worst = 0, 0.0
    for head, nms in zip(head_outputs, nms_outputs):
        batch = len(next(iter(head.values())))
        for i in range(batch):
            a, b = host(head, i), graph(nms, i)
            same_result, diff = compare_detections(a, b)
            differ += not same_result
            worst = max(worst, diff)
    return differ, worst


def compare_detections(a: Any, b: Any, atol: float = 1e-3) -> Tuple[bool, float]:
    """(whether two Detections hold the same boxes, classes and scores, in any order; largest box difference)."""
    if len(a) != len(b):
        return False, float("inf")
    if len(a) == 0:
        return True, 0.0
    ka = np.lexsort((a.boxes[:, 0], a.classes, -a.scores))
    kb = np.lexsort((b.boxes[:, 0], b.classes, -b.scores))
    diff = float(np.abs(a.boxes[ka] - b.boxes[kb]).max())
    same = (bool(np.array_equal(a.classes[ka], b.classes[kb])) and diff <= atol
            and bool(np.allclose(a.scores[ka], b.scores[kb], atol=1e-6, rtol=0)))
    return same, diff


def check_against_host(card_head: ModelCard, card_nms: ModelCard, head_outputs: Mapping[str, Sequence[np.ndarray]],
                       nms_path: Any, feed: Sequence[np.ndarray], source: str, frames: str) -> None:
    """The appended NMS (the graph in `nms_path`) against host NMS on the head's outputs (`head_outputs`: by name,
    one per input of `feed`); a one-line error where any of the `frames` decodes to other detections."""
    from edgekit.build import onnx_io

    got = onnx_io.run_onnxruntime(nms_path, list(feed))
    heads = [{n: v[i] for n, v in head_outputs.items()} for i in range(len(feed))]
    nms = [{n: v[i] for n, v in got.items()} for i in range(len(feed))]
    differ, _ = host_agreement(card_head, card_nms, heads, nms)
    if differ:
        raise EdgekitError(f"{source}: with NMS in the graph, {differ} of the {len(feed)} {frames} decode to other "
                           "detections than host NMS gives; not written (use --nms host)")


def append_checked(model: Any, path: Any, source: str, feed: Sequence[np.ndarray],
                   head_outputs: Mapping[str, Sequence[np.ndarray]]) -> Any:
    """`edgekit export --nms engine`: append the ONNX NMS to a head that passed parity (the card embedded in
    `model`), write it to `path` and check it against host NMS on the parity inputs `feed` (head_outputs: the
    head's outputs on them, by name, in order). A disagreement is a one-line error (nothing is written)."""
    import onnx

    from edgekit.build import onnx_io

    card = onnx_io.embedded_card(model, source)
    if card is None:
        raise EdgekitError(f"{source}: no model card embedded; cannot append NMS")
    new = append_nms(model, card, ONNX_NMS, source)
    onnx.save(model, str(path))
    check_against_host(card, new, head_outputs, path, feed, source, "parity frames")
    return model
