"""`--nms engine`: NMS appended to a detector's graph (edgekit/build/graph_nms.py) against host NMS, the reference,
with real ONNX Runtime sessions on real frames: the shipped detector exported and built as users do (batch 1 and
2, INT8 too), an Ultralytics YOLOv8n head with 80 classes (dozens of overlapping candidates a frame), a YOLOv5
head, run-stream end to end, the refusals, and the EfficientNMS_TRT graph for TensorRT by its structure."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import ROOT, assert_one_line_error, run_cli, scene_clip

from edgekit.build import graph_nms, onnx_io
from edgekit.build.demo import SHIPPED
from edgekit.build.export import export
from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data.datasets import IMAGE_EXTS, read_image
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import preprocess

FRAMES = sorted(p for p in (ROOT / "calibration" / "synth").rglob("*") if p.suffix.lower() in IMAGE_EXTS)[:12]


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """The shipped detector exported twice, host NMS (dynamic batch, the reference) and `--nms engine`."""
    out = tmp_path_factory.mktemp("engine-nms")
    export(SHIPPED["detection"], out / "host.onnx", dynamic_batch=2)
    r = run_cli("export", str(SHIPPED["detection"]), "-o", str(out / "engine.onnx"), "--nms", "engine",
                "--dynamic-batch", "2")
    assert r.returncode == 0, r.stderr
    assert "NMS in the graph" in r.stdout
    return out


def _session(graph):
    """A session of a file or of serialized bytes."""
    return ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), providers=["CPUExecutionProvider"])


def _decode(card, outputs, index, transform):
    lay = registry.layout(card.output_layout)
    return lay.decode(lay.image(outputs, index), transform, card, DecodeParams.of(card))


def _assert_same(a, b):
    same, diff = graph_nms.compare_detections(a, b)
    assert same, (len(a), len(b), diff, a, b)


def test_the_export_carries_the_end2end_card(det):
    model = onnx.load(str(det / "engine.onnx"))
    onnx.checker.check_model(model)
    card = onnx_io.embedded_card(model, "x")
    assert (card.output_layout, card.output_name) == ("end2end", "output0")
    assert [o.name for o in model.graph.output] == ["output0"]
    dims = [d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", card.max_detections, 6]
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}
    meta = json.loads(onnx_io.metadata(model)[graph_nms.META_KEY])
    assert meta["head_layout"] == "yolov8" and meta["iou_threshold"] == card.iou_threshold


def test_engine_nms_matches_host_nms_on_real_frames_batch_1_and_2(det):
    host, engine = _session(det / "host.onnx"), _session(det / "engine.onnx")
    card_host = onnx_io.embedded_card(onnx.load(str(det / "host.onnx")), "h")
    card_nms = onnx_io.embedded_card(onnx.load(str(det / "engine.onnx")), "e")
    found = 0
    inputs = [preprocess(read_image(f), card_host) for f in FRAMES]
    for x, t in inputs:
        a = _decode(card_host, {"output0": host.run(None, {"images": x})[0]}, 0, t)
        b = _decode(card_nms, {"output0": engine.run(None, {"images": x})[0]}, 0, t)
        _assert_same(a, b)
        found += len(a)
    assert found >= 2 * len(FRAMES)  # real detections were compared, not empty lists
    for (x0, t0), (x1, t1) in zip(inputs[0::2], inputs[1::2]):  # batch 2: each image its own rows
        both = {"output0": engine.run(None, {"images": np.concatenate([x0, x1])})[0]}
        for i, (x, t) in enumerate(((x0, t0), (x1, t1))):
            _assert_same(_decode(card_host, {"output0": host.run(None, {"images": x})[0]}, 0, t),
                         _decode(card_nms, both, i, t))


def test_build_engine_nms_then_run_stream_on_a_video(det, tmp_path):
    """build-engine --nms engine on the host-NMS ONNX, then run-stream over a small video: the same detections
    in results.jsonl as the host-NMS engine writes."""
    video = scene_clip(tmp_path / "clip.mp4")
    results = {}
    for nms in ("host", "engine"):
        engine = tmp_path / f"{nms}.ort.onnx"
        r = run_cli("build-engine", str(det / "host.onnx"), "-o", str(engine), "--backend", "onnxruntime",
                    "--nms", nms)
        assert r.returncode == 0, r.stderr
        out = tmp_path / f"{nms}.stream"
        s = run_cli("run-stream", str(engine), str(video), "-o", str(out), "-q", "--no-video")
        assert s.returncode == 0, s.stderr
        results[nms] = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert "output layout end2end" in r.stdout
    assert len(results["engine"]) == len(results["host"]) == 4
    assert mf_card(tmp_path / "engine.ort.onnx")["output"]["layout"] == "end2end"
    from edgekit.runtime import manifest as mf

    built = mf.read(tmp_path / "engine.ort.onnx")
    assert built.build_flags().nms == "engine" and "--nms engine" in mf.rebuild_command(built, Path("e.onnx"))
    assert sum(len(_dets(f)) for f in results["host"]) > 0
    for h, e in zip(results["host"], results["engine"]):
        key = lambda d: (-round(d["score"], 4), d["class"])  # noqa: E731
        dh, de = sorted(_dets(h), key=key), sorted(_dets(e), key=key)
        assert [d["class"] for d in dh] == [d["class"] for d in de]
        assert np.allclose([d["box"] for d in dh], [d["box"] for d in de], atol=0.11)  # as written: rounded to 0.1 px


def mf_card(engine: Path) -> dict:
    return json.loads(Path(f"{engine}.manifest.json").read_text())["card"]


def _dets(frame: dict) -> list:
    return frame.get("detections", frame.get("result", {}).get("detections", []))


def test_int8_build_keeps_the_nms_in_float(det, tmp_path):
    from edgekit.build.engine_build import BuildOptions, build_engine

    rep = build_engine(det / "host.onnx", tmp_path / "int8.onnx", BuildOptions(
        backend="onnxruntime", precision="int8", calib=str(ROOT / "calibration" / "synth"), calib_size=16,
        val_size=4, nms="engine"))
    assert rep.card.output_layout == "end2end" and rep.agreement["detection_f1"] > 0.8
    for path in (rep.engine, Path(rep.extra_files["tensorrt_qdq_onnx"])):
        model = onnx.load(str(path))
        tail = [n for n in model.graph.node if n.name.startswith("nms/")]
        assert tail and not any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in tail)
        quantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        assert not quantized & {i for n in tail for i in n.input}  # nothing quantized feeds the NMS
    y = _session(rep.engine).run(None, {"images": preprocess(read_image(FRAMES[0]), rep.card)[0]})[0]
    assert y.shape == (1, rep.card.max_detections, 6) and (y[0, :, 4] > 0).sum() > 0


def test_ultralytics_yolov8_head_agrees_per_class_and_agnostic(tmp_path):
    """An Ultralytics YOLOv8n (80 classes, random class biases so that every anchor is a candidate) exported by
    Ultralytics' own exporter: host NMS keeps about 60 boxes a frame out of 336 overlapping ones."""
    pytest.importorskip("ultralytics")
    import os
    import warnings

    import torch

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics import YOLO

    from edgekit.build import describe

    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    with torch.no_grad():
        for seq in yolo.model.model[-1].cv3:
            seq[-1].bias.normal_(0, 1.0)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(yolo.export(format="onnx", imgsz=128, opset=17, simplify=False, verbose=False)).resolve()
    finally:
        os.chdir(cwd)
    card = describe.card_for(onnx.load(str(path)), "y", None, {}, None).card
    assert card.output_layout == "yolov8" and card.num_classes == 80
    host = _session(path)
    found = 0
    for agnostic in (False, True):
        head_card = dataclasses.replace(card, agnostic_nms=agnostic)
        model = onnx.load(str(path))
        nms_card = graph_nms.append_nms(model, head_card)
        engine = _session(model.SerializeToString())
        for f in FRAMES[:6]:
            x, t = preprocess(read_image(f), head_card)
            a = _decode(head_card, {"output0": host.run(None, {"images": x})[0]}, 0, t)
            _assert_same(a, _decode(nms_card, {"output0": engine.run(None, {"images": x})[0]}, 0, t))
            found += len(a)
    assert found > 100


def test_yolov5_head_agrees(tmp_path):
    """A YOLOv5-layout output [1, N, 5 + C] (objectness x best class score), from a graph whose output is fixed
    candidates plus a term of the input."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    n, c, size = 3 * (8 * 8 + 4 * 4 + 2 * 2), 3, 64
    raw = np.concatenate([rng.uniform(8, 56, (1, n, 2)), rng.uniform(6, 30, (1, n, 2)),
                          rng.uniform(0, 1, (1, n, 1 + c))], 2).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
         helper.make_node("Mul", ["m", "tiny"], ["t"]), helper.make_node("Add", ["raw", "t"], ["output0"])],
        "v5", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, n, 5 + c])],
        [numpy_helper.from_array(raw, "raw"), numpy_helper.from_array(np.float32(1e-3), "tiny")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    card = ModelCard(name="v5", task="detection", arch="external", classes=["a", "b", "c"], input_size=(size, size),
                     output_layout="yolov5")
    host = _session(model.SerializeToString())
    nms_card = graph_nms.append_nms(model, card)
    engine = _session(model.SerializeToString())
    x = np.random.default_rng(2).random((1, 3, size, size), dtype=np.float32)
    from edgekit.runtime.preprocess import Transform

    t = Transform.identity(size, size)
    a = _decode(card, {"output0": host.run(None, {"images": x})[0]}, 0, t)
    assert len(a) > 10
    _assert_same(a, _decode(nms_card, {"output0": engine.run(None, {"images": x})[0]}, 0, t))


def test_what_it_cannot_suppress_is_refused_in_one_line(det, tmp_path):
    r = run_cli("build-engine", str(det / "engine.onnx"), "-o", str(tmp_path / "x.onnx"), "--backend",
                "onnxruntime", "--nms", "engine")
    assert_one_line_error(r, "output layout end2end has no duplicates to suppress")
    assert_one_line_error(run_cli("export", str(ROOT / "models" / "segmenter"), "-o", str(tmp_path / "s.onnx"),
                                  "--nms", "engine"), "--nms engine applies to detectors")
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "x.onnx").exists()
    card = ModelCard(name="x", task="detection", arch="external", classes=["a"], input_size=(64, 64),
                     output_layout="yolox")
    with pytest.raises(EdgekitError, match="handles the dense heads yolov8, yolov5, not output layout yolox"):
        graph_nms.check_card(card, "m.onnx")
    with pytest.raises(EdgekitError, match="--nms sideways: choose host"):
        graph_nms.check_mode("sideways")


def test_efficient_nms_graph_for_tensorrt(det):
    """The EfficientNMS_TRT tail (TensorRT only, so checked by structure) and which graph TensorRT gets."""
    model = onnx.load(str(det / "host.onnx"))
    card = onnx_io.embedded_card(model, "h")
    new = graph_nms.append_nms(model, card, graph_nms.EFFICIENT_NMS)  # runs onnx.checker
    node, = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "TRT" and attrs["box_coding"] == 1 and attrs["background_class"] == -1
    assert attrs["score_activation"] == 0 and attrs["class_agnostic"] == 0
    assert attrs["max_output_boxes"] == card.max_detections and attrs["plugin_version"] == b"1"
    assert attrs["iou_threshold"] == pytest.approx(card.iou_threshold)
    assert list(node.output) == ["num_detections", "detection_boxes", "detection_scores", "detection_classes"]
    _, outputs = onnx_io.io_specs(model)
    assert new.output_layout == "efficient_nms"
    assert registry.layout("efficient_nms").recognises(outputs, new)
    registry.layout("efficient_nms").check(outputs, new, "x")
    # The plugin's inputs, as run on ONNX Runtime: boxes [B, N, 4] centre-size, scores [B, N, C] one class a box.
    boxes_scores = _session(strip_plugin(model, node)).run(list(node.input), {
        "images": preprocess(read_image(FRAMES[0]), card)[0]})
    assert boxes_scores[0].shape[2] == 4 and boxes_scores[1].shape[2] == card.num_classes
    assert ((boxes_scores[1] > 0).sum(2) <= 1).all()
    assert graph_nms.tensorrt_graph(True, ["EfficientNMS_TRT"]) == graph_nms.ONNX_NMS
    assert graph_nms.tensorrt_graph(False, ["EfficientNMS_TRT"]) == graph_nms.EFFICIENT_NMS
    with pytest.raises(EdgekitError, match="needs TensorRT 8.5"):
        graph_nms.tensorrt_graph(False, [])


def strip_plugin(model, node) -> bytes:
    """The graph up to the plugin's inputs (ONNX Runtime cannot run the plugin)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.node.remove([n for n in m.graph.node if n.name == node.name][0])
    del m.graph.output[:]
    m.graph.output.extend([onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                           for name in node.input])
    return m.SerializeToString()
