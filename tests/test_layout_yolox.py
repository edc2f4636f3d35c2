"""The yolox layout on a real trained YOLOX model, ddddocr 1.6.1's character detector (../shared/TESTING.md: raw-grid
output [1, 3549, 6], one class), against ddddocr's own decode in ddddocr/core/detection_engine.py: its methods run
as the wheel ships them, lifted out of their class so that ddddocr's package (PIL, its model loader) is not needed."""

import ast
from typing import Any, List, Tuple

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from conftest import model_from_wheel

from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import preprocess

GLYPHS = "ABDEFGHJKMNPQRTXYabdefghkmnpqrty2345678"
Box = Tuple[float, float, float, float]


def ddddocr_card(**kw: Any) -> ModelCard:
    """How ddddocr runs the model (DetectionEngine.get_bbox): BGR 0..255 letterboxed into 416x416 at the top-left
    with 114, obj x cls over 0.1, NMS at IoU 0.45; it keeps every box, so max_detections does not bind."""
    fields = dict(name="ddddocr-det", task="detection", arch="external", classes=["char"], input_size=(416, 416),
                  color="BGR", std=(1 / 255,) * 3, pad_value=114, pad_placement="corner", output_name="output",
                  output_layout="yolox", score_threshold=0.1, iou_threshold=0.45, max_detections=1000,
                  agnostic_nms=True)
    fields.update(kw)
    return ModelCard(**fields)


@pytest.fixture(scope="module")
def engine() -> Any:
    """ddddocr's DetectionEngine with the methods get_bbox uses, compiled from the wheel's file, on the real model."""
    model = model_from_wheel("ddddocr", "1.6.1", "ddddocr/common_det.onnx")
    source = model_from_wheel("ddddocr", "1.6.1", "ddddocr/core/detection_engine.py").read_text(encoding="utf-8")
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "DetectionEngine")
    wanted = {"preproc", "demo_postprocess", "nms", "multiclass_nms_class_agnostic", "multiclass_nms", "get_bbox"}
    cls.body = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    assert {n.name for n in cls.body} == wanted, "ddddocr's detection_engine.py changed"
    cls.bases, cls.decorator_list = [], []
    namespace = {"np": np, "cv2": cv2}
    exec(compile(ast.Module(body=[cls], type_ignores=[]), "ddddocr/core/detection_engine.py", "exec"), namespace)
    eng = namespace["DetectionEngine"]()
    eng.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return eng


def captcha(w: int, h: int, seed: int, scale: float, thickness: int) -> Tuple[np.ndarray, List[Box]]:
    """A click-captcha-like image: eight characters on a grainy background crossed by a few lines, and the box of
    each character as cv2 draws it."""
    rng = np.random.default_rng(seed)
    img = (rng.integers(190, 256, 3)[None, None] + rng.normal(0, 6, (h, w, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(3):
        a, b = rng.integers(0, [w, h], (2, 2)).tolist()
        cv2.line(img, tuple(a), tuple(b), tuple(rng.integers(80, 200, 3).tolist()), 1, cv2.LINE_AA)
    chars = []
    for i in range(8):
        font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX]))
        size = scale * rng.uniform(0.85, 1.15)
        text = GLYPHS[int(rng.integers(len(GLYPHS)))]
        x, y = int((i % 4 + rng.uniform(0.2, 0.6)) * w / 4), int((i // 4 + rng.uniform(0.6, 0.9)) * h / 2)
        cv2.putText(img, text, (x, y), font, size, tuple(rng.integers(0, 110, 3).tolist()), thickness, cv2.LINE_AA)
        (tw, th), base = cv2.getTextSize(text, font, size, thickness)
        chars.append((x, y - th, x + tw, y + base))
    return img, chars


def ddddocr_detections(eng: Any, frame: np.ndarray) -> np.ndarray:
    """[x1, y1, x2, y2, score] in frame pixels, best first: get_bbox's lines up to its NMS, in floats (get_bbox
    itself truncates to ints at the end), boxes clipped to the frame as get_bbox clips them."""
    im, ratio = eng.preproc(frame, (416, 416))
    output = eng.session.run(None, {eng.session.get_inputs()[0].name: im[None, :, :, :]})
    predictions = eng.demo_postprocess(output[0], (416, 416))[0]
    boxes = predictions[:, :4]
    scores = predictions[:, 4:5] * predictions[:, 5:]
    boxes_xyxy = np.ones_like(boxes)
    boxes_xyxy[:, 0] = boxes[:, 0] - boxes[:, 2] / 2.
    boxes_xyxy[:, 1] = boxes[:, 1] - boxes[:, 3] / 2.
    boxes_xyxy[:, 2] = boxes[:, 0] + boxes[:, 2] / 2.
    boxes_xyxy[:, 3] = boxes[:, 1] + boxes[:, 3] / 2.
    boxes_xyxy /= ratio
    dets = eng.multiclass_nms(boxes_xyxy, scores, nms_thr=0.45, score_thr=0.1)
    if dets is None:
        return np.zeros((0, 5), np.float32)
    dets = dets[np.argsort(-dets[:, 4], kind="stable"), :5]
    dets[:, [0, 2]] = dets[:, [0, 2]].clip(0, frame.shape[1])
    dets[:, [1, 3]] = dets[:, [1, 3]].clip(0, frame.shape[0])
    return dets


# Frames whose letterbox ratio is exact (x2, x0.5): ddddocr maps boxes back by dividing by that ratio, edgekit by
# the resized size over the frame size per axis, which differ by up to a resized pixel where the product rounds
# (0.06 px measured on a 160x52 frame).
FRAMES = {"captcha 208x104, upscaled": (208, 104, 0.75, 1), "page 832x624, padded below": (832, 624, 3.0, 4)}


@pytest.mark.parametrize("frame", sorted(FRAMES))
def test_decode_matches_ddddocr(engine, frame):
    w, h, scale, thickness = FRAMES[frame]
    img, chars = captcha(w, h, seed=0, scale=scale, thickness=thickness)
    card = ddddocr_card()
    tensor, transform = preprocess(img, card)
    raw = engine.session.run(None, {"images": tensor})[0]
    found = registry.layout("yolox").decode({"output": raw[0]}, transform, card, DecodeParams.of(card))
    ref = ddddocr_detections(engine, img)

    assert len(found) >= 1 and len(found) == len(ref)
    candidates = int((raw[0, :, 4] * raw[0, :, 5] > 0.1).sum())
    assert candidates > 2 * len(found)  # NMS did the work here
    order = np.argsort(-found.scores, kind="stable")
    np.testing.assert_allclose(found.boxes[order], ref[:, :4], atol=1e-3)
    np.testing.assert_allclose(found.scores[order], ref[:, 4], atol=1e-6)
    # what a ddddocr user gets: get_bbox's integer boxes, from the PNG of the same image
    ints = [[int(v) for v in b] for b in found.boxes[order]]
    assert engine.get_bbox(cv2.imencode(".png", img)[1].tobytes()) == ints
    # and each box sits on a drawn character, not on the lines or the padding
    for x1, y1, x2, y2 in found.boxes:
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        assert any(a - 2 <= cx <= c + 2 and b - 2 <= cy <= d + 2 for a, b, c, d in chars), (cx, cy)


def test_a_decode_in_inference_export_is_the_yolov5_layout(engine):
    img, _ = captcha(416, 208, seed=1, scale=1.5, thickness=2)
    card = ddddocr_card()
    tensor, transform = preprocess(img, card)
    raw = engine.session.run(None, {"images": tensor})[0]
    decoded = engine.demo_postprocess(raw.copy(), (416, 416))  # what YOLOX's --decode_in_inference puts in the graph
    params = DecodeParams.of(card)
    grid = registry.layout("yolox").decode({"output": raw[0]}, transform, card, params)
    plain = registry.layout("yolov5").decode({"output": decoded[0]}, transform, ddddocr_card(output_layout="yolov5"),
                                             params)
    assert len(grid) >= 1 and len(plain) == len(grid)
    np.testing.assert_allclose(plain.boxes, grid.boxes, atol=1e-3)
    with pytest.raises(EdgekitError, match="decoded already .* output.layout yolov5$"):
        registry.layout("yolox").decode({"output": decoded[0]}, transform, card, params)


def test_recognised_from_the_real_outputs_and_checked_against_the_card(engine):
    outputs = [TensorSpec(o.name, tuple(o.shape), "float32") for o in engine.session.get_outputs()]
    assert outputs == [TensorSpec("output", (1, 3549, 6), "float32")]  # 52^2 + 26^2 + 13^2 cells, 4 + obj + 1 class
    card = ddddocr_card()
    assert [lay.name for lay in registry.layouts("detection") if lay.recognises(outputs, card)] == ["yolox"]
    registry.layout("yolox").check(outputs, card, "common_det.onnx")

    with pytest.raises(EdgekitError) as e:
        registry.layout("yolox").check(outputs, ddddocr_card(classes=["char", "icon"]), "common_det.onnx")
    assert str(e.value) == ("common_det.onnx: output 'output' has shape [1, 3549, 6]; a YOLOX raw-grid detector with "
                            "2 classes at 416x416, strides [8, 16, 32], has [N, 3549, 7]")
    with pytest.raises(EdgekitError, match=r"^common_det.onnx: .* at 640x640, strides \[8, 16, 32\], has \[N, 8400, 6"):
        registry.layout("yolox").check(outputs, ddddocr_card(input_size=(640, 640)), "common_det.onnx")
    p6 = ddddocr_card(layout_params={"strides": [8, 16, 32, 64]})
    assert not registry.layout("yolox").recognises(outputs, p6)
    with pytest.raises(EdgekitError, match=r"strides \[8, 16, 32, 64\], has \[N, 3585, 6\]$"):
        registry.layout("yolox").check(outputs, p6, "common_det.onnx")
    with pytest.raises(EdgekitError, match=r"^model card: output.params: strides must be positive integers"):
        ddddocr_card(layout_params={"strides": [8, 0, 32]})


def test_the_real_model_through_build_engine_and_run_stream(tmp_path):
    """ddddocr's detector as a user brings it: described by flags, its raw-grid layout recognised."""
    from conftest import build_and_stream

    model = model_from_wheel("ddddocr", "1.6.1", "ddddocr/common_det.onnx")
    stdout = build_and_stream(model, tmp_path / "e.onnx", "--task", "detection", "--classes", "char",
                              "--channel-order", "bgr", "--std", "0.00392157", "0.00392157", "0.00392157",
                              "--pad", "corner")
    assert "input 416x416 BGR letterbox, output layout yolox" in stdout
