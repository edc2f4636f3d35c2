"""The torchvision layout against the model itself: a real torchvision SSDlite (MobileNetV3-Large, 320, random
weights, 3 classes plus background) exported to ONNX as pytorch/vision test/test_onnx.py does (a list of one CHW
image, input `images_tensors`, first output `outputs`, the TorchScript exporter), run by edgekit's ONNX Runtime
backend on a letterboxed frame, decoded by edgekit and compared with the PyTorch model's own detections on the same
input, mapped to the frame as Ultralytics' and YOLOv7's `scale_boxes` do. SSD's export lists boxes, scores, labels
(Faster R-CNN's: boxes, labels, scores), so the order is tested too."""

import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import build_and_stream

import edgekit
from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data.synth import render_image
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import preprocess

CLASSES = ["car", "person", "sign"]  # torchvision labels 1..3; 0 is its background
INPUT = (240, 320)  # (h, w); the model resizes it to 320x320 inside the graph and maps boxes back
FRAME = (200, 100)  # (w, h): letterboxed by 1.6 to 320x160, 40 rows of padding above and below


def card(classes=CLASSES, **kw) -> ModelCard:
    return ModelCard(name="frcnn", task="detection", arch="external", classes=list(classes), input_size=INPUT,
                     output_layout="torchvision", **kw)


def frame_tensor():
    return preprocess(render_image(seed=3, index=1, size=FRAME).image, card())


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    # score_thresh 0.001 by default: random weights still give boxes
    net = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=1 + len(CLASSES), detections_per_img=100)
    # With BatchNorm's initial statistics a random network's features fade away and every box gets one score;
    # statistics from a few frames make the detections differ as a trained model's do.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        images = [torch.from_numpy(preprocess(render_image(seed=3, index=i, size=FRAME).image, card())[0][0])
                  for i in range(2, 5)]
        net.head(list(net.backbone(net.transform(images)[0].tensors).values()))  # normalised, resized as in the graph
    return net.eval()


@pytest.fixture(scope="module")
def model(net, tmp_path_factory):
    """(edgekit's backend on the ONNX export, its outputs, the PyTorch model's own, the frame's transform)."""
    path = tmp_path_factory.mktemp("torchvision") / "ssdlite.onnx"
    tensor, transform = frame_tensor()
    image = torch.from_numpy(tensor[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(net, ([image],), str(path), input_names=["images_tensors"], output_names=["outputs"],
                          dynamic_axes={"images_tensors": [0, 1, 2]}, opset_version=17, dynamo=False)
    backend = OnnxRuntimeBackend(path)
    with torch.no_grad():
        own = {k: v.numpy() for k, v in net([image])[0].items()}
    return backend, backend.infer([tensor[0]]), own, transform  # one CHW image in, no batch axis out


def run(model):
    """(ONNX Runtime's outputs by name, the PyTorch model's own detections, the frame's transform)."""
    return model[1:]


def reference(own: dict, conf: float, max_det: int, offset: int = 1) -> np.ndarray:
    """The PyTorch model's detections over conf, best first, at most max_det, as [x1, y1, x2, y2, score, class] in
    frame pixels (scale_boxes: gain, centred padding, clip)."""
    keep = np.argsort(-own["scores"], kind="stable")
    keep = keep[own["scores"][keep] > conf][:max_det]
    rows = np.concatenate([own["boxes"][keep], own["scores"][keep, None], own["labels"][keep, None] - offset],
                          1).astype(np.float64)
    (in_h, in_w), (w, h) = INPUT, FRAME
    gain = min(in_h / h, in_w / w)
    pad = (round((in_w - w * gain) / 2 - 0.1), round((in_h - h * gain) / 2 - 0.1))
    rows[:, [0, 2]] = ((rows[:, [0, 2]] - pad[0]) / gain).clip(0, w)
    rows[:, [1, 3]] = ((rows[:, [1, 3]] - pad[1]) / gain).clip(0, h)
    return rows


def test_decode_matches_the_pytorch_model(model):
    outputs, own, transform = run(model)
    # between two adjacent scores, so a last-digit difference between ONNX Runtime and PyTorch cannot move a box
    ranked = np.sort(own["scores"])
    threshold = float(ranked[len(ranked) // 3: len(ranked) // 3 + 2].mean())
    c = card(score_threshold=threshold, max_detections=100)
    found = registry.layout("torchvision").decode(outputs, transform, c, DecodeParams.of(c))
    ref = reference(own, threshold, 100)

    assert 20 < len(ref) < len(own["scores"]) and len(found) == len(ref)
    assert found.classes.tolist() == ref[:, 5].astype(int).tolist()
    assert sorted(set(found.classes.tolist())) == [0, 1, 2]
    np.testing.assert_allclose(found.scores, ref[:, 4], atol=1e-5)
    np.testing.assert_allclose(found.boxes, ref[:, :4], atol=1e-3)  # ONNX Runtime's and PyTorch's arithmetic
    # the decoding alone: ONNX Runtime's own detections through the same reference
    ort_own = {"boxes": next(a for a in outputs.values() if a.ndim == 2),
               "scores": next(a for a in outputs.values() if a.ndim == 1 and a.dtype == np.float32),
               "labels": next(a for a in outputs.values() if a.dtype == np.int64)}
    alone = reference(ort_own, threshold, 100)
    np.testing.assert_allclose(found.boxes, alone[:, :4], atol=1e-4)
    ten = card(score_threshold=threshold, max_detections=10)
    best = registry.layout("torchvision").decode(outputs, transform, ten, DecodeParams.of(ten))
    np.testing.assert_allclose(best.boxes, ref[:10, :4], atol=1e-3)
    assert best.classes.tolist() == ref[:10, 5].astype(int).tolist()
    print(f"torchvision: {len(found)} detections, max box difference {np.abs(found.boxes - ref[:, :4]).max():.2e} "
          f"px against PyTorch, {np.abs(found.boxes - alone[:, :4]).max():.2e} px decoding alone")


def test_label_offset_zero_for_a_card_that_lists_the_background(model):
    outputs, own, transform = run(model)
    c = card(classes=["__background__"] + CLASSES, score_threshold=0.01, layout_params={"label_offset": 0})
    found = registry.layout("torchvision").decode(outputs, transform, c, DecodeParams.of(c))
    assert found.classes.tolist() == reference(own, 0.01, 100, offset=0)[:, 5].astype(int).tolist()
    assert found.classes.min() >= 1


def test_recognises_its_outputs_by_shape_and_dtype(model):
    c = card()
    layout = registry.layout("torchvision")
    outputs, _, _ = run(model)
    backend = model[0]
    assert [s.name for s in backend.outputs][0] == "outputs"  # the others get numbers for names
    assert layout.recognises([TensorSpec(n, a.shape, a.dtype.name) for n, a in outputs.items()], c)
    assert layout.recognises(backend.outputs, c)
    # Faster R-CNN's export lists boxes, labels, scores (measured with fasterrcnn_mobilenet_v3_large_320_fpn); an
    # image without detections gives N = 0
    frcnn = [TensorSpec("outputs", (0, 4), "float32"), TensorSpec("2025", (0,), "int64"),
             TensorSpec("2024", (0,), "float32")]
    assert layout.recognises(frcnn, c)
    others = {
        "yolov8": [TensorSpec("output0", (1, 7, 2100), "float32")],
        "end2end": [TensorSpec("output0", (1, 300, 6), "float32")],
        "rtdetr": [TensorSpec("output0", (1, 300, 7), "float32")],
        "efficient_nms": [TensorSpec("num_dets", (1, 1), "int32"), TensorSpec("det_boxes", (1, 100, 4), "float32"),
                          TensorSpec("det_scores", (1, 100), "float32"), TensorSpec("det_classes", (1, 100), "int32")],
        "mask r-cnn": [TensorSpec("boxes", (5, 4), "float32"), TensorSpec("labels", (5,), "int64"),
                       TensorSpec("scores", (5,), "float32"), TensorSpec("masks", (5, 1, 240, 320), "float32")],
        "rt-detr original": [TensorSpec("labels", (1, 300), "int64"), TensorSpec("boxes", (1, 300, 4), "float32"),
                             TensorSpec("scores", (1, 300), "float32")],
    }
    for name, specs in others.items():
        assert not layout.recognises(specs, c), name
    for other in ("yolov8", "end2end", "rtdetr", "efficient_nms"):
        assert not registry.layout(other).recognises(backend.outputs, c), other


def test_check_and_decode_errors_are_one_line(model):
    outputs, _, transform = run(model)
    layout = registry.layout("torchvision")
    layout.check(model[0].outputs, card(), "m.onnx")
    with pytest.raises(EdgekitError) as e:
        layout.check([TensorSpec("output0", (1, 300, 6), "float32")], card(), "m.onnx")
    assert str(e.value) == ("m.onnx: outputs 'output0' [1, 300, 6] float32; a torchvision detector has three, "
                            "without a batch axis: boxes float [N, 4], labels int64 [N], scores float [N]")
    # the model gives labels 1..3; a card with two classes lacks label 3
    two = card(classes=CLASSES[:2], score_threshold=0.01)
    with pytest.raises(EdgekitError) as e:
        layout.decode(outputs, transform, two, DecodeParams.of(two))
    assert "\n" not in str(e.value)
    assert str(e.value).endswith("gives label 3, which is class 2 with label_offset 1, but the card has 2 classes: "
                                 "list them without the background and label_offset 1, or with it first and "
                                 "label_offset 0")
    # edgekit takes an image out of a batch of outputs with Layout.image: this layout's have no batch axis
    whole = layout.image(outputs, 0)
    assert all(whole[n] is a for n, a in outputs.items())
    with pytest.raises(EdgekitError, match="^a torchvision detector's graph takes one image and gives its detections "
                                           "only; there is no image 1 in its outputs$"):
        layout.image(outputs, 1)
    # ... where a caller indexed them anyway, decoding says so rather than reading one box as four detections
    with pytest.raises(EdgekitError, match="indexed by image, but a torchvision detector's outputs have no batch "
                                           "axis and must be passed whole$"):
        layout.decode({n: a[0] for n, a in outputs.items()}, transform, card(), DecodeParams.of(card()))


def test_build_engine_recognises_it_and_edgekit_open_runs_it(net, tmp_path):
    """The whole of it as a user does it, exported with one NCHW tensor (edgekit's input) rather than a list."""
    tensor, _ = frame_tensor()
    onnx_file, engine = tmp_path / "ssdlite_nchw.onnx", tmp_path / "ssdlite.engine.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(tensor),), str(onnx_file), input_names=["images"], opset_version=17,
                          dynamo=False)
    stdout = build_and_stream(onnx_file, engine, "--task", "detection", "--classes", ",".join(CLASSES))
    assert "output layout torchvision" in stdout
    with torch.no_grad():
        own = {k: v.numpy() for k, v in net(torch.from_numpy(tensor))[0].items()}
    with edgekit.open(engine) as m:
        found = m(render_image(seed=3, index=1, size=FRAME).image)
    ref = reference(own, m.card.score_threshold, m.card.max_detections)
    assert len(found) == len(ref) > 0
    np.testing.assert_allclose(found.boxes, ref[:, :4], atol=1e-3)
    assert found.classes.tolist() == ref[:, 5].astype(int).tolist()
