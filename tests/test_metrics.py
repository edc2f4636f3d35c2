import numpy as np
import pytest

from edgekit.runtime.measure.metrics import ConfusionMatrix, detection_map

GT = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], float), "classes": np.array([0, 1])}]


def test_perfect_detections_score_one():
    pred = [{"boxes": GT[0]["boxes"], "scores": np.array([0.9, 0.8]), "classes": np.array([0, 1])}]
    assert detection_map(pred, GT, 2) == {"mAP50": 1.0, "mAP50_95": 1.0}


def test_known_partial_overlap():
    # IoU 0.5 with class 0's box: a hit at the 0.5 threshold only (AP 1 there, 1/10 over 0.5:0.95);
    # class 1 is missed (AP 0). COCO averages over the two classes.
    pred = [{"boxes": np.array([[0, 0, 10, 20]], float), "scores": np.array([0.9]), "classes": np.array([0])}]
    m = detection_map(pred, GT, 2)
    assert m["mAP50"] == pytest.approx(0.5, abs=1e-3)
    assert m["mAP50_95"] == pytest.approx(0.05, abs=1e-3)


def test_empty_predictions_score_zero():
    empty = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, int)}]
    assert detection_map(empty, GT, 2) == {"mAP50": 0.0, "mAP50_95": 0.0}


def test_wrong_class_is_a_miss():
    pred = [{"boxes": GT[0]["boxes"], "scores": np.array([0.9, 0.8]), "classes": np.array([1, 0])}]
    assert detection_map(pred, GT, 2)["mAP50"] == 0.0


def test_iou_perfect_partial_and_ignore():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    cm = ConfusionMatrix(2)
    cm.update(target.copy(), target)
    assert cm.summary(["bg", "fg"])["mIoU"] == 1.0
    cm = ConfusionMatrix(2)
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])  # one fg pixel missed, the ignored pixel is not counted
    cm.update(pred, target)
    s = cm.summary(["bg", "fg"])
    # fg: tp 2, union 3 -> 2/3; bg: tp 4, union 5 -> 4/5
    assert s["per_class_iou"] == {"bg": 0.8, "fg": pytest.approx(0.6667, abs=1e-4)}
    assert s["mIoU"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_class_absent_everywhere_is_left_out_of_the_mean():
    cm = ConfusionMatrix(3)
    t = np.zeros((2, 2), int)
    cm.update(t, t)
    s = cm.summary(["a", "b", "c"])
    assert s["mIoU"] == 1.0 and s["per_class_iou"]["b"] is None
