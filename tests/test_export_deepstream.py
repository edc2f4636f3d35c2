"""export-deepstream: engines built as users build them, written out for DeepStream's nvinfer and parsed back the way
nvinfer reads its key file. No DeepStream runs here: the checks are what a user would notice in the folder (files the
config names exist, labels, precision, batch, the card's normalisation on a pixel, thresholds, network type)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from edgekit.errors import EdgekitError
from edgekit.runtime import manifest as mf
from edgekit.runtime.preprocess import preprocess
from edgekit.runtime.serving.deepstream import (
    CONFIG_FILE,
    LABELS_FILE,
    CustomParser,
    export_deepstream,
    normalization,
    read_nvinfer_config,
)

PARSER = CustomParser("NvDsInferParseCustomMine", "/opt/parsers/libnvds_mine.so")
EFFICIENT = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict:
    """The shipped segmenter as FP32 and INT8 ONNX Runtime engines, the shipped detector as FP32 with a dynamic
    batch up to 4, and the segmenter's plain exported ONNX (no manifest)."""
    from edgekit.build.demo import CALIBRATION, SHIPPED
    from edgekit.build.engine_build import BuildOptions, build_engine
    from edgekit.build.export import export

    out = tmp_path_factory.mktemp("ds-engines")
    export(SHIPPED["segmentation"], out / "seg.onnx")
    export(SHIPPED["detection"], out / "det.onnx", dynamic_batch=4)
    ort = dict(backend="onnxruntime", val_size=4)
    return {
        "seg_onnx": out / "seg.onnx",
        "seg": build_engine(out / "seg.onnx", out / "seg.fp32.onnx", BuildOptions(**ort)).engine,
        "seg_int8": build_engine(out / "seg.onnx", out / "seg.int8.onnx", BuildOptions(
            precision="int8", calib=str(CALIBRATION), calib_size=8, **ort)).engine,
        "det": build_engine(out / "det.onnx", out / "det.fp32.onnx", BuildOptions(max_batch=4, **ort)).engine,
    }


def exported(engine: Path, out: Path, parser=None) -> dict:
    rep = export_deepstream(engine, out, parser=parser)
    cfg = read_nvinfer_config(out / CONFIG_FILE)
    assert rep.config == out / CONFIG_FILE and (out / "README.md").is_file()
    for key in ("onnx-file", "model-engine-file", "int8-calib-file", "labelfile-path"):
        if key in cfg["property"]:  # every file the config names is in the folder (paths relative to the config)
            assert (out / cfg["property"][key]).is_file(), key
    return {"cfg": cfg, "prop": cfg["property"], "rep": rep}


def nvinfer_input(prop: dict, pixel_rgb) -> np.ndarray:
    """What nvinfer feeds the network for one pixel: y = net-scale-factor * (x - offsets[c]) in the model's colour
    order (0 RGB, 1 BGR)."""
    x = np.asarray(pixel_rgb if prop["model-color-format"] == "0" else pixel_rgb[::-1], np.float64)
    offsets = np.array([float(v) for v in prop["offsets"].split(";")])
    return float(prop["net-scale-factor"]) * (x - offsets)


def card_input(card, pixel_rgb) -> np.ndarray:
    """What edgekit feeds the network for the same pixel: its own preprocess() on a uniform frame."""
    frame = np.empty((60, 80, 3), np.uint8)
    frame[:] = pixel_rgb[::-1]  # OpenCV frames are BGR
    tensor, _ = preprocess(frame, card)
    h, w = card.input_size
    return tensor[0, :, h // 2, w // 2].astype(np.float64)


def test_segmenter_fp32(engines, tmp_path):
    got = exported(engines["seg"], tmp_path / "ds")
    prop, card = got["prop"], mf.read(engines["seg"]).card
    assert prop["onnx-file"] == engines["seg"].name and "model-engine-file" not in prop
    assert (tmp_path / "ds" / prop["onnx-file"]).read_bytes() == engines["seg"].read_bytes()
    assert (tmp_path / "ds" / LABELS_FILE).read_text().splitlines() == card.classes
    assert prop["network-mode"] == "0" and prop["network-type"] == "2" and prop["batch-size"] == "1"
    assert prop["infer-dims"] == f"3;{card.input_size[0]};{card.input_size[1]}"
    assert prop["maintain-aspect-ratio"] == "0"  # the card stretches
    assert prop["num-detected-classes"] == str(card.num_classes) and "segmentation-threshold" in prop
    assert "class-attrs-all" not in got["cfg"]  # detector-only thresholds
    # The shipped card's stds differ per channel: one scale factor cannot match all three; the error is said.
    _, _, err = normalization(card)
    assert 0 < err < 0.02 and any("net-scale-factor" in w for w in got["rep"].warnings)
    text = (tmp_path / "ds" / CONFIG_FILE).read_text()
    assert "docs.nvidia.com/metropolis/deepstream" in text and "WARNING" in text
    for pixel in ((0, 0, 0), (255, 128, 7), (30, 200, 90)):
        np.testing.assert_allclose(nvinfer_input(prop, pixel), card_input(card, pixel), rtol=err + 1e-6, atol=1e-4)


def test_equal_std_is_exact_and_bgr(engines):
    card = dataclasses.replace(mf.read(engines["det"]).card, std=(0.25, 0.25, 0.25), color="BGR")
    scale, offsets, err = normalization(card)
    assert err == 0
    prop = {"model-color-format": "1", "net-scale-factor": repr(scale), "offsets": ";".join(map(repr, offsets))}
    for pixel in ((0, 0, 0), (255, 128, 7)):
        np.testing.assert_allclose(nvinfer_input(prop, pixel), card_input(card, pixel), rtol=1e-6, atol=1e-5)


def test_int8_onnxruntime_hands_over_the_qdq_onnx(engines, tmp_path):
    engine = engines["seg_int8"]
    m = mf.read(engine)
    qdq = m.side_file(engine, "tensorrt_qdq_onnx")
    got = exported(engine, tmp_path / "ds")
    prop = got["prop"]
    assert prop["network-mode"] == "1"
    assert prop["onnx-file"] == qdq.name  # not the engine itself: that is ONNX Runtime's U8S8 CPU file
    assert (tmp_path / "ds" / qdq.name).read_bytes() == qdq.read_bytes()
    assert "int8-calib-file" not in prop  # a Q/DQ model carries its scales; TensorRT gets no table for it
    assert any("INT8 flag" in w for w in got["rep"].warnings)


def test_detector_with_a_parser(engines, tmp_path):
    got = exported(engines["det"], tmp_path / "ds", parser=PARSER)
    prop, attrs, card = got["prop"], got["cfg"]["class-attrs-all"], mf.read(engines["det"]).card
    assert prop["network-type"] == "0" and prop["batch-size"] == "4"  # the engine's largest batch
    assert prop["parse-bbox-func-name"] == PARSER.function and prop["custom-lib-path"] == PARSER.library
    assert prop["cluster-mode"] == "2"  # a raw head: nvinfer's NMS with the card's thresholds
    assert float(attrs["pre-cluster-threshold"]) == pytest.approx(card.score_threshold)
    assert float(attrs["nms-iou-threshold"]) == pytest.approx(card.iou_threshold)
    assert int(attrs["topk"]) == card.max_detections
    assert prop["maintain-aspect-ratio"] == "1" and prop["symmetric-padding"] == "1"  # letterbox, centred
    assert prop["num-detected-classes"] == str(card.num_classes)
    assert (tmp_path / "ds" / LABELS_FILE).read_text().splitlines() == card.classes
    with pytest.raises(EdgekitError, match="not a C function name"):
        export_deepstream(engines["det"], tmp_path / "typo", parser=CustomParser("Parse Boxes", PARSER.library))


def test_raw_head_detector_is_refused_in_one_line(engines, tmp_path):
    out = tmp_path / "ds"
    assert_one_line_error(run_cli("export-deepstream", str(engines["det"]), "-o", str(out)),
                          "no parser", "yolov8", "--parse-bbox-func")
    assert not out.exists()
    assert_one_line_error(run_cli("export-deepstream", str(tmp_path / "missing.onnx"), "-o", str(out)), "not found")
    assert_one_line_error(run_cli("export-deepstream", str(engines["det"]), "-o", str(out), "--parse-bbox-func",
                                  PARSER.function), "--custom-lib")
    assert not out.exists()


def tensorrt_efficient_nms(det: Path, folder: Path, precision: str = "int8") -> Path:
    """A TensorRT engine manifest with EfficientNMS_TRT outputs (no TensorRT here): a real manifest with what such
    a build writes differently, a dummy engine and, for implicit INT8, the calibration cache beside it."""
    data = json.loads(mf.path_for(det).read_text())
    engine = folder / "det.plan"
    engine.write_bytes(b"not a real TensorRT engine")
    data["engine"] = {"file": engine.name, "sha256": mf.file_sha256(engine), "bytes": engine.stat().st_size}
    data["backend"] = {"name": "tensorrt", "version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    if precision == "int8":
        cache = folder / "det.plan.calib.cache"
        cache.write_text("TRT-100300-EntropyCalibration2\nimages: 3c010a14\n")
        data["backend"].update(int8_path=mf.INT8_IMPLICIT, calibrator="IInt8EntropyCalibrator2",
                               calibration_cache=str(cache))
        data["int8"] = {"method": "entropy", "quantizer": "tensorrt", "kept_fp32": [], "kept_reason": {},
                        "engine_file_is": "TensorRT engine", "calibration": {"source": "8 images from x",
                                                                             "images": 8, "sha256": None}}
    data["precision"] = precision
    data["files"] = {}
    k = data["card"]["postprocess"]["max_detections"]
    data["io"]["outputs"] = [{"name": EFFICIENT[0], "shape": ["batch", 1], "dtype": "int32"},
                             {"name": EFFICIENT[1], "shape": ["batch", k, 4], "dtype": "float32"},
                             {"name": EFFICIENT[2], "shape": ["batch", k], "dtype": "float32"},
                             {"name": EFFICIENT[3], "shape": ["batch", k], "dtype": "int32"}]
    data["card"]["output"] = {"name": EFFICIENT[0], "layout": "efficient_nms"}
    mf.path_for(engine).write_text(json.dumps(data))
    return engine


def test_tensorrt_efficient_nms(engines, tmp_path):
    engine = tensorrt_efficient_nms(engines["det"], tmp_path)
    # DeepStream's own EfficientNMS parser (TAO EfficientDet) reads boxes y-first: without a parser, one line.
    assert_one_line_error(run_cli("export-deepstream", str(engine), "-o", str(tmp_path / "no")),
                          "efficient_nms", "NvDsInferParseCustomEfficientDetTAO")
    got = exported(engine, tmp_path / "ds", parser=PARSER)
    prop, attrs = got["prop"], got["cfg"]["class-attrs-all"]
    assert prop["model-engine-file"] == engine.name and "onnx-file" not in prop
    assert (tmp_path / "ds" / engine.name).read_bytes() == engine.read_bytes()
    assert prop["int8-calib-file"] == "det.plan.calib.cache" and prop["network-mode"] == "1"
    assert prop["cluster-mode"] == "4" and "nms-iou-threshold" not in attrs  # NMS is in the engine
    assert prop["output-blob-names"].split(";") == list(EFFICIENT)
    assert prop["parse-bbox-func-name"] == PARSER.function and prop["custom-lib-path"] == PARSER.library


def test_fp16_tensorrt_and_fused_preprocessing(engines, tmp_path):
    engine = tensorrt_efficient_nms(engines["det"], tmp_path, precision="fp16")
    prop = exported(engine, tmp_path / "ds", parser=PARSER)["prop"]
    assert prop["network-mode"] == "2" and "int8-calib-file" not in prop
    data = json.loads(mf.path_for(engine).read_text())
    h, w = data["card"]["input"]["shape"][2:]
    data["card"]["input"].update(shape=[1, h, w, 3], layout="NHWC", format="nhwc_uint8")
    mf.path_for(engine).write_text(json.dumps(data))
    assert_one_line_error(run_cli("export-deepstream", str(engine), "-o", str(tmp_path / "fused")),
                          "uint8", "--fuse-preprocess")


def test_plain_onnx_is_fp32(engines, tmp_path):
    prop = exported(engines["seg_onnx"], tmp_path / "ds")["prop"]
    assert prop["onnx-file"] == "seg.onnx" and prop["network-mode"] == "0" and prop["batch-size"] == "1"


def test_output_folder(engines, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert_one_line_error(run_cli("export-deepstream", str(engines["seg"]), "-o", str(out)), "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    done = run_cli("export-deepstream", str(engines["seg"]), "-o", str(out), "--overwrite")
    assert done.returncode == 0, done.stderr
    assert not (out / "mine.txt").exists() and (out / CONFIG_FILE).is_file()
    again = run_cli("export-deepstream", str(engines["seg_int8"]), "-o", str(out))  # its own earlier output
    assert again.returncode == 0, again.stderr
    assert read_nvinfer_config(out / CONFIG_FILE)["property"]["network-mode"] == "1"
    # never into the folder that holds the engine (--overwrite would delete its manifest)
    with pytest.raises(EdgekitError, match="holds the engine"):
        export_deepstream(engines["seg"], engines["seg"].parent, overwrite=True)


def test_reader_keeps_case_and_refuses_garbage(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("# comment\n[property]\nonnx-file=m.onnx\n[class-attrs-all]\nminBoxes=3\n")
    assert read_nvinfer_config(good) == {"property": {"onnx-file": "m.onnx"}, "class-attrs-all": {"minBoxes": "3"}}
    bad = tmp_path / "b.txt"
    bad.write_text("onnx-file=m.onnx\n")
    with pytest.raises(EdgekitError, match="not an nvinfer configuration"):
        read_nvinfer_config(bad)
