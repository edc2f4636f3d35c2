"""The two shipped models load, are small, and still see what they were trained to see."""

import pytest

from edgekit.build.demo import SHIPPED
from edgekit.build.train.loop import evaluate_checkpoint
from edgekit.runtime.data.writer import write_dataset


@pytest.fixture(scope="module")
def fresh_test_set(tmp_path_factory):
    # A seed the models never trained on: this checks generalization, not memory.
    out = tmp_path_factory.mktemp("fresh") / "synth"
    write_dataset(out, seed=99, counts={"train": 0, "val": 0, "test": 60}, videos=0, progress=False)
    return out


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_shipped_model_is_small_and_documented(task):
    weights = SHIPPED[task]
    assert weights.stat().st_size < 5 * 1024 * 1024
    assert (weights.parent / "README.md").is_file()


def test_shipped_detector_accuracy(fresh_test_set):
    m = evaluate_checkpoint(SHIPPED["detection"], fresh_test_set, "test")
    assert m["mAP50"] >= 0.85, m


def test_shipped_segmenter_accuracy(fresh_test_set):
    m = evaluate_checkpoint(SHIPPED["segmentation"], fresh_test_set, "test")
    assert m["mIoU"] >= 0.80, m
