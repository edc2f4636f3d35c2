"""`edgekit profile --layers`: per-layer times from ONNX Runtime's own profiler on the shipped detector."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, assert_one_line_error, run_cli

from edgekit.build.demo import SHIPPED

QUICK = ["--warmup", "0.5", "--duration", "1"]


def _profile_layers(engine, out, tmp):
    """`edgekit profile ENGINE --layers` as a user runs it, with its temporary files kept in `tmp`."""
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp))
    r = subprocess.run([sys.executable, "-m", "edgekit", "profile", str(engine), "--layers", "--top", "8",
                        "--iterations", "100", "--out", str(out), *QUICK],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    return r, json.loads((out / "profile.json").read_text())


def test_profile_layers_lists_the_slowest_real_nodes(det_engine, tmp_path):
    before = set(ROOT.glob("*.json"))
    r, rep = _profile_layers(det_engine, tmp_path / "p", tmp_path / "tmp")
    lay = rep["layers"]
    top = lay["top"]
    assert len(top) == 8 and lay["count"] > 8 and lay["iterations"] == 100  # the model has more layers than shown
    assert all(t["ms"] > 0 and t["device"] == "CPU" and t["name"] for t in top)
    assert [t["ms"] for t in top] == sorted((t["ms"] for t in top), reverse=True)  # slowest first
    assert sum(t["kind"] == "Conv" for t in top) >= 4, top  # a conv net's time goes to its convolutions
    assert len({t["name"] for t in top}) == len(top)
    assert all(t["share"] == pytest.approx(t["ms"] / lay["total_ms"]) for t in top) and sum(t["share"] for t in top) < 1
    assert lay["latency_ms"] == pytest.approx(rep["host_ms"]["mean"])
    # The layers account for the latency: the same order of magnitude (a unit slip, microseconds for milliseconds,
    # is 1000x). Two measurements moments apart on a shared 2-core machine, beside another test worker, differ by
    # up to ~2x (seen: layers 2.8 ms against a mean latency of 1.55 ms whose p50 was 0.9): allow one repeat.
    ratio = lay["total_ms"] / lay["latency_ms"]
    if not 0.3 <= ratio <= 3.0:
        _, again = _profile_layers(det_engine, tmp_path / "p2", tmp_path / "tmp")
        ratio = again["layers"]["total_ms"] / again["layers"]["latency_ms"]
    assert 0.3 <= ratio <= 3.0, (ratio, lay["total_ms"], rep["host_ms"])
    # the table a user reads, on screen and in profile.md
    first = top[0]
    row = f"| {first['name']} | {first['kind']} | CPU | {first['ms']:.3f} | {100 * first['share']:.1f}% |"
    assert "## Slowest layers (8 of" in r.stdout and row in r.stdout
    assert row in (tmp_path / "p" / "profile.md").read_text()
    # ONNX Runtime's trace files are removed: none in the temporary folder (where onnxruntime also keeps a .ses
    # file of its own), none in the working folder
    left = [p.name for p in (tmp_path / "tmp").rglob("*") if p.name != ".ses"]
    assert not left and set(ROOT.glob("*.json")) == before


def test_profile_without_layers_has_no_layer_table(det_engine, tmp_path):
    r = run_cli("profile", str(det_engine), "--iterations", "10", "--out", str(tmp_path), "--warmup", "0",
                "--duration", "0")
    assert r.returncode == 0, r.stderr
    assert "layers" not in json.loads((tmp_path / "profile.json").read_text())
    assert "Slowest layers" not in r.stdout


def test_layers_on_a_backend_without_per_layer_timing_is_one_line(tmp_path):
    """The eager PyTorch backend has no per-layer timing: refused before the measurement, nothing written."""
    r = run_cli("profile", str(SHIPPED["detection"]), "--device", "cpu", "--layers", "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "--layers", "PyTorch backend does not offer")
    assert not (tmp_path / "o" / "profile.json").exists()


def test_top_must_be_positive(det_engine, tmp_path):
    r = run_cli("profile", str(det_engine), "--layers", "--top", "0", "--out", str(tmp_path))
    assert r.returncode == 2 and "--top" in r.stderr and "positive" in r.stderr


def test_trace_aggregation_leaves_out_warm_up_runs():
    """ONNX Runtime's trace in microseconds -> mean ms per counted run; the first (warm-up) run is left out, a
    node's fences are not its time, and two nodes that share a name stay apart."""
    from edgekit.runtime.backends.onnxruntime import layer_times_from_trace

    def node(name, ts, dur, op="Conv", index="1"):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op, "provider": "CPUExecutionProvider", "node_index": index}}

    events = [{"cat": "Session", "name": "model_run", "ts": 100 * i, "dur": 90} for i in range(3)]
    events += [node("conv", 1, 50_000), node("conv", 101, 2000), node("conv", 201, 4000),
               node("relu", 102, 500, "Relu", "2"), node("relu", 202, 500, "Relu", "2"),
               node("relu", 203, 1000, "Relu", "3"),
               {"cat": "Node", "name": "conv_fence_before", "ts": 101, "dur": 7000, "args": {}}]
    layers, runs = layer_times_from_trace(events, skip_runs=1)
    assert runs == 2
    assert [(t.name, t.kind, t.device, t.ms) for t in layers] == [
        ("conv", "Conv", "CPU", 3.0), ("relu", "Relu", "CPU", 0.5), ("relu#3", "Relu", "CPU", 0.5)]
