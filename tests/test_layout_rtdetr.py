"""The rtdetr layout against Ultralytics' own post-processing: a small module with the output of Ultralytics'
`RTDETRDecoder` at export (ultralytics/nn/modules/head.py: 300 queries of sigmoid cx, cy, w, h as fractions of the
input, then class sigmoids), exported to ONNX and run by edgekit's ONNX Runtime backend on a frame stretched to the
input, decoded by edgekit and by the reference written from ultralytics/models/rtdetr/predict.py
(`RTDETRPredictor.postprocess`: xywh2xyxy, best class, score over conf, boxes times the frame's width and height)."""


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
INPUT = (64, 96)  # (h, w)
FRAME = (300, 100)  # (w, h): stretched, x by 0.32 and y by 0.64
QUERIES = 300


class TinyRTDETR(torch.nn.Module):
    """RTDETRDecoder's export output in miniature: per query fixed random logits plus a term computed from the image;
    sigmoid boxes and scores. Centres stay in 0.25..0.75 and sizes under 0.5, so every box lies inside the image:
    Ultralytics' predictor does not clip RT-DETR boxes, edgekit clips every box to the frame."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("logits", 1.5 * torch.randn(QUERIES, 4 + len(CLASSES), generator=gen))
        self.mix = torch.nn.Linear(3, 4 + len(CLASSES))
        with torch.no_grad():
            self.mix.weight.copy_(0.5 * torch.randn(self.mix.weight.shape, generator=gen))
            self.mix.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.logits + self.mix(x.mean((2, 3)))[:, None, :]).sigmoid()  # [B, queries, 4 + nc]
        boxes = y[..., :4] * 0.5 + torch.tensor([0.25, 0.25, 0.0, 0.0])
        return torch.cat((boxes, y[..., 4:]), -1)


def ultralytics_reference(preds: torch.Tensor, conf: float, frame_wh: tuple) -> np.ndarray:
    """[x1, y1, x2, y2, score, class] in frame pixels as RTDETRPredictor.postprocess gets them, for one image."""
    nd = preds.shape[-1]
    bbox, score = preds.split((4, nd - 4), dim=-1)
    xy, wh = bbox[..., :2], bbox[..., 2:] / 2  # ops.xywh2xyxy
    bbox = torch.cat((xy - wh, xy + wh), -1)
    max_score, cls = score.max(-1, keepdim=True)
    idx = max_score.squeeze(-1) > conf
    pred = torch.cat([bbox, max_score, cls.float()], dim=-1)[idx]
    ow, oh = frame_wh
    pred[..., [0, 2]] *= ow
    pred[..., [1, 3]] *= oh
    return pred.double().numpy()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rtdetr") / "tiny_rtdetr.onnx"
    export_onnx(TinyRTDETR().eval(), path, INPUT, ["output0"])
    return path


@pytest.fixture(scope="module")
def backend(onnx_file):
    return OnnxRuntimeBackend(onnx_file)


def card(classes=CLASSES, **kw) -> ModelCard:
    return ModelCard(name="tiny-rtdetr", task="detection", arch="external", classes=list(classes), input_size=INPUT,
                     output_layout="rtdetr", resize_mode="stretch", **kw)


def run(backend, c):
    tensor, transform = preprocess(render_image(seed=7, index=0, size=FRAME).image, c)
    return backend.infer([tensor]), transform


def by_score(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray):
    order = np.lexsort((classes, -scores))
    return boxes[order], scores[order], classes[order]


def test_decode_matches_rtdetr_predictor(backend):
    c = card(score_threshold=0.8, max_detections=QUERIES)
    outputs, transform = run(backend, c)
    raw = outputs["output0"]
    assert raw.shape == (1, QUERIES, 4 + len(CLASSES))
    found = registry.layout("rtdetr").decode({"output0": raw[0]}, transform, c, DecodeParams.of(c))
    ref = ultralytics_reference(torch.from_numpy(raw[0]), 0.8, FRAME)

    assert 0 < len(ref) < QUERIES and len(found) == len(ref)
    boxes, scores, classes = by_score(ref[:, :4], ref[:, 4], ref[:, 5].astype(np.int64))
    np.testing.assert_allclose(found.boxes, boxes, atol=1e-3)  # edgekit returns the best first
    np.testing.assert_allclose(found.scores, scores, atol=1e-6)
    assert found.classes.tolist() == classes.tolist()
    assert sorted(set(found.classes.tolist())) == [0, 1, 2]
    print(f"rtdetr: {len(found)} detections, max box difference {np.abs(found.boxes - boxes).max():.2e} px")


def test_max_detections_keeps_the_best_queries(backend):
    c = card(score_threshold=0.8, max_detections=10)
    outputs, transform = run(backend, c)
    found = registry.layout("rtdetr").decode({"output0": outputs["output0"][0]}, transform, c, DecodeParams.of(c))
    ref = ultralytics_reference(torch.from_numpy(outputs["output0"][0]), 0.8, FRAME)
    boxes, scores, classes = by_score(ref[:, :4], ref[:, 4], ref[:, 5].astype(np.int64))
    assert len(found) == 10
    np.testing.assert_allclose(found.boxes, boxes[:10], atol=1e-3)
    np.testing.assert_allclose(found.scores, scores[:10], atol=1e-6)
    assert found.classes.tolist() == classes[:10].tolist()


def test_recognises_its_outputs_and_no_other_layouts(backend):
    c = card()
    layout = registry.layout("rtdetr")
    outputs, _ = run(backend, c)
    assert layout.recognises([TensorSpec(n, a.shape, a.dtype.name) for n, a in outputs.items()], c)
    assert layout.recognises(backend.outputs, c)
    others = {
        "yolov8": [TensorSpec("output0", (1, 7, 126), "float32")],  # [B, 4 + nc, anchors] at 64x96
        "end2end": [TensorSpec("output0", (1, 300, 6), "float32")],
        "yolov5, 2 classes": [TensorSpec("output0", (1, 378, 7), "float32")],  # 5 + 2 columns, 3 x 126 rows
        "yolox, 2 classes": [TensorSpec("output", (1, 126, 7), "float32")],
        "efficient_nms": [TensorSpec("num_dets", (1, 1), "int32"), TensorSpec("det_boxes", (1, 100, 4), "float32"),
                          TensorSpec("det_scores", (1, 100), "float32"), TensorSpec("det_classes", (1, 100), "int32")],
        "torchvision": [TensorSpec("outputs", (12, 4), "float32"), TensorSpec("2025", (12,), "int64"),
                        TensorSpec("2024", (12,), "float32")],
    }
    for name, specs in others.items():
        assert not layout.recognises(specs, c), name
    assert not registry.layout("yolov8").recognises(backend.outputs, c)
    assert not registry.layout("end2end").recognises(backend.outputs, c)


def test_check_refuses_a_wrong_class_count_in_one_line(backend):
    layout = registry.layout("rtdetr")
    layout.check(backend.outputs, card(), "m.onnx")
    with pytest.raises(EdgekitError) as e:
        layout.check(backend.outputs, card(classes=["car", "person"]), "m.onnx")
    assert str(e.value) == ("m.onnx: output 'output0' has shape [1, 300, 7]; an RT-DETR detector with 2 classes "
                            "has [N, queries, 6]")


def test_build_engine_recognises_it_and_edgekit_open_runs_it(onnx_file, tmp_path):
    """The whole of it as a user does it: the layout recognised by build-engine, decoded by edgekit.open's Model."""
    engine = tmp_path / "model.engine.onnx"
    stdout = build_and_stream(onnx_file, engine, "--task", "detection", "--classes", ",".join(CLASSES), "--resize",
                              "stretch")
    assert "output layout rtdetr" in stdout
    frame = render_image(seed=7, index=0, size=FRAME).image
    with edgekit.open(engine) as m:
        found = m(frame)
        raw = m.infer(m.preprocess(frame)[0])
    ref = ultralytics_reference(torch.from_numpy(raw["output0"][0]), m.card.score_threshold, FRAME)
    boxes, scores, classes = by_score(ref[:, :4], ref[:, 4], ref[:, 5].astype(np.int64))
    ref = np.concatenate([boxes, scores[:, None], classes[:, None]], 1)[: m.card.max_detections]
    assert len(found) == len(ref) > 0
    np.testing.assert_allclose(found.boxes, ref[:, :4], atol=1e-3)
    assert found.classes.tolist() == ref[:, 5].astype(int).tolist()
