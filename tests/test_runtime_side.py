"""The runtime side (DESIGN.md section 2) must import and work where torch is not installed."""

import subprocess
import sys

from conftest import ROOT

RUNTIME_MODULES = [
    "edgekit", "edgekit.cli", "edgekit.card", "edgekit.errors", "edgekit.artifacts", "edgekit.preprocess",
    "edgekit.metrics", "edgekit.data.synth", "edgekit.data.writer", "edgekit.data.datasets",
    "edgekit.tasks.detection", "edgekit.tasks.segmentation", "edgekit.tasks.agreement", "edgekit.manifest",
    "edgekit.engine", "edgekit.calibration", "edgekit.onnx_io", "edgekit.evaluate", "edgekit.backends",
    "edgekit.backends.onnxruntime_backend", "edgekit.backends.tensorrt_backend", "edgekit.backends.cuda_mem",
    "edgekit.stream.sources", "edgekit.stream.pipeline", "edgekit.stream.runner", "edgekit.stream.report",
    "edgekit.stats", "edgekit.profile", "edgekit.power", "edgekit.tegra", "edgekit.doctor",
]

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], cwd=ROOT, capture_output=True, text=True)


def test_runtime_modules_import_without_torch():
    r = run_python("\n".join(f"import {m}" for m in RUNTIME_MODULES))
    assert r.returncode == 0, r.stderr


def test_help_and_version_work_without_torch():
    r = run_python("from edgekit.cli import main; main(['--help'])")
    assert "train" in r.stdout and "data" in r.stdout
    r = run_python("from edgekit.cli import main; main(['--version'])")
    assert "edgekit 0." in r.stdout


def test_build_side_verb_without_torch_is_one_line():
    r = run_python("from edgekit.cli import main; raise SystemExit(main(['models']))")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["edgekit: error: this needs the Python package 'torch', which is not "
                                             "installed: pip install 'edgekit[build]'"]
