"""profile, eval, sweep and doctor on CPU: real engines on ONNX Runtime, the shipped models, real datasets."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ASSERT_NO_BUILD_SIDE, assert_one_line_error, run_cli

from edgekit.build.demo import SHIPPED
from edgekit.build.export import export
from edgekit.runtime.measure.profile import ProfileOptions, Subject, result
from edgekit.runtime.opening import open_model

QUICK = ["--warmup", "0", "--duration", "0"]


def test_profile_engine_reports_latency_distribution_and_throughput(det_engine, tmp_path):
    r = run_cli("profile", str(det_engine), "--iterations", "40", "--percentiles", "90,99.9", "--out",
                str(tmp_path), *QUICK)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "profile.json").read_text())
    host = rep["host_ms"]
    assert rep["iterations"] >= 40 and host["count"] == rep["iterations"]
    assert 0 < host["p50"] <= host["p90"] <= host["p99.9"] <= host["max"]
    assert rep["throughput_images_per_s"] == pytest.approx(rep["iterations"] / rep["seconds"], rel=1e-3)
    assert rep["device_ms"] is None and rep["power"] is None  # no GPU, no tegrastats here
    assert rep["backend"]["name"] == "onnxruntime" and rep["precision"] == "fp32"
    assert "| host (wall, per call) |" in r.stdout and (tmp_path / "profile.md").is_file()


def test_profile_and_eval_of_an_engine_never_import_torch(det_engine, tiny_synth, tmp_path):
    """With torch installed (not blocked), so that an import of it anywhere, optional ones too, shows."""
    code = ("import sys; from edgekit.cli import main\n"
            f"assert main(['profile', {str(det_engine)!r}, '--iterations', '5', '--warmup', '0', '--duration', '0', "
            f"'--out', {str(tmp_path / 'p')!r}]) == 0\n"
            f"assert main(['eval', {str(det_engine)!r}, {str(tiny_synth)!r}, '--out', {str(tmp_path / 'e')!r}]) == 0\n"
            + ASSERT_NO_BUILD_SIDE)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_profile_batch_needs_a_dynamic_batch_engine(det_engine, tmp_path):
    r = run_cli("profile", str(det_engine), "--batch", "4", "--out", str(tmp_path), *QUICK)
    assert_one_line_error(r, "batch of 1 only", "--dynamic-batch 4")
    dyn = tmp_path / "dyn.onnx"
    export(SHIPPED["detection"], dyn, dynamic_batch=4)
    r = run_cli("profile", str(dyn), "--batch", "4", "--iterations", "10", "--out", str(tmp_path / "p"), *QUICK)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert rep["batch"] == 4
    assert rep["throughput_images_per_s"] == pytest.approx(4 * rep["iterations"] / rep["seconds"], rel=1e-3)


def test_profile_checkpoint_runs_on_the_torch_backend(tmp_path):
    r = run_cli("profile", str(SHIPPED["segmentation"]), "--device", "cpu", "--iterations", "10", "--out",
                str(tmp_path), *QUICK)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "profile.json").read_text())
    assert rep["backend"]["name"] == "torch" and rep["backend"]["device"] == "cpu" and rep["task"] == "segmentation"


def test_unstable_timing_is_flagged(det_engine):
    with open_model(det_engine) as o:
        steady = Subject("steady", o.backend, o.card, o.record, host_ms=[2.0, 2.01, 1.99, 2.0] * 10, seconds=1.0)
        jumpy = Subject("jumpy", o.backend, o.card, o.record, host_ms=[2.0, 2.0, 2.0, 6.0] * 10, seconds=1.0)
        assert result(steady, ProfileOptions())["warnings"] == []
        warning = result(jumpy, ProfileOptions())["warnings"][0]
    assert "unstable timing" in warning and "jetson_clocks" in warning


def test_eval_engine_and_checkpoint_agree(det_engine, tiny_synth, tmp_path):
    engine = run_cli("eval", str(det_engine), str(tiny_synth), "--out", str(tmp_path / "e"))
    torch = run_cli("eval", str(SHIPPED["detection"]), str(tiny_synth), "--out", str(tmp_path / "t"))
    assert engine.returncode == 0 and torch.returncode == 0, engine.stderr + torch.stderr
    e = json.loads((tmp_path / "e" / "eval.json").read_text())["metrics"]
    t = json.loads((tmp_path / "t" / "eval.json").read_text())["metrics"]
    assert e["images"] == t["images"] == 8
    assert e["mAP50"] > 0.3  # the shipped model finds the shapes
    assert e["mAP50_95"] == pytest.approx(t["mAP50_95"], abs=0.01)  # FP32 engine == PyTorch


def test_eval_segmentation_reports_iou_per_class(tiny_synth, tmp_path):
    r = run_cli("eval", str(SHIPPED["segmentation"]), str(tiny_synth), "--split", "val", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert list(m["per_class_iou"]) == ["background", "disc", "square", "triangle", "star"]
    assert 0.3 < m["mIoU"] <= 1 and "| triangle |" in r.stdout


def test_eval_bad_inputs_are_one_line(det_engine, tiny_synth, tmp_path):
    no_masks = tmp_path / "no_masks"
    shutil.copytree(tiny_synth, no_masks)
    shutil.rmtree(no_masks / "masks")
    r = run_cli("eval", str(SHIPPED["segmentation"]), str(no_masks), "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "mask folder not found")
    shutil.rmtree(no_masks / "annotations")
    shutil.rmtree(no_masks / "labels")
    r = run_cli("eval", str(det_engine), str(no_masks), "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "no detection labels for split 'test'")

    renamed = tmp_path / "renamed"
    shutil.copytree(tiny_synth, renamed)
    meta = json.loads((renamed / "dataset.json").read_text())
    (renamed / "annotations").rename(renamed / "unused")  # YOLO labels: names from dataset.json
    meta["names"] = ["bolt", "nut", "washer", "screw"]
    (renamed / "dataset.json").write_text(json.dumps(meta))
    r = run_cli("eval", str(det_engine), str(renamed), "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "['bolt', 'nut', 'washer', 'screw']", "['disc', 'square', 'triangle', 'star']")

    r = run_cli("eval", str(det_engine), str(tiny_synth), "--task", "segmentation", "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "is a detection model", "not segmentation")


def test_sweep_table_pareto_and_budget(tiny_synth, tmp_path):
    out = tmp_path / "sweep"
    r = run_cli("sweep", str(SHIPPED["detection"]), "--data", str(tiny_synth), "--precisions", "fp32,fp16,int8",
                "--accuracy-budget", "3", "--iterations", "20", "--duration", "0", "--rounds", "2", "--warmup", "0",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "sweep.json").read_text())
    rows = {row["variant"]: row for row in rep["rows"]}
    assert list(rows) == ["edgenet-det-s torch fp32 (cpu)", "edgenet-det-s onnxruntime fp32",
                          "edgenet-det-s onnxruntime fp16", "edgenet-det-s onnxruntime int8 minmax"]
    assert rows["edgenet-det-s onnxruntime fp16"]["status"] == "skipped"
    assert "no fast FP16 kernels" in rows["edgenet-det-s onnxruntime fp16"]["reason"]
    measured = [row for row in rep["rows"] if row["status"] == "ok"]
    assert len(measured) == 3 and all(row["latency_ms"]["count"] >= 20 for row in measured)
    assert rows["edgenet-det-s torch fp32 (cpu)"]["delta_points"] == 0
    assert abs(rows["edgenet-det-s onnxruntime fp32"]["delta_points"]) < 1  # the same network, exported
    int8 = rows["edgenet-det-s onnxruntime int8 minmax"]
    assert "accuracy_tensorrt_qdq_on_cpu" in int8 and (out / "edgenet-det-s.onnxruntime.int8.minmax.onnx").is_file()
    assert rep["calibration"].endswith("images/val")  # calibrated on val, evaluated on test
    assert sum(row["chosen"] for row in measured) == 1 and any(row["pareto"] for row in measured)
    within = [row for row in measured if row["delta_points"] >= -3]
    fastest_within = min(within, key=lambda row: row["latency_ms"]["p90"])
    assert fastest_within["chosen"]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fastest within 3 points" in (out / "sweep.md").read_text()


def test_sweep_bad_inputs_are_one_line(tiny_synth, tmp_path):
    r = run_cli("sweep", str(SHIPPED["detection"]), "--data", str(tiny_synth), "--precisions", "fp32,fp64",
                "--out", str(tmp_path))
    assert_one_line_error(r, "--precisions fp64", "fp32, fp16, int8")
    r = run_cli("sweep", str(SHIPPED["detection"]), "--data", str(tiny_synth), "--dla", "--out", str(tmp_path))
    assert_one_line_error(r, "--dla", "no DLA here")
    r = run_cli("sweep", str(SHIPPED["detection"]), str(SHIPPED["segmentation"]), "--data", str(tiny_synth),
                "--out", str(tmp_path))
    assert_one_line_error(r, "one task")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_doctor_says_what_runs_and_what_to_install():
    """What doctor says against what this machine has, found without edgekit's code."""
    import importlib.util
    import shutil
    from pathlib import Path

    jetson = Path("/etc/nv_tegra_release").is_file()
    gpu = jetson or shutil.which("nvidia-smi") is not None
    real_tensorrt = importlib.util.find_spec("tensorrt") is not None and hasattr(__import__("tensorrt"), "Builder")
    r = run_cli("doctor")
    assert r.returncode == 0, r.stderr
    assert "ok  onnxruntime" in r.stdout and "ok  torch" in r.stdout
    checks = {c["name"]: c for c in json.loads(run_cli("doctor", "--json").stdout)["checks"]}
    assert checks["onnxruntime"]["ok"] and checks["torch"]["ok"]
    if not (real_tensorrt and gpu):
        assert not checks["tensorrt"]["ok"] and checks["tensorrt"]["fix"] and "--  tensorrt" in r.stdout
    assert checks["OpenCV FFMPEG"]["ok"]  # the pip wheel reads video files through FFmpeg
    assert checks["Jetson"]["ok"] == jetson
    for c in checks.values():
        if c["area"] in ("backends", "python", "video"):
            assert c["ok"] or c["fix"], c  # what is missing says how to get it


def test_stats_percentiles_are_configurable():
    from edgekit.runtime.measure.stats import summarize

    s = summarize(np.arange(1, 101, dtype=float), (95, 99.5))
    assert set(s) >= {"p50", "p95", "p99.5", "max", "mean", "cv"} and s["max"] == 100
