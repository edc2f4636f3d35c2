"""NumPy NMS (JetPack 5's OpenCV has no NMSBoxesBatched) against torchvision's reference ops."""

import numpy as np
import pytest

from edgekit.runtime.tasks.detection import nms

torch = pytest.importorskip("torch")
ops = pytest.importorskip("torchvision.ops")


def candidates(seed: int, n: int, classes: int = 5):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 600, (n, 2))
    wh = rng.uniform(4, 120, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.uniform(0, 1, n).astype(np.float32), rng.integers(0, classes, n)


@pytest.mark.parametrize("seed, n", [(0, 50), (1, 400), (2, 8400)])
@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("iou", [0.45, 0.7])
def test_same_boxes_as_torchvision(seed, n, agnostic, iou):
    boxes, scores, classes = candidates(seed, n)
    ours = nms(boxes, scores, classes, iou, max_detections=10_000, agnostic=agnostic)
    b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
    ref = (ops.nms(b, s, iou) if agnostic else ops.batched_nms(b, s, torch.from_numpy(classes), iou)).numpy()
    assert sorted(ours.tolist()) == sorted(ref.tolist())  # the same boxes kept ...
    assert (np.diff(scores[ours]) <= 0).all()  # ... highest score first (equal scores may come in any order)
    assert scores[ours].tolist() == scores[ref].tolist()


def test_max_detections_keeps_the_best():
    boxes, scores, classes = candidates(3, 2000)
    top = nms(boxes, scores, classes, 0.5, max_detections=25)
    full = nms(boxes, scores, classes, 0.5, max_detections=10_000)
    assert top.tolist() == full[:25].tolist()


def test_empty_and_identical_boxes():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5, 10).size == 0
    boxes = np.array([[0, 0, 10, 10]] * 3, np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, np.array([0, 0, 1]), 0.5, 10).tolist() == [1, 2]  # one per class
    assert nms(boxes, scores, np.array([0, 0, 1]), 0.5, 10, agnostic=True).tolist() == [1]
