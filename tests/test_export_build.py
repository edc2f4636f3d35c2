"""export and build-engine on CPU through ONNX Runtime, with real files and real sessions."""

import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, run_cli

from edgekit.build.models import checkpoint
from edgekit.build.onnx_io import CARD_KEY, embedded_card
from edgekit.runtime import manifest as mf
from edgekit.runtime.card import ModelCard
from edgekit.runtime.opening import open_engine
from edgekit.runtime.preprocess import preprocess

CLASSES = ["disc", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def det_ckpt(tmp_path_factory):
    card = ModelCard(name="det", task="detection", arch="edgenet-det-s", classes=CLASSES, input_size=(64, 96),
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    folder = tmp_path_factory.mktemp("det")
    checkpoint.save(checkpoint.build(card), card, folder / "det")
    return folder / "det.safetensors"


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory):
    card = ModelCard(name="seg", task="segmentation", arch="edgenet-seg-s", classes=["background", *CLASSES],
                     input_size=(64, 64), resize_mode="stretch")
    folder = tmp_path_factory.mktemp("seg")
    checkpoint.save(checkpoint.build(card), card, folder / "seg")
    return folder / "seg.safetensors"


@pytest.fixture(scope="module")
def det_onnx(det_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "det.onnx"
    r = run_cli("export", str(det_ckpt), "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def calib_dir(tiny_synth):
    return tiny_synth / "images" / "val"


def test_export_embeds_the_card_and_reports_parity(det_onnx, det_ckpt):
    model = onnx.load(str(det_onnx))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    assert embedded_card(model, "x") == checkpoint.load(det_ckpt)[1]
    assert [i.name for i in model.graph.input] == ["images"]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 8, 96 * 64 // 64]  # 4 box values + 4 classes, one anchor per stride-8 cell


def test_export_dynamic_batch_runs_batches(det_ckpt, tmp_path):
    out = tmp_path / "dyn.onnx"
    r = run_cli("export", str(det_ckpt), "-o", str(out), "--dynamic-batch", "4")
    assert r.returncode == 0, r.stderr
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"images": np.zeros((3, 3, 64, 96), np.float32)})[0]
    assert y.shape[0] == 3


def test_export_over_tolerance_writes_nothing(det_ckpt, tmp_path):
    out = tmp_path / "strict.onnx"
    r = run_cli("export", str(det_ckpt), "-o", str(out), "--atol", "0", "--rtol", "0")
    assert_one_line_error(r, "differs from PyTorch", "not written")
    assert list(tmp_path.iterdir()) == []


def test_fp32_engine_matches_the_onnx(det_onnx, tmp_path):
    engine = tmp_path / "det.fp32.onnx"
    r = run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "detection_f1 1.0000" in r.stdout
    opened = open_engine(engine)
    manifest = opened.manifest
    assert manifest.precision == "fp32" and manifest.backend.providers == ["CPUExecutionProvider"]
    assert manifest.onnx.sha256 == mf.file_sha256(det_onnx)
    assert manifest.io.inputs[0] == mf.TensorDescription("images", [1, 3, 64, 96], "float32")
    import onnxruntime as ort

    x, _ = preprocess(np.full((120, 160, 3), 90, np.uint8), opened.card)
    ref = ort.InferenceSession(str(det_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_array_equal(opened.infer(x)["output0"], ref)
    assert opened.backend.last_timing.host_ms > 0


def is_symmetric_int8(model):
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points
    return all(inits[z].data_type == onnx.TensorProto.INT8 and not onnx.numpy_helper.to_array(inits[z]).any()
               for z in zero_points)


def test_int8_writes_the_cpu_engine_and_the_tensorrt_qdq_file(det_onnx, calib_dir, tmp_path):
    engine = tmp_path / "det.int8.onnx"
    r = run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime", "--precision", "int8",
                "--calib", str(calib_dir), "--calib-size", "8", "--calib-method", "percentile")
    assert r.returncode == 0, r.stderr
    assert "kept in higher precision" in r.stdout and "predicts the Jetson INT8 engine" in r.stdout
    manifest = json.loads(mf.path_for(engine).read_text())
    qdq = tmp_path / manifest["files"]["tensorrt_qdq_onnx"]
    assert is_symmetric_int8(onnx.load(str(qdq)))
    u8s8 = onnx.load(str(engine))
    assert any(i.data_type == onnx.TensorProto.UINT8 for i in u8s8.graph.initializer)
    assert manifest["int8"]["method"] == "percentile" and manifest["int8"]["calibration"]["images"] == 6
    assert manifest["int8"]["held_out"]["images"] == 2  # the last 2 of the 8: never calibrated on
    assert "/Softplus" in manifest["int8"]["kept_fp32"]  # box decoding stays in float
    assert embedded_card(u8s8, "x").name == "det"
    y = open_engine(engine).infer(np.zeros((1, 3, 64, 96), np.float32))["output0"]
    assert y.shape == (1, 8, 96)


def test_keep_fp32_by_op_type_is_reported(seg_ckpt, calib_dir, tmp_path):
    onnx_path = tmp_path / "seg.onnx"
    assert run_cli("export", str(seg_ckpt), "-o", str(onnx_path)).returncode == 0
    engine = tmp_path / "seg.int8.onnx"
    r = run_cli("build-engine", str(onnx_path), "-o", str(engine), "--backend", "onnxruntime", "--precision", "int8",
                "--calib", str(calib_dir), "--calib-size", "4", "--keep-fp32", "Resize")
    assert r.returncode == 0, r.stderr
    kept = json.loads(mf.path_for(engine).read_text())["int8"]["kept_reason"]
    assert any(reason == "--keep-fp32 Resize" for reason in kept.values())
    assert "mask_iou" in r.stdout and "pixel agreement" in r.stdout


def test_if_stale_rebuilds_only_on_change(det_onnx, tmp_path):
    engine = tmp_path / "e.onnx"
    args = ("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime", "--if-stale")
    assert run_cli(*args).returncode == 0
    r = run_cli(*args)
    assert r.returncode == 0 and "is up to date" in r.stdout
    changed = tmp_path / "changed.onnx"
    model = onnx.load(str(det_onnx))
    model.doc_string = "edited"
    onnx.save(model, str(changed))
    r = run_cli("build-engine", str(changed), "-o", str(engine), "--backend", "onnxruntime", "--if-stale")
    assert r.returncode == 0 and "up to date" not in r.stdout


def test_foreign_onnx_with_card_flags(det_onnx, tmp_path):
    foreign = tmp_path / "foreign.onnx"
    model = onnx.load(str(det_onnx))
    for p in list(model.metadata_props):
        model.metadata_props.remove(p)
    onnx.save(model, str(foreign))
    r = run_cli("build-engine", str(foreign), "-o", str(tmp_path / "f.onnx"), "--backend", "onnxruntime")
    assert_one_line_error(r, "no model card in the ONNX metadata", "--task, --classes", "--card")
    r = run_cli("build-engine", str(foreign), "-o", str(tmp_path / "f.onnx"), "--backend", "onnxruntime",
                "--task", "detection", "--classes", "a,b,c", "--input-size", "96x64")
    assert_one_line_error(r, "outputs output0 [1, 8, 96] float32 fit no detection layout", "yolov8",
                          "with 3 classes")
    r = run_cli("build-engine", str(foreign), "-o", str(tmp_path / "f.onnx"), "--backend", "onnxruntime",
                "--task", "detection", "--classes", "a,b,c", "--layout", "yolov8")
    assert_one_line_error(r, "a YOLOv8-layout detector with 3 classes has [N, 7, anchors]")
    assert not (tmp_path / "f.onnx").exists()
    r = run_cli("build-engine", str(foreign), "-o", str(tmp_path / "f.onnx"), "--backend", "onnxruntime",
                "--task", "detection", "--classes", ",".join(CLASSES), "--input-size", "96x64", "--name", "yolo")
    assert r.returncode == 0, r.stderr
    card = open_engine(tmp_path / "f.onnx").card
    assert card.arch == "external" and card.classes == CLASSES and card.input_size == (64, 96)
    assert any(p.key == CARD_KEY for p in onnx.load(str(tmp_path / "f.onnx")).metadata_props)


def test_input_unlike_the_card(det_onnx, tmp_path):
    card = tmp_path / "card.yaml"
    c = ModelCard(name="x", task="detection", arch="external", classes=CLASSES, input_size=(128, 128))
    c.save(card)
    r = run_cli("build-engine", str(det_onnx), "-o", str(tmp_path / "x.onnx"), "--backend", "onnxruntime",
                "--card", str(card))
    assert_one_line_error(r, "input 'images' has shape [1, 3, 64, 96]", "[N, 3, 128, 128]")


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"this is not a model", "not an ONNX model or truncated"),
])
def test_not_an_onnx(tmp_path, content, message):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    r = run_cli("build-engine", str(bad), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime")
    assert_one_line_error(r, "bad.onnx", message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_truncated_onnx(det_onnx, tmp_path):
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(det_onnx.read_bytes()[: det_onnx.stat().st_size // 3])
    r = run_cli("build-engine", str(bad), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime")
    assert_one_line_error(r, "cut.onnx", "not an ONNX model or truncated")


def test_an_op_the_backend_cannot_run_is_named(det_onnx, tmp_path):
    model = onnx.load(str(det_onnx))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FancyRelu", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    odd = tmp_path / "odd.onnx"
    onnx.save(model, str(odd))
    r = run_cli("build-engine", str(odd), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime")
    assert_one_line_error(r, "FancyRelu")
    assert not (tmp_path / "e.onnx").exists()


def test_calibration_problems(det_onnx, calib_dir, tmp_path):
    base = ("build-engine", str(det_onnx), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime",
            "--precision", "int8")
    assert_one_line_error(run_cli(*base), "INT8 needs calibration images")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli(*base, "--calib", str(empty)), "calibration folder holds no images")
    broken = tmp_path / "broken"
    shutil.copytree(calib_dir, broken)
    (broken / "000001.jpg").write_bytes(b"\xff\xd8 not really")
    assert_one_line_error(run_cli(*base, "--calib", str(broken)), "000001.jpg: unreadable calibration image")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(calib_dir / "000001.jpg", one)
    assert_one_line_error(run_cli(*base, "--calib", str(one)), "1 image: INT8 holds part of the calibration "
                          "source out", "--val")
    assert not (tmp_path / "e.onnx").exists()
    r = run_cli(*base, "--calib", str(calib_dir), "--calib-size", "50")
    assert r.returncode == 0, r.stderr
    assert "has 8 images; 2 are held out to measure INT8 agreement, leaving 6 to calibrate on, fewer than the " \
           "50 asked" in r.stderr


@pytest.mark.parametrize("flags, message", [
    (("--precision", "fp16"), "fp16 is not offered on the onnxruntime backend"),
    (("--dla-core", "0", "--precision", "int8", "--calib", "x"), "--dla-core needs the tensorrt backend"),
    (("--sparsity",), "--sparsity is a TensorRT feature"),
    (("--precision", "fp8"), "choose one of fp32, fp16, int8, best"),
])
def test_impossible_precisions_and_features(det_onnx, tmp_path, flags, message):
    r = run_cli("build-engine", str(det_onnx), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime", *flags)
    assert_one_line_error(r, message)


def test_unwritable_output_folder(det_onnx, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("build-engine", str(det_onnx), "-o", str(blocker / "e.onnx"), "--backend", "onnxruntime")
    assert_one_line_error(r, "cannot create output folder")


def test_manifest_missing_other_version_or_engine_changed(det_onnx, tmp_path):
    engine = tmp_path / "e.onnx"
    assert run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime").returncode == 0
    from edgekit.errors import EdgekitError

    manifest_path = mf.path_for(engine)
    data = json.loads(manifest_path.read_text())
    data["backend"]["version"] = "0.0.1"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match=r"built with version 0.0.1, this machine has .*; rebuild with: edgekit"):
        open_engine(engine)
    data["schema"] = "edgekit.manifest/0"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match="is not edgekit.manifest/1"):
        open_engine(engine)
    manifest_path.unlink()
    with pytest.raises(EdgekitError, match="no manifest"):
        open_engine(engine)
    assert run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime").returncode == 0
    engine.write_bytes(engine.read_bytes() + b"\0")
    with pytest.raises(EdgekitError, match="the engine file changed since it was built"):
        open_engine(engine)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["engine"].update(bytes="many"), "field 'engine.bytes' must be an integer, got 'many'"),
    (lambda m: m["backend"].update(colour="blue"), "unknown field(s) backend.colour"),
    (lambda m: m.pop("precision"), "missing field precision"),
    (lambda m: m["io"]["inputs"][0].update(shape=None), "field 'io.inputs[0].shape' must be a list, got None"),
    (lambda m: m["card"].update(task="pose"), "task must be one of detection, instance_segmentation, segmentation, "
                                              "not 'pose'"),
    (lambda m: m["int8"] or m.update(int8=[]), "field 'int8' must be a mapping, got []"),
])
def test_an_edited_manifest_is_one_line_naming_the_field(det_onnx, tmp_path, edit, message):
    engine = tmp_path / "e.onnx"
    assert run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime").returncode == 0
    data = json.loads(mf.path_for(engine).read_text())
    edit(data)
    mf.path_for(engine).write_text(json.dumps(data))
    r = run_cli("run-stream", str(engine), "synthetic://?size=96x64&fps=0", "--max-frames", "2", "-o",
                str(tmp_path / "s"))
    assert_one_line_error(r, "e.onnx.manifest.json", message)
    assert not (tmp_path / "s" / "results.jsonl").exists()


def test_manifest_round_trip_keeps_the_file(det_onnx, tmp_path):
    """Reading a manifest into typed records and writing it back gives the same JSON, field order too."""
    engine = tmp_path / "e.onnx"
    assert run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime").returncode == 0
    text = mf.path_for(engine).read_text()
    again = tmp_path / "again.json"
    mf.write(mf.read(engine), again)
    assert json.loads(again.read_text()) == json.loads(text)
    assert list(json.loads(again.read_text())) == list(json.loads(text))


def test_calib_set_picks_frames_from_a_video(tiny_synth, tmp_path):
    out = tmp_path / "calib"
    r = run_cli("calib-set", str(tiny_synth / "videos" / "stream_00.mp4"), "-n", "4", "-o", str(out))
    assert r.returncode == 0, r.stderr
    frames = sorted(out.glob("*.jpg"))
    assert len(frames) == 4 and cv2.imread(str(frames[0])).shape == (120, 160, 3)
    r = run_cli("calib-set", str(tmp_path / "none.mp4"), "-n", "4", "-o", str(tmp_path / "c2"))
    assert_one_line_error(r, "none.mp4: video not found")
