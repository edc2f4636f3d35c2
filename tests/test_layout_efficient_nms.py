"""The efficient_nms layout against the EfficientNMS_TRT plugin's documented outputs (NVIDIA/TensorRT
plugin/efficientNMSPlugin/README.md: only the first num_detections rows of boxes, scores and classes are valid; boxes
are corners whatever the input coding), with YOLOv7's TensorRT end2end names and dtypes (models/experimental.py,
TRT_NMS: num_dets, det_boxes, det_scores, det_classes, int32 counts and classes).

The plugin runs only inside TensorRT, so a small module writes its four outputs the way it documents them: YOLOv7
centre-size boxes and scores, the best `max_output_boxes` by score as corners, num_dets counting those over the
plugin's score threshold. Rows past num_dets are kept as real lower-scored boxes, not zeros, so a decoder that
reads past num_dets is caught. (The plugin's IoU suppression is left out: decoding reads its result the same
either way.) Exported to ONNX, run by edgekit's ONNX Runtime backend on a letterboxed frame, and mapped back as
YOLOv7's `scale_coords` does."""


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
INPUT = (64, 96)  # (h, w); the 150x150 frame letterboxes to 64x64 with 16 columns of padding left and right
FRAME = (150, 150)  # (w, h)
STRIDE, MAX_OUT, PLUGIN_THRESHOLD = 8, 40, 0.85
NAMES = ["num_dets", "det_boxes", "det_scores", "det_classes"]  # YOLOv7 export.py


class TinyEfficientNMS(torch.nn.Module):
    """Per 8x8 cell a centre-size box in input pixels and class sigmoids (fixed random logits plus a term computed
    from the image), then the plugin's four outputs."""

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

    def forward(self, x: torch.Tensor):
        y = self.logits + self.conv(x).flatten(2).transpose(1, 2)  # [B, cells, 4 + nc]
        xy = self.centres + (y[..., :2].sigmoid() - 0.5) * 2 * STRIDE
        half = y[..., 2:4].sigmoid() * 2 * STRIDE
        corners = torch.cat((xy - half, xy + half), -1)  # box_coding 1 in, corners out
        best, cls = y[..., 4:].sigmoid().max(-1)
        scores, index = best.topk(MAX_OUT, dim=1)
        num = (scores > PLUGIN_THRESHOLD).sum(1, keepdim=True).to(torch.int32)
        boxes = corners.gather(1, index[..., None].expand(-1, -1, 4))
        return num, boxes, scores, cls.gather(1, index).to(torch.int32)


def plugin_reference(out: dict, conf: float, max_det: int) -> np.ndarray:
    """[x1, y1, x2, y2, score, class] in frame pixels: the README's valid rows, the card's threshold on top, mapped
    back as YOLOv7's scale_coords (gain, centred padding, clip)."""
    n = int(out["num_dets"][0, 0])
    rows = np.concatenate([out["det_boxes"][0, :n], out["det_scores"][0, :n, None],
                           out["det_classes"][0, :n, None]], 1).astype(np.float64)
    rows = rows[rows[:, 4] > conf][:max_det]
    (in_h, in_w), (w, h) = INPUT, FRAME
    gain = min(in_h / h, in_w / w)
    pad = ((in_w - w * gain) / 2, (in_h - h * gain) / 2)
    rows[:, [0, 2]] = ((rows[:, [0, 2]] - pad[0]) / gain).clip(0, w)
    rows[:, [1, 3]] = ((rows[:, [1, 3]] - pad[1]) / gain).clip(0, h)
    return rows


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("efficient_nms") / "tiny_efficient_nms.onnx"
    export_onnx(TinyEfficientNMS().eval(), path, INPUT, NAMES)
    return path


@pytest.fixture(scope="module")
def backend(onnx_file):
    return OnnxRuntimeBackend(onnx_file)


def card(classes=CLASSES, **kw) -> ModelCard:
    return ModelCard(name="tiny-trt-end2end", task="detection", arch="external", classes=list(classes),
                     input_size=INPUT, output_layout="efficient_nms", **kw)


def run(backend, c):
    tensor, transform = preprocess(render_image(seed=11, index=0, size=FRAME).image, c)
    return backend.infer([tensor]), transform


def one_image(outputs: dict) -> dict:
    return {name: a[0] for name, a in outputs.items()}


@pytest.mark.parametrize("threshold,max_det", [(0.25, 100), (0.95, 100), (0.25, 4)],
                         ids=["plugin-threshold", "card-threshold-higher", "max-detections"])
def test_decode_reads_the_first_num_detections_rows(backend, threshold, max_det):
    c = card(score_threshold=threshold, max_detections=max_det)
    outputs, transform = run(backend, c)
    assert [s.dtype for s in backend.outputs] == ["int32", "float32", "float32", "int32"]
    n = int(outputs["num_dets"][0, 0])
    assert 4 < n < MAX_OUT and outputs["det_scores"][0, n:].min() > 0  # valid rows, then real boxes past them
    found = registry.layout("efficient_nms").decode(one_image(outputs), transform, c, DecodeParams.of(c))
    ref = plugin_reference(outputs, threshold, max_det)

    assert len(found) == len(ref) > 0
    if (threshold, max_det) == (0.25, 100):
        assert len(found) == n
        assert len(set(found.classes.tolist())) > 1
        print(f"efficient_nms: {len(found)} detections, max box difference "
              f"{np.abs(found.boxes - ref[:, :4]).max():.2e} px")
    else:
        assert len(found) < n
    np.testing.assert_allclose(found.boxes, ref[:, :4], atol=1e-3)
    np.testing.assert_allclose(found.scores, ref[:, 4], atol=1e-6)
    assert found.classes.tolist() == ref[:, 5].astype(int).tolist()


def test_outputs_are_told_apart_by_shape_and_dtype_not_name_or_order(backend):
    c = card()
    outputs, transform = run(backend, c)
    params = DecodeParams.of(c)
    expected = registry.layout("efficient_nms").decode(one_image(outputs), transform, c, params)
    # the plugin documentation's names, listed in another order
    renamed = {"detection_classes": outputs["det_classes"][0], "detection_scores": outputs["det_scores"][0],
               "num_detections": outputs["num_dets"][0], "detection_boxes": outputs["det_boxes"][0]}
    found = registry.layout("efficient_nms").decode(renamed, transform, c, params)
    np.testing.assert_array_equal(found.boxes, expected.boxes)
    assert found.classes.tolist() == expected.classes.tolist()
    # max_output_boxes 1: count and classes are both int32 [1]; the name says which is the count
    single = {"det_classes": np.array([2], np.int32), "det_scores": np.array([0.9], np.float32),
              "det_boxes": np.array([[10, 20, 30, 40]], np.float32), "num_dets": np.array([1], np.int32)}
    one = registry.layout("efficient_nms").decode(single, transform, c, params)
    assert one.classes.tolist() == [2] and one.scores.tolist() == pytest.approx([0.9])


def test_recognises_its_outputs_and_no_other_layouts(backend):
    c = card()
    layout = registry.layout("efficient_nms")
    outputs, _ = run(backend, c)
    assert layout.recognises([TensorSpec(n, a.shape, a.dtype.name) for n, a in outputs.items()], c)
    assert layout.recognises(backend.outputs, c)
    trt = [TensorSpec("detection_boxes", (-1, 100, 4), "float16"), TensorSpec("num_detections", (-1, 1), "int32"),
           TensorSpec("detection_scores", (-1, 100), "float16"), TensorSpec("detection_classes", (-1, 100), "int32")]
    assert layout.recognises(trt, c)  # as a TensorRT engine with a dynamic batch and FP16 outputs lists them
    others = {
        "yolov8": [TensorSpec("output0", (1, 7, 126), "float32")],
        "end2end": [TensorSpec("output0", (1, 300, 6), "float32")],
        "rtdetr": [TensorSpec("output0", (1, 300, 7), "float32")],
        "torchvision": [TensorSpec("outputs", (12, 4), "float32"), TensorSpec("2025", (12,), "int64"),
                        TensorSpec("2024", (12,), "float32")],
        "yolov8-seg": [TensorSpec("output0", (1, 39, 126), "float32"), TensorSpec("output1", (1, 32, 16, 24),
                                                                                  "float32")],
        "counts and boxes disagree": [TensorSpec("num_dets", (1, 1), "int32"),
                                      TensorSpec("det_boxes", (1, 100, 4), "float32"),
                                      TensorSpec("det_scores", (1, 50), "float32"),
                                      TensorSpec("det_classes", (1, 100), "int32")],
    }
    for name, specs in others.items():
        assert not layout.recognises(specs, c), name
    for other in ("yolov8", "end2end", "rtdetr"):
        assert not registry.layout(other).recognises(backend.outputs, c), other


def test_check_refuses_other_outputs_in_one_line(backend):
    layout = registry.layout("efficient_nms")
    layout.check(backend.outputs, card(), "m.onnx")
    with pytest.raises(EdgekitError) as e:
        layout.check([TensorSpec("output0", (1, 300, 6), "float32")], card(), "m.onnx")
    assert str(e.value) == ("m.onnx: outputs 'output0' [1, 300, 6] float32; an EfficientNMS_TRT detector has four: "
                            "num_detections int32 [N, 1], boxes [N, max, 4], scores [N, max], classes int32 [N, max]")


def test_a_class_the_card_lacks_is_a_one_line_error(backend):
    c = card(classes=CLASSES[:2])
    outputs, transform = run(backend, c)
    n = int(outputs["num_dets"][0, 0])
    assert outputs["det_classes"][0, :n].max() == 2
    with pytest.raises(EdgekitError) as e:
        registry.layout("efficient_nms").decode(one_image(outputs), transform, c, DecodeParams.of(c))
    assert str(e.value) == ("output 'det_classes' gives class 2, but the card has 2 classes (0..1): the card's class "
                            "list does not fit this model")


def test_build_engine_recognises_it_and_edgekit_open_runs_it(onnx_file, tmp_path):
    """The whole of it as a user does it: the layout recognised by build-engine, decoded by edgekit.open's Model."""
    engine = tmp_path / "model.engine.onnx"
    stdout = build_and_stream(onnx_file, engine, "--task", "detection", "--classes", ",".join(CLASSES))
    assert "output layout efficient_nms" in stdout
    frame = render_image(seed=11, index=0, size=FRAME).image
    with edgekit.open(engine) as m:
        found = m(frame)
        raw = m.infer(m.preprocess(frame)[0])
    ref = plugin_reference(raw, m.card.score_threshold, m.card.max_detections)
    assert len(found) == len(ref) > 0
    np.testing.assert_allclose(found.boxes, ref[:, :4], atol=1e-3)
    assert found.classes.tolist() == ref[:, 5].astype(int).tolist()
