"""Segmentation results bring themselves to the frame lazily (ClassMap.at_model, Instances.at_input): what they
give when read, drawn, serialized and scored is what the eager frame-size results gave, pixel for pixel and byte
for byte, on real model outputs (the shipped segmenter; a YOLOv8-seg head over noise prototypes, whose masks have
many edges) at frame sizes that shrink, enlarge, keep and oddly scale the network input."""

import dataclasses
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

import edgekit
from edgekit.runtime import draw, registry
from edgekit.runtime.data import datasets
from edgekit.runtime.data.synth import VideoScene, render_image
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.layouts.logits import class_map
from edgekit.runtime.preprocess import preprocess
from edgekit.runtime.tasks.instance import FrameMask, Instances, linear_taps, resample, shows, window
from edgekit.runtime.tasks.segmentation import ClassMap, frame_weights, to_frame
from tests.test_instance import SIZE, TinyYoloV8Seg, export
from tests.test_instance import card as instance_card

FRAMES = [(640, 480), (200, 120), (160, 120), (320, 240), (517, 333), (90, 211)]  # width, height


# --- the eager results and what the tasks did with them, as they were ------------------------------------------
def eager_masks(masks, transform, in_w, in_h):
    """masks_to_frame as it was: a frame-size stack allocated, each window resampled into it."""
    x0, y0, x1, y1 = transform.valid_region(in_w, in_h)
    fw, fh = transform.src_w, transform.src_h
    out = np.zeros((len(masks), fh, fw), bool)
    taps_x, taps_y = linear_taps(fw, x1 - x0), linear_taps(fh, y1 - y0)
    for k, m in enumerate(masks):
        h, w = m.pixels.shape
        a0, a1 = max(m.x, x0) - x0, min(m.x + w, x1) - x0
        b0, b1 = max(m.y, y0) - y0, min(m.y + h, y1) - y0
        if a0 >= a1 or b0 >= b1:
            continue
        part = m.pixels[b0 + y0 - m.y:b1 + y0 - m.y, a0 + x0 - m.x:a1 + x0 - m.x].astype(np.float32)
        c0, c1, cols = window(taps_x, a0, a1)
        r0, r1, rows = window(taps_y, b0, b1)
        if cols is None or rows is None:
            continue
        out[k, r0:r1, c0:c1] = resample(part, rows, cols) > 0.5
    return out


def eager_instance_draw(image, masks, result, card):
    colours = draw.palette(card.num_classes).astype(np.float32)
    for m, c in zip(masks, result.classes):
        image[m] = (image[m] * 0.5 + colours[c] * 0.5).astype(np.uint8)
    draw.draw_boxes(image, result.boxes, result.scores, result.classes, card.classes)


def eager_instance_json(masks, result, card):
    return {"detections": [
        {"class": card.classes[int(c)], "class_id": int(c), "score": round(float(s), 4),
         "box": [round(float(v), 1) for v in b], "mask": datasets.rle_encode(m)}
        for b, s, c, m in zip(result.boxes, result.scores, result.classes, masks)]}


def eager_pixel_share(classes, names):
    share = np.bincount(classes.ravel(), minlength=len(names)) / classes.size
    return {n: round(float(s), 4) for n, s in zip(names, share)}


# --- semantic: the shipped segmenter --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def segmenter():
    from edgekit.build.demo import SHIPPED

    return edgekit.open(SHIPPED["segmentation"], device="cpu")  # the checkpoint, run by torch


@pytest.mark.parametrize("resize_mode", ["stretch", "letterbox"])
def test_class_maps_are_the_eager_ones(segmenter, resize_mode):
    card = dataclasses.replace(segmenter.card, resize_mode=resize_mode)
    task = registry.task("segmentation")
    for i, size in enumerate(FRAMES):
        frame = render_image(seed=4, index=i, size=size).image
        tensor, transform = preprocess(frame, card)
        outputs = segmenter.infer(tensor)
        lazy = segmenter.layout.decode(segmenter.layout.image(outputs, 0), transform, card, segmenter.params)
        assert lazy._classes is None  # nothing frame-sized made by decoding
        eager = to_frame(class_map(next(iter(outputs.values()))[0]), transform, card.input_size)
        assert lazy.shape == eager.shape
        assert task.to_json(lazy, card) == {"pixel_share": eager_pixel_share(eager, card.classes)}
        assert lazy._classes is None  # the JSON is made without it
        weights = frame_weights(lazy._source[0].shape, transform, card.input_size)
        counts = np.bincount(lazy._source[0].ravel(), weights, minlength=card.num_classes)
        assert counts.tolist() == np.bincount(eager.ravel(), minlength=card.num_classes).tolist()
        drawn, expected = frame.copy(), frame.copy()
        task.draw(drawn, lazy, card)
        draw.overlay_mask(expected, eager, card.num_classes)
        assert np.array_equal(drawn, expected)
        assert np.array_equal(lazy.classes, eager) and lazy.classes.dtype == np.uint8
        assert lazy.classes is lazy.classes  # made once


def test_strided_and_binary_maps(segmenter):
    """Maps at a stride of the input (argmax layout) and thresholded probabilities (binary layout): brought to
    the input first, then to the frame, exactly as before, counted exactly without being made."""
    card = segmenter.card  # 192x256 input
    rng = np.random.default_rng(0)
    argmax, binary = registry.layout("argmax"), registry.layout("binary")
    two = dataclasses.replace(card, classes=["background", "text"], output_layout="binary")
    for size in FRAMES:
        frame = render_image(seed=5, index=0, size=size).image
        _, transform = preprocess(frame, card)
        for stride in (1, 4, 8):
            small = rng.integers(0, card.num_classes, (1, 192 // stride, 256 // stride)).astype(np.int64)
            lazy = argmax.decode({"output0": small}, transform, card, DecodeParams.of(card))
            eager = to_frame(small[0].astype(np.uint8), transform, card.input_size)
            assert lazy.pixel_share(card.classes) == eager_pixel_share(eager, card.classes)
            assert np.array_equal(lazy.classes, eager)
        prob = rng.random((1, 1, 48, 64)).astype(np.float32)
        lazy = binary.decode({"output0": prob}, transform, two, DecodeParams.of(two))
        eager = to_frame((prob[0, 0] > 0.5).astype(np.uint8), transform, two.input_size)
        assert lazy.pixel_share(two.classes) == eager_pixel_share(eager, two.classes)
        assert np.array_equal(lazy.classes, eager)


def test_segmentation_metrics_read_the_frame_map(segmenter):
    task, card = registry.task("segmentation"), segmenter.card
    scene = VideoScene(3, (320, 240), objects=4)
    acc_lazy, acc_eager = task.accuracy(card), task.accuracy(card)
    fid_lazy, fid_eager = task.fidelity(card), task.fidelity(card)
    for _ in range(3):
        f = scene.next()
        lazy, ref = segmenter(f.image), segmenter(f.image[:, ::-1].copy())
        eager = ClassMap(np.array(lazy.classes))
        lazy = segmenter(f.image)  # fresh: not yet made
        acc_lazy.add(lazy, {"mask": f.mask})
        acc_eager.add(eager, {"mask": f.mask})
        fid_lazy.add(ref, lazy)
        fid_eager.add(ClassMap(np.array(ref.classes)), eager)
        assert task.agreement(ref, segmenter(f.image)) == task.agreement(ClassMap(ref.classes), eager)
    assert acc_lazy.summary() == acc_eager.summary()
    assert fid_lazy.summary() == fid_eager.summary()


# --- instance: a YOLOv8-seg head over noise prototypes ----------------------------------------------------------
@pytest.fixture(scope="module")
def noisy_seg(tmp_path_factory):
    gen = torch.Generator().manual_seed(5)
    planted = []
    for _ in range(30):
        x1, y1 = (torch.rand(2, generator=gen) * 130 - 5).tolist()
        w, h = (8 + torch.rand(2, generator=gen) * 50).tolist()
        cls, score = int(torch.randint(0, 2, (1,), generator=gen)), 0.3 + 0.7 * float(torch.rand(1, generator=gen))
        planted.append(((x1, y1, x1 + w, y1 + h), cls, score, "random"))
    path = export(TinyYoloV8Seg(planted, seed=5, noise_protos=True), tmp_path_factory.mktemp("seg") / "n.onnx")
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def decoded(session, size, index=0):
    c = instance_card()
    frame = render_image(seed=6, index=index, size=size).image
    tensor, transform = preprocess(frame, c)
    out0, out1 = session.run(None, {"images": tensor})
    result = registry.layout("yolov8_seg").decode({"output0": out0[0], "output1": out1[0]}, transform, c,
                                                  DecodeParams.of(c))
    return frame, transform, result, c


def test_instance_masks_drawing_and_json_are_the_eager_ones(noisy_seg):
    task = registry.task("instance_segmentation")
    for i, size in enumerate(FRAMES):
        frame, transform, lazy, c = decoded(noisy_seg, size, i)
        assert len(lazy) > 10 and lazy._masks is None and lazy._windows is None
        eager = eager_masks(lazy._source[0], transform, SIZE, SIZE)
        assert eager.any((1, 2)).sum() >= len(lazy) // 2  # the masks show (some lie in the padding alone)
        assert lazy.frame_size == eager.shape[1:]
        line = task.to_json(lazy, c)
        assert line == eager_instance_json(eager, lazy, c)
        assert json.loads(json.dumps(line)) == line
        drawn, expected = frame.copy(), frame.copy()
        task.draw(drawn, lazy, c)
        eager_instance_draw(expected, eager, lazy, c)
        assert np.array_equal(drawn, expected)
        assert lazy._masks is None  # drawn and serialized from the windows
        assert np.array_equal(lazy.masks, eager) and lazy.masks.dtype == bool
        assert lazy.masks is lazy.masks
        # instances built from frame-size masks (as tests and other code build them) give the same
        given = Instances(lazy.boxes, lazy.scores, lazy.classes, eager)
        assert task.to_json(given, c) == line
        again = frame.copy()
        task.draw(again, given, c)
        assert np.array_equal(again, expected)


def test_instance_metrics_are_the_eager_ones(noisy_seg):
    task = registry.task("instance_segmentation")
    c = instance_card()
    acc = {k: task.accuracy(c) for k in ("lazy", "eager")}
    stream = {k: task.stream_accuracy(c) for k in ("lazy", "eager")}
    fid = {k: task.fidelity(c) for k in ("lazy", "eager")}
    for i, size in enumerate(FRAMES[:4]):
        _, _, ref, _ = decoded(noisy_seg, size, i)
        _, _, lazy, _ = decoded(noisy_seg, size, i + 1)
        eager = Instances(lazy.boxes, lazy.scores, lazy.classes, np.array(lazy.masks))
        _, _, lazy, _ = decoded(noisy_seg, size, i + 1)
        truth = {"boxes": ref.boxes, "classes": ref.classes, "mask": np.array(ref.masks)}
        acc["lazy"].add(lazy, truth)
        acc["eager"].add(eager, truth)
        stream["lazy"].add(lazy, truth)
        stream["eager"].add(eager, truth)
        fid["lazy"].add(ref, lazy)
        fid["eager"].add(Instances(ref.boxes, ref.scores, ref.classes, np.array(ref.masks)), eager)
        assert task.agreement(ref, lazy) == task.agreement(ref, eager)
    for d in (acc, stream, fid):
        assert d["lazy"].summary() == d["eager"].summary()
    assert stream["lazy"].summary()["matched_by"] == "mask"


def test_window_rle_is_rle_encode():
    rng = np.random.default_rng(2)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        full = np.zeros((h, w), bool)
        if rng.random() < 0.9:
            y0, x0 = (int(v) for v in rng.integers(0, [h, w]))
            y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
            full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.choice([0.1, 0.5, 1.0])
        window = FrameMask.around(full)
        assert FrameMask.around(full).rle(h, w) == datasets.rle_encode(full)
        padded = FrameMask(max(0, window.y - 1), window.x, np.zeros((0, 0), bool))  # an empty window
        assert padded.rle(h, w) == datasets.rle_encode(np.zeros((h, w), bool))
    assert Instances.empty(64, 48).mask_rles() == []
    assert FrameMask(0, 0, np.zeros((0, 0), bool)).rle(0, 5) == datasets.rle_encode(np.zeros((0, 5), bool))


def test_instance_masks_can_be_set():
    boxes, scores, classes = np.zeros((1, 4), np.float32), np.ones(1, np.float32), np.zeros(1, np.int64)
    masks = np.zeros((1, 6, 8), bool)
    masks[0, 2:4, 3:7] = True
    r = Instances(boxes, scores, classes, np.zeros((1, 6, 8), bool))
    assert r.mask_rles() == [datasets.rle_encode(np.zeros((6, 8), bool))]
    r.masks = masks
    assert r.frame_size == (6, 8) and r.mask_rles() == [datasets.rle_encode(masks[0])]


def test_shows_is_whether_the_upsampled_mask_has_pixels():
    """Decoding drops a box whose mask has no pixels without upsampling it: shows() answers as the whole upsample
    would, including masks whose only positive logits sit beside much larger negative ones."""
    rng = np.random.default_rng(3)
    taps_x, taps_y = linear_taps(160, 40), linear_taps(160, 40)
    seen = {True: 0, False: 0}
    for _ in range(400):
        c0, r0 = (int(v) for v in rng.integers(0, 36, 2))
        c1, r1 = c0 + int(rng.integers(1, 5)), r0 + int(rng.integers(1, 5))
        logits = (rng.normal(-3, 1, (r1 - r0, c1 - c0)) * rng.choice([0.1, 1, 10])).astype(np.float32)
        if rng.random() < 0.7:
            logits.flat[int(rng.integers(0, logits.size))] = float(rng.choice([1e-6, 0.5, 3, 30]))
        _, _, cols = window(taps_x, c0, c1)
        _, _, rows = window(taps_y, r0, r1)
        full = bool((resample(logits, rows, cols) > 0).any())
        assert shows(logits, rows, cols) == full
        seen[full] += 1
    assert min(seen.values()) > 50
