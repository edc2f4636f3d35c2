"""INT8 that keeps accuracy: agreement with FP32 measured on frames never calibrated on, reported with the figures
that show what F1 or pixel agreement alone hides, the tensors ranked by the noise their quantization adds, and
the accuracy-budget search that takes the most sensitive groups out of INT8."""

import json
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import assert_one_line_error, run_cli

from edgekit.build.int8_search import remove_qdq
from edgekit.build.onnx_io import embedded_card
from edgekit.errors import EdgekitError
from edgekit.runtime import calibration
from edgekit.runtime import manifest as mf
from edgekit.runtime.card import ModelCard
from edgekit.runtime.tasks.detection import Detections, MatchFidelity
from edgekit.runtime.tasks.segmentation import ClassMap, MapFidelity


def dets(boxes, scores, classes=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.zeros(len(boxes), np.int64) if classes is None else np.asarray(classes, np.int64)
    return Detections(boxes, np.asarray(scores, np.float32), classes)


def test_detection_fidelity_is_pooled_and_shows_score_compression():
    """F1 over all frames' boxes (not a mean of per-frame F1s), with matched boxes' IoU and score difference:
    an INT8 head that caps every score at 0.5 keeps F1 1.0 at a 0.25 threshold, and the score figure shows it."""
    f = MatchFidelity()
    ref = dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.85])
    f.add(ref, dets([[0, 0, 10, 10], [20, 20, 40, 40]], [0.5, 0.5]))  # scores capped at sigmoid(0)
    f.add(dets([], []), dets([], []))  # an empty frame adds no box: pooled F1 is not lifted by it
    f.add(dets([[0, 0, 10, 10]], [0.6]), dets([[50, 50, 60, 60]], [0.6]))  # a box moved away: 1 FN + 1 FP
    s = f.summary()
    assert s["frames"] == 3 and s["reference_count"] == 3 and s["count"] == 3 and s["matched"] == 2
    assert s["detection_f1"] == pytest.approx(2 * 2 / 6, abs=1e-4)  # a per-frame mean would say (1 + 1 + 0) / 3
    assert s["mean_score_diff"] == pytest.approx((0.4 + 0.35) / 2, abs=1e-4)
    assert s["max_score_diff"] == pytest.approx(0.4, abs=1e-4)
    assert s["mean_box_iou"] == 1.0


def test_segmentation_fidelity_shows_a_thin_class_that_pixel_agreement_hides():
    """A text mask that lost its edges on a mostly white page: 99% of pixels agree, text IoU is far lower."""
    card = ModelCard(name="dbnet", task="segmentation", arch="", classes=["background", "text"],
                     input_size=(100, 100), output_layout="binary")
    ref = np.zeros((100, 100), np.uint8)
    ref[40:50, 10:90] = 1  # 800 text pixels
    got = np.zeros_like(ref)
    got[41:49, 10:90] = 1  # 640 of them: IoU 0.8
    f = MapFidelity(card)
    f.add(ClassMap(ref), ClassMap(got))
    s = f.summary()
    assert s["pixel_agreement"] == pytest.approx(1 - 160 / 10000, abs=1e-4)
    assert s["per_class_iou"]["text"] == pytest.approx(0.8, abs=1e-4)
    assert s["mask_iou"] == pytest.approx((0.8 + 9200 / 9360) / 2, abs=1e-4)


def images(folder, n, grey=False):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (24, 32) if grey else (24, 32, 3), np.uint8)
        cv2.imwrite(str(folder / f"f{i:03d}.png"), img)
    return folder


def test_held_out_split_takes_the_end_of_the_source(tmp_path, tiny_synth, capsys):
    calib, held = calibration.held_out_split(images(tmp_path / "a", 10), 200, 50)
    assert [f.name for f in calib.files] == [f"f{i:03d}.png" for i in range(8)]
    assert [f.name for f in held.files] == ["f008.png", "f009.png"]  # the end: no neighbour of a calibration frame
    assert "10 images; 2 are held out to measure INT8 agreement, leaving 8 to calibrate on, fewer than the 200 " \
           "asked" in capsys.readouterr().err
    calib, held = calibration.held_out_split(tmp_path / "a", 4, 1)  # sizes spread over each part
    assert len(calib) == 4 and len(held) == 1 and not set(calib.files) & set(held.files)
    assert not capsys.readouterr().err
    video = tiny_synth / "videos" / "stream_00.mp4"  # 6 frames: 5 calibrate, the last one is held out
    calib, held = calibration.held_out_split(video, 200, 50)
    assert calib.indices == (0, 1, 2, 3, 4) and held.indices == (5,)
    assert "6 frames; 1 is held out" in capsys.readouterr().err
    with pytest.raises(EdgekitError, match="1 image: INT8 holds part of the calibration source out"):
        calibration.held_out_split(images(tmp_path / "one", 1), 200, 50)


def test_grayscale_images_are_used_as_colour(tmp_path, capsys):
    calib = calibration.load(images(tmp_path / "g", 2, grey=True), 10)
    frames = list(calib)
    assert all(f.shape == (24, 32, 3) and (f[..., 0] == f[..., 2]).all() for f in frames)
    assert "2 of the 2 calibration images of" in capsys.readouterr().err


@pytest.fixture(scope="module")
def det_onnx(tmp_path_factory):
    from edgekit.build.demo import SHIPPED
    from edgekit.build.export import export

    return export(SHIPPED["detection"], tmp_path_factory.mktemp("det") / "det.onnx").path


def test_int8_agreement_is_measured_on_held_out_frames(det_onnx, tiny_synth, tmp_path):
    calib = tiny_synth / "images" / "train"  # 24 images: 19 calibrate, the last 5 judge
    engine = tmp_path / "e.onnx"
    r = run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime", "--precision", "int8",
                "--calib", str(calib))
    assert r.returncode == 0, r.stderr
    m = json.loads(mf.path_for(engine).read_text())
    assert m["int8"]["calibration"]["images"] == 19 and m["int8"]["held_out"]["images"] == 5
    a = m["agreement"]
    assert a["frames"] == 5 and "the end of --calib, held out of calibration" in a["source"]
    for figures in (a, a["tensorrt_qdq_predicted"]):
        assert 0 <= figures["mean_score_diff"] <= figures["max_score_diff"] <= 1
        assert figures["matched"] <= figures["reference_count"]
    assert "agreement with FP32 on 5 images from" in r.stdout and "mean |score diff|" in r.stdout
    ranked = m["int8"]["sensitivity"]
    assert len(ranked) > 10 and [t["sqnr_db"] for t in ranked] == sorted(t["sqnr_db"] for t in ranked)
    assert "noisiest INT8 tensors" in r.stdout
    # --val: judged there instead; the same images as --calib (or some of them) are refused
    r = run_cli("build-engine", str(det_onnx), "-o", str(tmp_path / "v.onnx"), "--backend", "onnxruntime",
                "--precision", "int8", "--calib", str(calib), "--val", str(tiny_synth / "images" / "val"))
    assert r.returncode == 0, r.stderr
    m = json.loads(mf.path_for(tmp_path / "v.onnx").read_text())
    assert m["int8"]["calibration"]["images"] == 24 and m["agreement"]["frames"] == 8
    assert "--val" in m["agreement"]["source"] and "--val" in mf.rebuild_command(mf.read(tmp_path / "v.onnx"),
                                                                                   tmp_path / "v.onnx")
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_synth / "images" / "val", mixed)
    shutil.copy(next(calib.glob("*.jpg")), mixed / "zz.jpg")
    base = ("build-engine", str(det_onnx), "-o", str(tmp_path / "x.onnx"), "--backend", "onnxruntime")
    assert_one_line_error(run_cli(*base, "--precision", "int8", "--calib", str(calib), "--calib-size", "24",
                                  "--val", str(mixed)),
                          "holds images that are also the calibration images")
    assert_one_line_error(run_cli(*base, "--accuracy-budget", "1"), "--accuracy-budget applies to INT8")
    assert not (tmp_path / "x.onnx").exists()


def test_accuracy_budget_search_writes_the_step_it_reports(tmp_path):
    """The shipped segmenter loses about 0.8 points of class-mask IoU in INT8 on held-out scenes; a budget of 0.5
    needs a few of its groups in floating point. The search ranks the network's groups by what taking them out
    of INT8 buys, takes the most sensitive out until both INT8 files are within the budget, and the files it
    leaves behind are the ones its report describes."""
    from edgekit.build.demo import CALIBRATION, SHIPPED
    from edgekit.build.export import export

    seg = export(SHIPPED["segmentation"], tmp_path / "seg.onnx").path
    engine = tmp_path / "b.onnx"
    r = run_cli("build-engine", str(seg), "-o", str(engine), "--backend", "onnxruntime", "--precision", "int8",
                "--calib", str(CALIBRATION), "--calib-size", "16", "--accuracy-budget", "0.5")
    assert r.returncode == 0, r.stderr
    m = json.loads(mf.path_for(engine).read_text())
    b = m["int8"]["budget"]
    assert b["budget_points"] == 0.5 and b["measure"] == "mask_iou" and len(b["groups"]) >= 8
    assert [g["gain"] for g in b["groups"]] == sorted((g["gain"] for g in b["groups"]), reverse=True)
    steps = {s["groups_in_float"]: s for s in b["steps"]}
    assert 100 * (1 - min(steps[0]["agreement"].values())) > 0.5  # INT8 as is misses the budget
    chosen = steps[len(b["groups_in_float"])]
    assert b["met"] and 0 < len(b["groups_in_float"]) < len(b["groups"]) and b["points_lost"] <= 0.5
    # What was written is what the chosen step measured: its agreement is the build's agreement.
    assert chosen["agreement"]["onnxruntime_u8s8_onnx"] == m["agreement"]["mask_iou"]
    assert chosen["agreement"]["tensorrt_qdq_onnx"] == m["agreement"]["tensorrt_qdq_predicted"]["mask_iou"]
    qdq = onnx.load(str(engine) + ".trt-qdq.onnx")
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & set(b["tensors_in_float"]) and quantized
    assert chosen["latency_vs_fp32"] > 0 and "accuracy budget 0.5 points of mask_iou" in r.stdout
    assert f"met: {b['points_lost']:.2f} points lost with {len(b['groups_in_float'])} groups in float" in r.stdout


def test_remove_qdq_gives_a_valid_graph_without_those_pairs(det_onnx, tiny_synth, tmp_path):
    from edgekit.build.quantize import quantize
    from edgekit.runtime.preprocess import preprocess

    card = embedded_card(onnx.load(str(det_onnx)), "det.onnx")
    frames = [preprocess(f, card)[0] for f in calibration.load(tiny_synth / "images" / "val", 4)]
    qdq_path = tmp_path / "q.onnx"
    quantize(det_onnx, card.input_name, frames, qdq_path, None)
    model = onnx.load(str(qdq_path))
    pairs = [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert remove_qdq(model, pairs[:3]) == 3
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == len(pairs) - 3
    assert not {i for n in model.graph.node for i in n.input} & set(pairs[:3]) - {n.input[0] for n in model.graph.node}
    onnx.checker.check_model(model)
    x = frames[0]
    outputs = {}
    for name, m in (("fp32", onnx.load(str(det_onnx))), ("qdq", onnx.load(str(qdq_path))), ("some", model)):
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs[name] = s.run(None, {card.input_name: x})[0]
    assert not np.array_equal(outputs["some"], outputs["qdq"])
    # Every activation pair off, with the FP32 graph's weights: the FP32 graph again, no DequantizeLinear left.
    weights = {t.name: t for t in onnx.load(str(det_onnx)).graph.initializer}
    model = onnx.load(str(qdq_path))
    assert remove_qdq(model, pairs, weights) == len(pairs)
    assert not any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(s.run(None, {card.input_name: x})[0], outputs["fp32"], atol=1e-4)


def test_each_sub_folder_is_held_out_on_its_own_and_a_spread_is_named(tmp_path):
    """One sub-folder per camera: the end of each is held out (not just the last camera), and agreement that
    differs strongly between them is a warning naming the worst."""
    from edgekit.build.engine_build import source_spread_warning

    root = tmp_path / "cams"
    root.mkdir()
    images(root / "gate", 5)
    images(root / "yard", 5)
    calib, held = calibration.held_out_split(root, 200, 50)
    assert [f"{f.parent.name}/{f.name}" for f in held.files] == ["gate/f004.png", "yard/f004.png"]
    assert len(calib) == 8 and not set(calib.files) & set(held.files)
    warning = source_spread_warning({"by_source": {"gate": 0.99, "yard": 0.9}}, "detection_f1")
    assert "varies across the held-out sources by 9.0 points" in warning and "like yard too" in warning
    assert source_spread_warning({"by_source": {"gate": 0.99, "yard": 0.97}}, "detection_f1") is None
