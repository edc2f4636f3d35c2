import csv

import numpy as np
import pytest
import torch
from conftest import run_cli

from edgekit.build.models import checkpoint
from edgekit.build.train.logs import diagnose
from edgekit.build.train.loop import Batches, TrainConfig, make_card
from edgekit.build.train.objectives import objective
from edgekit.runtime.data import datasets


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_few_steps_lower_the_loss(tiny_synth, task):
    torch.manual_seed(0)
    cfg = TrainConfig(task=task, data=str(tiny_synth), out="unused", imgsz=(64, 64)).resolved()
    ds = datasets.load(task, tiny_synth, "train")
    card = make_card(cfg, ds.classes)
    model = checkpoint.build(card).train()
    batches = Batches(ds, card, limit=8)
    images, targets, _, _ = next(batches.iterate(8, None))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss, _ = objective(task).loss(model, images, targets, "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_train_cli_writes_a_complete_run_and_resumes(tiny_synth, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--task", "detection", "--data", str(tiny_synth), "--out", str(out), "--imgsz", "64",
                "--epochs", "2", "--batch-size", "8", "-q")
    assert r.returncode == 0, r.stderr
    assert "best mAP50_95" in r.stdout
    for name in ("best.safetensors", "best.card.yaml", "last.pt", "config.yaml", "metrics.csv", "loss_curve.png",
                 "report.json"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    config = (out / "config.yaml").read_text()
    assert "arch: edgenet-det-s" in config and "resize: letterbox" in config  # resolved defaults are recorded
    model, card = checkpoint.load(out / "best.safetensors")
    assert card.classes == ["disc", "square", "triangle", "star"] and card.input_size == (64, 64)
    assert "mAP50" in card.extra["metrics"]

    r = run_cli("train", "--resume", str(out), "--epochs", "3", "-q")
    assert r.returncode == 0, r.stderr
    with open(out / "metrics.csv") as f:
        epochs = [int(float(row["epoch"])) for row in csv.DictReader(f)]
    assert epochs == [1, 2, 3]


def test_a_finished_run_is_not_overwritten(tiny_synth, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.safetensors").write_bytes(b"x")
    r = run_cli("train", "--task", "detection", "--data", str(tiny_synth), "--out", str(out), "-q")
    assert r.returncode == 1 and "holds a finished run" in r.stderr


def rows(train, val, metric):
    return [{"epoch": i + 1, "train_loss": t, "val_loss": v, "val_m": m}
            for i, (t, v, m) in enumerate(zip(train, val, metric))]


def test_diagnose_over_and_under_fitting():
    over = rows(np.linspace(2, 0.2, 10), [2, 1.5, 1.2, 1.0, 1.1, 1.3, 1.5, 1.7, 1.9, 2.1], np.linspace(0.3, 0.6, 10))
    assert any(w.startswith("over-fitting") for w in diagnose(over, "m"))
    under = rows(np.linspace(2, 1.0, 10), np.linspace(2.1, 1.1, 10), np.linspace(0.1, 0.6, 10))
    assert any(w.startswith("under-fitting") for w in diagnose(under, "m"))
    good = rows([2, 1, 0.6, 0.5, 0.45, 0.44, 0.44, 0.44, 0.44, 0.44], [2, 1, 0.7, 0.6, 0.55, 0.55, 0.55, 0.55,
                0.55, 0.55], [0.2, 0.6, 0.8, 0.9, 0.92, 0.93, 0.93, 0.93, 0.93, 0.93])
    assert diagnose(good, "m") == []


def test_fine_tune_with_frozen_backbone_changes_only_the_rest(tiny_synth, tmp_path):
    first = tmp_path / "first"
    r = run_cli("train", "--task", "detection", "--data", str(tiny_synth), "--out", str(first), "--imgsz", "64",
                "--epochs", "1", "--batch-size", "8", "-q")
    assert r.returncode == 0, r.stderr
    tuned = tmp_path / "tuned"
    r = run_cli("train", "--task", "detection", "--data", str(tiny_synth), "--out", str(tuned), "--imgsz", "64",
                "--epochs", "1", "--batch-size", "8", "-q", "--init", str(first / "best.safetensors"),
                "--freeze", "backbone", "--lr", "1e-3")
    assert r.returncode == 0, r.stderr
    before, _ = checkpoint.load(first)
    after, _ = checkpoint.load(tuned / "best.safetensors")
    b, a = before.state_dict(), after.state_dict()
    assert all(torch.equal(b[k], a[k]) for k in b if k.startswith("backbone."))
    assert not all(torch.equal(b[k], a[k]) for k in b if k.startswith(("neck.", "box_head.", "cls_head.")))


def test_backbone_moves_from_a_detector_to_a_segmenter(tiny_synth, tmp_path):
    det = tmp_path / "det"
    r = run_cli("train", "--task", "detection", "--data", str(tiny_synth), "--out", str(det), "--imgsz", "64",
                "--epochs", "1", "--batch-size", "8", "-q")
    assert r.returncode == 0, r.stderr
    seg = tmp_path / "seg"
    r = run_cli("train", "--task", "segmentation", "--data", str(tiny_synth), "--out", str(seg), "--imgsz", "64",
                "--epochs", "1", "--batch-size", "8", "-q", "--init-backbone", str(det / "best.safetensors"),
                "--freeze", "backbone")
    assert r.returncode == 0, r.stderr
    d, _ = checkpoint.load(det)
    s, _ = checkpoint.load(seg / "best.safetensors")
    assert all(torch.equal(v, s.state_dict()[k]) for k, v in d.state_dict().items() if k.startswith("backbone."))
    r = run_cli("train", "--task", "segmentation", "--data", str(tiny_synth), "--out", str(tmp_path / "x"),
                "--arch", "edgenet-seg-m", "--imgsz", "64", "--epochs", "1", "-q",
                "--init-backbone", str(det / "best.safetensors"))
    assert r.returncode == 1 and "do not fit the backbone of architecture 'edgenet-seg-m'" in r.stderr
