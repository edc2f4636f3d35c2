"""Numeric flags out of range are usage errors (exit 2) before any work starts: the hostile-input battery
found `--calib-size 0` calibrating on built-in frames instead of the user's folder, `--score-threshold 2`
and `--max-frames -1` running with wrong results, and `profile --iterations 0` crashing."""

import pytest
from conftest import run_cli

from edgekit.cli import build_parser

BAD = [
    ("build-engine", "m.onnx", "--calib-size", "0"),
    ("build-engine", "m.onnx", "--calib-size", "-5"),
    ("build-engine", "m.onnx", "--max-batch", "0"),
    ("build-engine", "m.onnx", "--dla-core", "-1"),
    ("calib-set", "v.mp4", "-o", "c", "-n", "0"),
    ("calib-set", "v.mp4", "-o", "c", "-n", "-4"),
    ("run-stream", "m.onnx", "v.mp4", "--score-threshold", "2"),
    ("run-stream", "m.onnx", "v.mp4", "--score-threshold", "nan"),
    ("run-stream", "m.onnx", "v.mp4", "--iou-threshold", "5"),
    ("run-stream", "m.onnx", "v.mp4", "--max-frames", "-1"),
    ("run-stream", "m.onnx", "v.mp4", "--duration", "-5"),
    ("run-stream", "m.onnx", "v.mp4", "--timeout", "0"),
    ("run-stream", "m.onnx", "v.mp4", "--reconnect", "-1"),
    ("run-stream", "m.onnx", "v.mp4", "--queue-size", "0"),
    ("profile", "m.onnx", "--iterations", "0"),
    ("profile", "m.onnx", "--batch", "0"),
    ("profile", "m.onnx", "--duration", "inf"),
    ("prune", "m.safetensors", "--ratio", "1.5"),
    ("prune", "m.safetensors", "--ratio", "0"),
    ("prune", "m.safetensors", "--ratio", "1"),
    ("train", "d", "--epochs", "0"),
    ("train", "d", "--lr", "-1e-3"),
    ("sweep", "m.safetensors", "--rounds", "0"),
    ("import-model", "m.onnx", "--pad-value", "300"),
    ("import-model", "m.onnx", "--std", "nan", "1", "1"),
    ("data", "synth", "d", "--fps", "0"),
]


@pytest.mark.parametrize("argv", BAD, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_out_of_range_numbers_are_usage_errors(argv, capsys):
    flag = argv[-2] if argv[-4] not in ("--std", "--mean") else argv[-4]
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}" in err and ("expected" in err), err


@pytest.mark.parametrize("argv", [
    ("run-stream", "m.onnx", "v.mp4", "--score-threshold", "0", "--iou-threshold", "1", "--max-frames", "0",
     "--duration", "0", "--reconnect", "0"),
    ("profile", "m.onnx", "--iterations", "1", "--warmup", "0", "--duration", "0.5"),
    ("prune", "m.safetensors", "-o", "p", "--ratio", "0.99"),
])
def test_range_edges_are_accepted(argv):
    build_parser().parse_args(list(argv))


def test_the_command_line_exits_2_without_touching_the_model(tmp_path):
    """Through the real entry point: exit 2, the flag named, nothing read or written."""
    r = run_cli("run-stream", str(tmp_path / "missing.onnx"), "synthetic://", "-o", str(tmp_path / "out"),
                "--score-threshold", "2")
    assert r.returncode == 2
    assert "argument --score-threshold: expected a number between 0 and 1, got 2" in r.stderr
    assert "missing.onnx" not in r.stderr and not (tmp_path / "out").exists()
