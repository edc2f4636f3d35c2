"""The yolov5 layout against YOLOv5's own post-processing: a YOLOv5 Detect head with a handful of planted boxes
(duplicates and a cross-class overlap included), exported to ONNX and run by ONNX Runtime on a letterboxed frame,
decoded by edgekit and by the reference written from ultralytics/yolov5 utils/general.py (`non_max_suppression`
with multi_label off, `scale_boxes`) on torchvision.ops."""


import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from conftest import export_onnx

from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data.synth import render_image
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import preprocess

CLASSES = ["car", "person", "sign"]
SIZE = 64  # network input; the 128x96 frame letterboxes to 64x48 with 8 rows of padding above and below
STRIDES = (8, 16, 32)
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))  # yolov5s.yaml
# (level, anchor, cell x, cell y, cx, cy, w, h in input pixels, objectness, class, class score). Duplicates come
# from a neighbouring cell or another anchor, as a trained head gives them.
PLANTED = [
    (0, 0, 2, 3, 20.0, 24.0, 16.0, 12.0, 0.95, 0, 0.95),  # a car
    (0, 0, 3, 3, 21.0, 24.5, 15.0, 12.0, 0.90, 0, 0.80),  # the same car from the next cell: NMS removes it
    (0, 1, 2, 2, 20.5, 23.5, 17.0, 13.0, 0.85, 0, 0.70),  # ... and from another anchor
    (0, 0, 3, 2, 30.0, 24.0, 16.0, 12.0, 0.90, 0, 0.75),  # a second car, IoU 0.23 with the first: kept
    (1, 0, 2, 1, 44.0, 30.0, 20.0, 24.0, 0.90, 1, 0.90),  # a person
    (1, 1, 2, 1, 45.0, 31.0, 20.0, 22.0, 0.80, 1, 0.70),  # the same person again
    (1, 0, 2, 2, 43.0, 30.0, 19.0, 24.0, 0.70, 2, 0.75),  # a sign over the person: kept unless NMS is agnostic
    (2, 0, 1, 1, 32.0, 44.0, 40.0, 14.0, 0.80, 2, 0.70),  # a wide sign
    (0, 0, 1, 6, 10.0, 50.0, 8.0, 8.0, 0.90, 0, 0.20),  # objectness alone passes, obj x cls (0.18) does not
]


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


class TinyYoloV5(torch.nn.Module):
    """YOLOv5's Detect head at inference (models/yolo.py: sigmoid, then xy = (2s - 0.5 + grid) * stride,
    wh = (2s)^2 * anchor, rows anchor by anchor, each grid row-major, level by level) on planted logits, plus a
    faint image-dependent term so the graph computes from its input."""

    def __init__(self) -> None:
        super().__init__()
        grid, stride, anchor, offsets = [], [], [], [0]
        for s, anchors in zip(STRIDES, ANCHORS):
            n = SIZE // s
            offsets.append(offsets[-1] + 3 * n * n)
            yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            cells = torch.stack((xv, yv), 2).reshape(-1, 2).float()
            for a in range(3):
                grid.append(cells)
                stride.append(torch.full((n * n, 1), float(s)))
                anchor.append(torch.tensor(anchors[2 * a:2 * a + 2], dtype=torch.float32).expand(n * n, 2))
        self.register_buffer("grid", torch.cat(grid))
        self.register_buffer("stride", torch.cat(stride))
        self.register_buffer("anchor", torch.cat(anchor))
        gen = torch.Generator().manual_seed(0)
        logits = torch.randn(len(self.grid), 5 + len(CLASSES), generator=gen) - 2.0
        logits[:, 4] = -9.0  # background: objectness ~1e-4
        for level, a, gx, gy, cx, cy, w, h, obj, cls, score in PLANTED:
            s, n, (aw, ah) = STRIDES[level], SIZE // STRIDES[level], ANCHORS[level][2 * a:2 * a + 2]
            row = offsets[level] + a * n * n + gy * n + gx
            # the head's formulas solved for the sigmoid outputs, each inside (0, 1) for a box the cell can give
            y = [(cx / s - gx + 0.5) / 2, (cy / s - gy + 0.5) / 2, (w / aw) ** 0.5 / 2, (h / ah) ** 0.5 / 2]
            assert all(0 < v < 1 for v in y), (cx, cy, w, h)
            logits[row, :4] = torch.tensor([logit(v) for v in y])
            logits[row, 4], logits[row, 5:] = logit(obj), -6.0
            logits[row, 5 + cls] = logit(score)
        self.register_buffer("logits", logits)
        self.mix = torch.nn.Conv2d(3, 5 + len(CLASSES), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.logits + 0.01 * self.mix(x.mean((2, 3), keepdim=True)).flatten(1)[:, None, :]
        y = t.sigmoid()
        xy = (y[..., :2] * 2 - 0.5 + self.grid) * self.stride
        wh = (y[..., 2:4] * 2) ** 2 * self.anchor
        return torch.cat((xy, wh, y[..., 4:]), -1)


def yolov5_reference(pred: torch.Tensor, conf_thres: float, iou_thres: float, agnostic: bool, max_det: int,
                     gain: float, pad: tuple, frame_wh: tuple) -> torch.Tensor:
    """[xyxy, conf, cls] in frame pixels, as YOLOv5's detect.py gets them (multi_label off)."""
    x = pred[pred[:, 4] > conf_thres].clone()  # candidates by objectness
    x[:, 5:] *= x[:, 4:5]  # conf = obj_conf * cls_conf
    box = torchvision.ops.box_convert(x[:, :4], "cxcywh", "xyxy")
    conf, j = x[:, 5:].max(1, keepdim=True)
    x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
    # YOLOv5 offsets each class by max_wh = 7680 and calls nms: what batched_nms does
    classes = torch.zeros_like(x[:, 5]) if agnostic else x[:, 5]
    x = x[torchvision.ops.batched_nms(x[:, :4], x[:, 4], classes, iou_thres)[:max_det]]
    x[:, [0, 2]] = ((x[:, [0, 2]] - pad[0]) / gain).clamp(0, frame_wh[0])  # scale_boxes + clip_boxes
    x[:, [1, 3]] = ((x[:, [1, 3]] - pad[1]) / gain).clamp(0, frame_wh[1])
    return x


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("yolov5") / "tiny_yolov5.onnx"
    export_onnx(TinyYoloV5().eval(), path, (SIZE, SIZE), ["output0"])
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def card(**kw) -> ModelCard:
    return ModelCard(name="tiny-yolov5", task="detection", arch="external", classes=CLASSES, input_size=(SIZE, SIZE),
                     output_layout="yolov5", iou_threshold=0.45, **kw)


@pytest.mark.parametrize("agnostic", [False, True], ids=["per-class", "agnostic"])
def test_decode_matches_yolov5_non_max_suppression(onnx_model, agnostic):
    c = card(agnostic_nms=agnostic)
    frame = render_image(seed=5, index=0, size=(128, 96)).image
    tensor, transform = preprocess(frame, c)
    raw = onnx_model.run(None, {"images": tensor})[0]
    assert raw.shape == (1, 3 * (64 + 16 + 4), 5 + len(CLASSES))
    params = DecodeParams.of(c)
    found = registry.layout("yolov5").decode({"output0": raw[0]}, transform, c, params)
    ref = yolov5_reference(torch.from_numpy(raw[0]), params.score_threshold, params.iou_threshold, agnostic,
                           params.max_detections, gain=0.5, pad=(0.0, 8.0), frame_wh=(128, 96)).numpy()

    # 8 boxes clear the threshold; per class NMS keeps car, second car, person, sign over the person and wide
    # sign; agnostic NMS drops the sign over the person too
    assert int(((raw[0, :, 5:] * raw[0, :, 4:5]).max(1) > params.score_threshold).sum()) == 8
    assert len(found) == len(ref) == (4 if agnostic else 5)
    order = np.argsort(-found.scores, kind="stable")
    np.testing.assert_allclose(found.boxes[order], ref[:, :4], atol=1e-3)
    np.testing.assert_allclose(found.scores[order], ref[:, 4], atol=1e-6)
    assert found.classes[order].tolist() == ref[:, 5].astype(int).tolist()
    assert sorted(set(found.classes.tolist())) == [0, 1, 2]


def test_recognised_by_its_anchor_count_and_told_from_yolox():
    c = card()
    yolov5, yolox = registry.layout("yolov5"), registry.layout("yolox")
    anchored = [TensorSpec("output0", (1, 252, 8), "float32")]  # 3 anchors x (8x8 + 4x4 + 2x2) cells
    p6 = [TensorSpec("output0", (1, 3 * 85, 8), "float32")]  # strides 8..64: 64 + 16 + 4 + 1 cells
    assert yolov5.recognises(anchored, c) and yolov5.recognises(p6, c)
    assert not yolox.recognises(anchored, c)
    anchor_free = [TensorSpec("output0", (1, 84, 8), "float32")]  # YOLOX, raw or --decode_in_inference
    assert not yolov5.recognises(anchor_free, c) and yolox.recognises(anchor_free, c)
    # an NMS'd export [B, max_det, 6] of a one-class model has 5 + classes columns too
    one = ModelCard(name="m", task="detection", arch="external", classes=["x"], input_size=(SIZE, SIZE))
    assert not yolov5.recognises([TensorSpec("output0", (1, 300, 6), "float32")], one)


def test_check_refuses_a_wrong_class_count_in_one_line():
    c = card()
    registry.layout("yolov5").check([TensorSpec("output0", (1, 252, 8), "float32")], c, "m.onnx")
    registry.layout("yolov5").check([TensorSpec("output0", ("batch", "anchors", 8), "float32")], c, "m.onnx")
    with pytest.raises(EdgekitError) as e:
        registry.layout("yolov5").check([TensorSpec("output0", (1, 252, 85), "float32")], c, "m.onnx")
    assert "\n" not in str(e.value)
    assert str(e.value) == ("m.onnx: output 'output0' has shape [1, 252, 85]; a YOLOv5-layout detector with 3 "
                            "classes has [N, anchors, 8]")


def test_build_engine_recognises_it_and_run_stream_runs_it(tmp_path):
    """The user path: no --layout, the three-anchors-per-cell row count tells it from YOLOX."""
    import json

    from conftest import build_and_stream

    path = tmp_path / "tiny_yolov5.onnx"
    export_onnx(TinyYoloV5().eval(), path, (SIZE, SIZE), ["output0"])
    stdout = build_and_stream(path, tmp_path / "e.onnx", "--task", "detection", "--classes", ",".join(CLASSES))
    assert "output layout yolov5" in stdout
    card = json.loads((tmp_path / "e.onnx.manifest.json").read_text())["card"]
    assert card["output"]["layout"] == "yolov5" and card["classes"] == CLASSES
