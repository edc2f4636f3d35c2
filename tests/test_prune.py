"""prune: real Torch-Pruning on the shipped models, fine-tuned through the training loop on a tiny dataset."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_one_line_error, run_cli

from edgekit.build.demo import SHIPPED
from edgekit.build.export import export
from edgekit.build.models import checkpoint
from edgekit.build.sparsity import check_onnx, follows_2_4, mask_2_4

TINY = ["--max-train-images", "16", "--max-val-images", "8", "--batch-size", "8", "-q", "--report-duration", "0.3"]


@pytest.fixture(scope="module")
def pruned_det(tiny_synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "det-p50"
    r = run_cli("prune", str(SHIPPED["detection"]), "--ratio", "0.5", "--data", str(tiny_synth),
                "--finetune-epochs", "1", "--distill", "-o", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    # the shipped card records its training (AdamW, lr 2e-3): fine-tuning starts from it, taught by the unpruned model
    assert f"adamw lr 0.002 (from the model's training record), distilled from {SHIPPED['detection']}" in r.stdout
    return out


def test_fine_tuning_records_its_schedule_and_teacher(pruned_det):
    _, card = checkpoint.load(pruned_det / "best.safetensors")
    training = card.extra["training"]
    assert (training["optimizer"], training["lr"], training["distilled_from"]) == ("adamw", 0.002,
                                                                                   str(SHIPPED["detection"]))


def test_distillation_loss_pulls_the_student_to_the_teacher():
    """At its minimum on the teacher's own predictions; gradient steps on it alone bring a student's boxes and
    classes to the teacher's where the teacher is confident."""
    import torch

    from edgekit.build.train.loss import detection_distill, segmentation_distill

    torch.manual_seed(0)
    boxes = torch.rand(2, 4, 50) * 40
    boxes[:, 2:] += boxes[:, :2] + 8  # xyxy
    logits = torch.randn(2, 3, 50) * 4
    own = logits.clone().requires_grad_()
    detection_distill((boxes, own), (boxes, logits)).backward()
    assert own.grad.abs().max() < 1e-6  # soft-label BCE is smallest at the teacher's own probabilities
    s_boxes = (boxes + torch.randn_like(boxes) * 3).requires_grad_()
    s_logits = torch.zeros_like(logits).requires_grad_()
    opt = torch.optim.Adam([s_boxes, s_logits], lr=0.1)
    first = float(detection_distill((s_boxes, s_logits), (boxes, logits)).detach())
    for _ in range(200):
        opt.zero_grad()
        detection_distill((s_boxes, s_logits), (boxes, logits)).backward()
        opt.step()
    confident = logits.sigmoid().max(1).values > 0.5
    assert float(detection_distill((s_boxes, s_logits), (boxes, logits)).detach()) < 0.5 * first
    assert (s_logits.sigmoid() - logits.sigmoid()).abs()[confident.unsqueeze(1).expand_as(logits)].max() < 0.05
    seg_t = torch.randn(1, 5, 8, 8) * 3
    assert float(segmentation_distill(seg_t, seg_t)) < 1e-6
    assert float(segmentation_distill(torch.zeros_like(seg_t), seg_t)) > 0.1


def test_prune_halves_channels_but_not_the_outputs(pruned_det):
    model, card = checkpoint.load(pruned_det / "best.safetensors")
    base, _ = checkpoint.load(SHIPPED["detection"])
    record = card.extra["pruning"]
    assert record["ratio"] == 0.5 and record["importance"] == "l2"
    assert card.name == "edgenet-det-s-p50"
    chans, before = record["channels"], {n: m.out_channels for n, m in base.named_modules()
                                         if isinstance(m, torch.nn.Conv2d)}
    assert chans["box_head.1"] == 4 and chans["cls_head.1"] == 4  # output layers untouched
    assert chans["backbone.stages.3.0.0"] == before["backbone.stages.3.0.0"] // 2
    assert all(c % 8 == 0 for n, c in chans.items() if n not in ("box_head.1", "cls_head.1"))
    params = sum(p.numel() for p in model.parameters())
    assert params < 0.35 * sum(p.numel() for p in base.parameters())


def test_pruned_checkpoint_is_tensors_and_yaml_and_exports(pruned_det, tmp_path):
    names = sorted(p.name for p in pruned_det.iterdir())
    assert {"best.safetensors", "best.card.yaml", "pruned.safetensors", "pruned.card.yaml",
            "prune_report.json", "prune_report.md"} <= set(names)
    assert not any(n.endswith((".pt", ".pth", ".pkl")) and n != "last.pt" for n in names)
    rep = export(pruned_det / "best.safetensors", tmp_path / "p.onnx")  # replays the record, parity-checked
    assert all(p.ok for p in rep.parity)


def test_prune_report_before_after(pruned_det):
    r = json.loads((pruned_det / "prune_report.json").read_text())
    before, pruned, tuned = r["stages"]
    assert [s["stage"] for s in r["stages"]] == ["before", "pruned", "fine-tuned"]
    assert pruned["macs"] < 0.35 * before["macs"] and pruned["params"] < before["params"]
    assert pruned["bytes"] < before["bytes"]
    assert tuned["latency_ms"]["count"] > 0 and "mAP50_95" in tuned["accuracy_val"]
    assert r["channels_before"]["backbone.stem.0"] == 8
    md = (pruned_det / "prune_report.md").read_text()
    assert "| fine-tuned |" in md and "| backbone.stages.3.0.0 | 64 | 32 |" in md


def test_sparsity_2_4_survives_finetuning_and_export(tiny_synth, tmp_path):
    out = tmp_path / "sparse"
    r = run_cli("prune", str(SHIPPED["segmentation"]), "--sparsity", "2:4", "--data", str(tiny_synth),
                "--finetune-epochs", "1", "-o", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    export(out / "best.safetensors", tmp_path / "s.onnx")
    check = check_onnx(onnx.load(str(tmp_path / "s.onnx")))
    assert check["eligible"] > 10 and check["dense"] == [] and check["sparse"] == check["eligible"]
    assert "2:4 pattern in the exported ONNX" in (out / "prune_report.md").read_text()


def test_mask_keeps_the_two_largest_of_every_four_input_channels():
    w = np.random.default_rng(0).standard_normal((6, 8, 3, 3)).astype(np.float32)
    m = mask_2_4(w)
    assert follows_2_4(w * m) and not follows_2_4(w)
    kept = np.abs(w[2, 4:8, 1, 1])[m[2, 4:8, 1, 1] == 1]
    assert sorted(kept) == sorted(np.sort(np.abs(w[2, 4:8, 1, 1]))[2:])


def test_prune_bad_inputs_are_one_line(tiny_synth, tmp_path):
    det = str(SHIPPED["detection"])
    r = run_cli("prune", det, "--ratio", "1.5", "-o", str(tmp_path / "a"))  # a usage error, before any work
    assert r.returncode == 2 and "argument --ratio: expected a number strictly between 0 and 1, got 1.5" in r.stderr
    assert_one_line_error(run_cli("prune", det, "--ratio", "0.3", "-o", str(tmp_path / "b")),
                          "fine-tuning needs a dataset")
    r = run_cli("prune", det, "--target-macs", "1K", "--finetune-epochs", "0", "-o", str(tmp_path / "c"))
    assert_one_line_error(r, "not reachable", "closest reached")
    r = run_cli("prune", det, "--target-macs", "5G", "--finetune-epochs", "0", "-o", str(tmp_path / "d"))
    assert_one_line_error(r, "already meets the target")
    assert_one_line_error(run_cli("prune", det, "--ratio", "0.3", "--distill", "--finetune-epochs", "0", "-o",
                                  str(tmp_path / "e")), "--distill", "--finetune-epochs > 0")
    r = run_cli("train", "--task", "detection", "--data", str(tiny_synth), "--init", det, "--epochs", "1", "--distill",
                str(SHIPPED["segmentation"]), "-o", str(tmp_path / "f"))
    assert_one_line_error(r, "this is a segmentation model, a detection model is needed")
    assert not any(tmp_path.iterdir())  # nothing written for a refused run


def test_target_macs_is_met(tmp_path):
    out = tmp_path / "macs"
    r = run_cli("prune", str(SHIPPED["segmentation"]), "--target-macs", "50M", "--finetune-epochs", "0",
                "-o", str(out), "--report-duration", "0.3")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "prune_report.json").read_text())
    assert rep["stages"][-1]["macs"] <= 50e6 < rep["stages"][0]["macs"]
    assert 0 < rep["ratio"] < 0.9 and rep["search"][-1]["ratio"] == rep["ratio"]  # the first ratio on the grid


def test_pruned_checkpoint_joins_the_sweep(pruned_det, tiny_synth, tmp_path):
    r = run_cli("sweep", str(SHIPPED["detection"]), str(pruned_det / "best.safetensors"), "--data", str(tiny_synth),
                "--precisions", "fp32", "--iterations", "10", "--duration", "0", "--warmup", "0", "--rounds", "1",
                "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = {row["variant"]: row for row in json.loads((tmp_path / "sweep.json").read_text())["rows"]}
    assert list(rows) == ["edgenet-det-s torch fp32 (cpu)", "edgenet-det-s onnxruntime fp32",
                          "edgenet-det-s-p50 torch fp32 (cpu)", "edgenet-det-s-p50 onnxruntime fp32"]
    pruned = rows["edgenet-det-s-p50 onnxruntime fp32"]
    # compared with the unpruned PyTorch reference, not with itself
    ref = rows["edgenet-det-s torch fp32 (cpu)"]["accuracy"]["mAP50_95"]
    assert pruned["delta_points"] == pytest.approx(100 * (pruned["accuracy"]["mAP50_95"] - ref), abs=0.01)
    assert pruned["bytes"] < rows["edgenet-det-s onnxruntime fp32"]["bytes"] / 2
