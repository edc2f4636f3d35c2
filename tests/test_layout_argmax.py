"""The argmax layout on real ONNX graphs: a small PyTorch segmenter exported three ways (logits, and the class
index computed in the graph as [B, H, W] and [B, 1, H, W], int64 and narrower), run by ONNX Runtime; the
argmax layout must draw exactly what the logits layout draws from the same network."""

import warnings

import cv2
import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import Transform, preprocess

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

CLASSES = ["background", "red", "green", "blue"]
SIZE = (64, 96)  # (h, w) of the network input
FRAME_H, FRAME_W = 120, 200  # wider than the input: letterboxed, 3 rows of padding above and below


def card(layout="argmax", classes=CLASSES, size=SIZE) -> ModelCard:
    return ModelCard(name="seg", task="segmentation", arch="external", classes=list(classes), input_size=size,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), output_layout=layout)


class Segmenter(torch.nn.Module):
    """Per-pixel colour classes from a fixed 1x1 conv, so every class shows up on a coloured frame."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.pool = torch.nn.AvgPool2d(stride) if stride > 1 else torch.nn.Identity()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        torch.manual_seed(0)
        with torch.no_grad():
            self.conv.weight.normal_(0, 0.05)
            self.conv.weight[1:, :, 1, 1] += torch.eye(3)  # RGB input: class 1 red, 2 green, 3 blue
            self.conv.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def forward(self, x):
        return self.conv(self.pool(x))


class InGraph(torch.nn.Module):
    def __init__(self, net, keepdim: bool, dtype):
        super().__init__()
        self.net, self.keepdim, self.dtype = net, keepdim, dtype

    def forward(self, x):
        return self.net(x).argmax(1, keepdim=self.keepdim).to(self.dtype)


def export(module, path):
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, as in edgekit's export
        torch.onnx.export(module, (torch.zeros(1, 3, *SIZE),), str(path), opset_version=17, dynamo=False,
                          input_names=["images"], output_names=["output0"])
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frame():
    """Coloured shapes on black (BGR): the four classes in known places."""
    img = np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    cv2.rectangle(img, (10, 10), (80, 60), (0, 0, 255), -1)
    cv2.circle(img, (130, 70), 35, (0, 255, 0), -1)
    cv2.rectangle(img, (30, 80), (190, 110), (255, 0, 0), -1)
    return img


def run(session, frame, c):
    tensor, transform = preprocess(frame, c)
    (out,) = session.run(None, {"images": tensor})
    return out, transform


@pytest.mark.parametrize("keepdim, dtype", [(False, "int64"), (True, "int64"), (False, "int32"), (True, "uint8")])
def test_the_class_map_equals_the_logits_layouts(tmp_path, frame, keepdim, dtype):
    net = Segmenter()
    logits_out, transform = run(export(net, tmp_path / "logits.onnx"), frame, card("logits"))
    classes_out, _ = run(export(InGraph(net, keepdim, getattr(torch, dtype)), tmp_path / "argmax.onnx"), frame, card())
    assert classes_out.dtype == np.dtype(dtype) and classes_out.shape == ((1, 1) if keepdim else (1,)) + SIZE

    c = card()
    argmax = registry.layout("argmax")
    specs = [TensorSpec("output0", classes_out.shape, classes_out.dtype.name)]
    assert argmax.recognises(specs, c)
    argmax.check(specs, c, "seg.onnx")
    got = argmax.decode({"output0": classes_out[0]}, transform, c, DecodeParams.of(c)).classes
    want = registry.layout("logits").decode({"output0": logits_out[0]}, transform, card("logits"),
                                            DecodeParams.of(c)).classes
    np.testing.assert_array_equal(got, want)
    assert got.shape == (FRAME_H, FRAME_W) and set(np.unique(got)) == {0, 1, 2, 3}
    # The shapes land where they were drawn (a frame pixel well inside each one).
    assert [got[35, 45], got[70, 130], got[95, 110], got[5, 195]] == [1, 2, 3, 0]


def test_a_map_at_a_quarter_of_the_input_size_is_brought_back_to_the_frame(tmp_path, frame):
    """Heads that leave out the final upsampling: the map is nearest-upsampled to the input, then the
    letterbox is cropped, as for a full-size map."""
    out, transform = run(export(InGraph(Segmenter(stride=4), False, torch.int64), tmp_path / "s4.onnx"), frame,
                         card())
    assert out.shape == (1, 16, 24)
    c = card()
    argmax = registry.layout("argmax")
    assert argmax.recognises([TensorSpec("output0", out.shape, "int64")], c)
    got = argmax.decode({"output0": out[0]}, transform, c, DecodeParams.of(c)).classes
    # By hand: each cell covers 4x4 input pixels; the picture fills input rows 3..60 (scale 0.48).
    full = np.repeat(np.repeat(out[0], 4, 0), 4, 1).astype(np.uint8)
    want = cv2.resize(full[3:61], (FRAME_W, FRAME_H), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) == {0, 1, 2, 3}


def test_a_class_index_the_card_does_not_name_is_an_error_not_a_crash_in_drawing():
    """Chosen: an error, not clipping. Clipping would colour and score those pixels as the card's last class."""
    c = card()
    argmax = registry.layout("argmax")
    tf = Transform.identity(96, 64)
    out = np.zeros((64, 96), np.int64)
    out[10:20, 10:20] = 3
    result = argmax.decode({"output0": out}, tf, c, DecodeParams.of(c))
    image = np.full((64, 96, 3), 200, np.uint8)
    registry.task("segmentation").draw(image, result, c)
    assert (image[15, 15] != 200).any() and (image[40, 40] == 200).all()
    for bad in (4, 150, -1):
        out[0, 0] = bad
        with pytest.raises(EdgekitError, match=f"class index {bad}, but the card has 4 classes .0..3.; list every "):
            argmax.decode({"output0": out}, tf, c, DecodeParams.of(c))


LOGITS = TensorSpec("output0", (1, 4, 64, 96), "float32")
BINARY = TensorSpec("output0", (1, 1, 64, 96), "float32")


@pytest.mark.parametrize("shape, dtype, yes", [
    ((1, 64, 96), "int64", True), ((1, 1, 64, 96), "int64", True), ((1, 64, 96), "int32", True),
    ((1, 1, 64, 96), "uint8", True), ((1, 8, 12), "int64", True),  # stride 8
    ((1, 33, 49), "int64", True),  # stride 2 of an odd-sized input rounds up or down
    ((1, 4, 64, 96), "float32", False),  # logits
    ((1, 1, 64, 96), "float32", False),  # one sigmoid channel: binary
    ((1, 64, 96), "float32", False),
    ((1, 4, 64, 96), "int64", False),  # several integer channels are no class map
    ((1, 50, 50), "int64", False),  # covers no 64x96 input
    ((1, 64, 96), "bool", False), ((1, 64, 96), "tensor(bool)", False),
])
def test_recognises_class_indices_and_nothing_else(shape, dtype, yes):
    c = card(size=(65, 97)) if shape == (1, 33, 49) else card()
    assert registry.layout("argmax").recognises([TensorSpec("output0", shape, dtype)], c) is yes


def test_the_other_segmentation_layouts_leave_class_indices_alone():
    c = card("logits")
    for spec in (TensorSpec("output0", (1, 64, 96), "int64"), TensorSpec("output0", (1, 1, 64, 96), "int64")):
        assert not registry.layout("logits").recognises([spec], c)
        assert not registry.layout("binary").recognises([spec], card("binary", ["background", "text"]))
    assert registry.layout("logits").recognises([LOGITS], c)
    assert not registry.layout("argmax").recognises([LOGITS, LOGITS], c)
    assert not registry.layout("argmax").recognises([BINARY], c)


def test_check_refuses_what_would_mislead_in_one_line():
    argmax = registry.layout("argmax")
    cases = [
        (card(), LOGITS, "layout 'logits'"),
        (card(), TensorSpec("output0", (1, 64, 96), "float32"), "expects integer class indices"),
        (card(), TensorSpec("output0", (1, 50, 50), "int64"), "50x50, which does not cover the card's 64x96 input"),
        (card(classes=[f"c{i}" for i in range(300)]), TensorSpec("output0", (1, 64, 96), "int64"), "at most 256"),
    ]
    for c, spec, fragment in cases:
        with pytest.raises(EdgekitError) as e:
            argmax.check([spec], c, "seg.onnx")
        assert str(e.value).startswith("seg.onnx: ") and fragment in str(e.value) and "\n" not in str(e.value)
    argmax.check([TensorSpec("output0", ("N", "H", "W"), "int64")], card(), "seg.onnx")  # dynamic axes
    argmax.check([TensorSpec("output0", (-1, 1, -1, -1), "int64")], card(), "seg.engine")  # TensorRT's dynamic
    with pytest.raises(EdgekitError, match="unknown parameter.*for layout 'argmax' .it takes: none."):
        ModelCard(name="seg", task="segmentation", arch="external", classes=CLASSES, input_size=SIZE,
                  output_layout="argmax", layout_params={"threshold": 0.5})


def test_build_engine_recognises_it_and_run_stream_runs_it(tmp_path):
    from conftest import build_and_stream

    export(InGraph(Segmenter(), keepdim=False, dtype=torch.int64), tmp_path / "argmax.onnx")
    stdout = build_and_stream(tmp_path / "argmax.onnx", tmp_path / "e.onnx", "--task", "segmentation", "--classes",
                              ",".join(CLASSES), "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25")
    assert "output layout argmax" in stdout
