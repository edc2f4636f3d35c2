"""The end2end layout against Ultralytics' own post-processing: a small one-to-one head that ends in Ultralytics'
`Detect.postprocess` (ultralytics/nn/modules/head.py: top-k of the class scores, x1, y1, x2, y2, score, class),
exported to ONNX and run by edgekit's ONNX Runtime backend on a letterboxed frame, decoded by edgekit and by the
reference written from ultralytics/utils/nms.py (`non_max_suppression`, end-to-end branch) and ultralytics/utils/ops.py
(`scale_boxes`, `clip_boxes`)."""


import numpy as np
import pytest
import torch
from conftest import build_and_stream, export_onnx

import edgekit
from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data.synth import render_image
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import preprocess

CLASSES = ["car", "person", "sign"]
INPUT = (64, 96)  # (h, w); the 300x100 frame letterboxes to 96x32 with 16 rows of padding above and below
FRAME = (300, 100)  # (w, h)
STRIDE, MAX_DET = 8, 30


class TinyEnd2End(torch.nn.Module):
    """A one-to-one head in Ultralytics' manner: per 8x8 cell a box as distances from the cell centre (xyxy in input
    pixels, `dist2bbox(xywh=False)`) and class sigmoids, then `Detect.postprocess` as head.py writes it. The cells'
    logits are fixed random values (a synthetic frame's flat regions would give many cells the same) plus a term
    computed from the image."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        h, w = INPUT[0] // STRIDE, INPUT[1] // STRIDE
        self.register_buffer("logits", 1.5 * torch.randn(h * w, 4 + len(CLASSES), generator=gen))
        self.conv = torch.nn.Conv2d(3, 4 + len(CLASSES), STRIDE, STRIDE)
        with torch.no_grad():
            self.conv.weight.copy_(0.05 * torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.zero_()
        yv, xv = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        self.register_buffer("centres", (torch.stack((xv, yv), 2).reshape(-1, 2).float() + 0.5) * STRIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.logits + self.conv(x).flatten(2).transpose(1, 2)  # [B, cells, 4 + nc]
        dist = y[..., :4].sigmoid() * 3 * STRIDE
        boxes = torch.cat((self.centres - dist[..., :2], self.centres + dist[..., 2:]), -1)
        preds = torch.cat((boxes, y[..., 4:].sigmoid()), -1)
        # Detect.postprocess
        nc = len(CLASSES)
        batch_size, anchors, _ = preds.shape
        boxes, scores = preds.split([4, nc], dim=-1)
        index = scores.amax(dim=-1).topk(min(MAX_DET, anchors))[1].unsqueeze(-1)
        boxes = boxes.gather(dim=1, index=index.repeat(1, 1, 4))
        scores = scores.gather(dim=1, index=index.repeat(1, 1, nc))
        scores, index = scores.flatten(1).topk(min(MAX_DET, anchors))
        i = torch.arange(batch_size)[..., None]
        return torch.cat([boxes[i, index // nc], scores[..., None], (index % nc)[..., None].float()], dim=-1)


def ultralytics_reference(pred: np.ndarray, conf: float, max_det: int) -> np.ndarray:
    """[x1, y1, x2, y2, score, class] in frame pixels as Ultralytics' DetectionPredictor gets them."""
    pred = pred[pred[:, 4] > conf][:max_det].astype(np.float64)  # non_max_suppression, end-to-end branch
    (in_h, in_w), (w, h) = INPUT, FRAME
    gain = min(in_h / h, in_w / w)  # scale_boxes
    pad = (round((in_w - w * gain) / 2 - 0.1), round((in_h - h * gain) / 2 - 0.1))
    pred[:, [0, 2]] = ((pred[:, [0, 2]] - pad[0]) / gain).clip(0, w)  # ... and clip_boxes
    pred[:, [1, 3]] = ((pred[:, [1, 3]] - pad[1]) / gain).clip(0, h)
    return pred


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("end2end") / "tiny_end2end.onnx"
    export_onnx(TinyEnd2End().eval(), path, INPUT, ["output0"])
    return path


@pytest.fixture(scope="module")
def backend(onnx_file):
    return OnnxRuntimeBackend(onnx_file)


def card(**kw) -> ModelCard:
    return ModelCard(name="tiny-end2end", task="detection", arch="external", classes=CLASSES, input_size=INPUT,
                     output_layout="end2end", **kw)


def run(backend, c):
    tensor, transform = preprocess(render_image(seed=5, index=0, size=FRAME).image, c)
    return backend.infer([tensor]), transform


@pytest.mark.parametrize("threshold,max_det", [(0.9, 100), (0.95, 5)])
def test_decode_matches_ultralytics(backend, threshold, max_det):
    c = card(score_threshold=threshold, max_detections=max_det)
    outputs, transform = run(backend, c)
    raw = outputs["output0"]
    assert raw.shape == (1, MAX_DET, 6)
    found = registry.layout("end2end").decode({"output0": raw[0]}, transform, c, DecodeParams.of(c))
    ref = ultralytics_reference(raw[0], threshold, max_det)

    kept = int((raw[0, :, 4] > threshold).sum())
    assert 0 < kept < MAX_DET and (max_det > MAX_DET or kept > max_det)  # the threshold drops rows, max_det more
    assert len(found) == len(ref) == min(kept, max_det)
    np.testing.assert_allclose(found.boxes, ref[:, :4], atol=1e-3)
    np.testing.assert_allclose(found.scores, ref[:, 4], atol=1e-6)
    assert found.classes.tolist() == ref[:, 5].astype(int).tolist()
    if max_det == 100:
        assert len(set(found.classes.tolist())) > 1
        assert (found.boxes[:, 1] == 0).any() or (found.boxes[:, 3] == FRAME[1]).any()  # some reach into the pad
        print(f"end2end: {len(found)} detections, max box difference "
              f"{np.abs(found.boxes - ref[:, :4]).max():.2e} px")


def test_recognises_its_outputs_and_no_other_layouts(backend):
    c = card()
    layout = registry.layout("end2end")
    outputs, _ = run(backend, c)
    assert layout.recognises([TensorSpec(n, a.shape, a.dtype.name) for n, a in outputs.items()], c)
    assert layout.recognises(backend.outputs, c)  # as ONNX Runtime declares them
    others = {
        "yolov8": [TensorSpec("output0", (1, 7, 126), "float32")],  # [B, 4 + nc, anchors] at 64x96
        "yolov8 with 2 classes": [TensorSpec("output0", (1, 6, 126), "float32")],
        "rtdetr": [TensorSpec("output0", (1, 300, 7), "float32")],
        "yolox, 1 class": [TensorSpec("output", (1, 126, 6), "float32")],  # a grid's row count
        "yolov5, 1 class": [TensorSpec("output0", (1, 378, 6), "float32")],
        "efficient_nms": [TensorSpec("num_dets", (1, 1), "int32"), TensorSpec("det_boxes", (1, 100, 4), "float32"),
                          TensorSpec("det_scores", (1, 100), "float32"), TensorSpec("det_classes", (1, 100), "int32")],
        "torchvision": [TensorSpec("outputs", (12, 4), "float32"), TensorSpec("2025", (12,), "int64"),
                        TensorSpec("2024", (12,), "float32")],
    }
    for name, specs in others.items():
        assert not layout.recognises(specs, c), name
    # ddddocr's one-class YOLOX detector (../shared/TESTING.md) at its 416x416 input
    ddddocr = ModelCard(name="m", task="detection", arch="external", classes=["text"], input_size=(416, 416))
    assert not layout.recognises([TensorSpec("output", (1, 3549, 6), "float32")], ddddocr)
    assert not registry.layout("yolov8").recognises(backend.outputs, c)


def test_check_refuses_other_outputs_in_one_line(backend):
    c = card()
    layout = registry.layout("end2end")
    layout.check(backend.outputs, c, "m.onnx")
    with pytest.raises(EdgekitError) as e:
        layout.check([TensorSpec("output0", (1, 7, 126), "float32")], c, "m.onnx")
    assert str(e.value) == ("m.onnx: output 'output0' has shape [1, 7, 126]; an end-to-end detector (NMS in the "
                            "graph) has [N, K, 6]: x1, y1, x2, y2, score, class")
    with pytest.raises(EdgekitError, match=r"^m.onnx: output 'output0' has shape \[1, 126, 6\]: 126 rows is a "
                                           r"dense head's row count at 96x64 \(a one-class YOLOv5 or YOLOX"):
        layout.check([TensorSpec("output0", (1, 126, 6), "float32")], c, "m.onnx")


def test_a_class_the_card_lacks_is_a_one_line_error(backend):
    c = card(score_threshold=0.05)
    outputs, transform = run(backend, c)
    assert outputs["output0"][0, :, 5].max() == 2  # the model gives class 2 ...
    two = ModelCard(name="m", task="detection", arch="external", classes=CLASSES[:2], input_size=INPUT,
                    output_layout="end2end", score_threshold=0.05)  # ... the card knows classes 0 and 1
    with pytest.raises(EdgekitError) as e:
        registry.layout("end2end").decode({"output0": outputs["output0"][0]}, transform, two, DecodeParams.of(two))
    assert str(e.value) == ("output 'output0' gives class 2, but the card has 2 classes (0..1): the card's class "
                            "list does not fit this model")


def test_build_engine_recognises_it_and_edgekit_open_runs_it(onnx_file, tmp_path):
    """The whole of it as a user does it: the layout recognised by build-engine, decoded by edgekit.open's Model."""
    engine = tmp_path / "model.engine.onnx"
    stdout = build_and_stream(onnx_file, engine, "--task", "detection", "--classes", ",".join(CLASSES))
    assert "output layout end2end" in stdout
    frame = render_image(seed=5, index=0, size=FRAME).image
    with edgekit.open(engine) as m:
        found = m(frame)
        raw = m.infer(m.preprocess(frame)[0])
    ref = ultralytics_reference(raw["output0"][0], m.card.score_threshold, m.card.max_detections)
    assert len(found) == len(ref) > 0
    np.testing.assert_allclose(found.boxes, ref[:, :4], atol=1e-3)
    assert found.classes.tolist() == ref[:, 5].astype(int).tolist()
