"""The layout registry: each layout recognises its own outputs and refuses others with a one-line error."""

import numpy as np
import pytest

from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import Transform


def card(task: str, layout: str = "") -> ModelCard:
    return ModelCard(name="m", task=task, arch="external", classes=["a", "b", "c"], input_size=(64, 96),
                     output_layout=layout)


SHAPES = {"yolov8": (1, 7, 126), "logits": (1, 3, 64, 96)}


def test_every_task_has_a_default_layout_and_every_layout_a_registered_task():
    for task in registry.task_names():
        assert registry.layouts(task)[0].default and card(task).output_layout == registry.default_layout(task)
    for layout in registry.layouts():
        assert layout.task in registry.task_names()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_a_layout_recognises_its_outputs_and_no_other(name):
    layout = registry.layout(name)
    c = card(layout.task, name)
    assert layout.recognises([TensorSpec("output0", SHAPES[name], "float32")], c)
    for other, shape in SHAPES.items():
        if other != name:
            assert not layout.recognises([TensorSpec("output0", shape, "float32")], c)
            with pytest.raises(EdgekitError, match="output 'output0' has shape"):
                layout.check([TensorSpec("output0", shape[:2], "float32")], c, "m.onnx")


def test_yolov8_decode_in_frame_pixels():
    c = card("detection")
    raw = np.zeros((1, 7, 3), np.float32)
    raw[0, :4, 0] = [48, 32, 20, 10]  # cx, cy, w, h in input pixels
    raw[0, 4 + 2, 0] = 0.9  # class c
    raw[0, 4, 1] = 0.1  # below the threshold
    tf = Transform(0.5, 0.5, 0.0, 8.0, 192, 96)  # frame 192x96 letterboxed into 96x64: scale 0.5, pad 8 rows
    d = registry.layout("yolov8").decode({"output0": raw[0]}, tf, c, DecodeParams.of(c))
    assert d.classes.tolist() == [2] and d.scores.tolist() == pytest.approx([0.9])
    np.testing.assert_allclose(d.boxes, [[76, 38, 116, 58]])


def test_unknown_or_mismatched_layouts_in_a_card():
    with pytest.raises(EdgekitError, match="output.layout 'logits' does not fit task 'detection'"):
        card("detection", "logits")
    with pytest.raises(EdgekitError, match="unknown output layout .yolov9. \\(did you mean yolov8"):
        registry.layout("yolov9")
