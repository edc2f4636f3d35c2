"""The runtime side (DESIGN.md section 2) must import and work where torch and onnx are not installed.
Its modules are found from the folder edgekit/runtime, not from a list."""

import subprocess
import sys

from conftest import ROOT
from test_architecture import modules

RUNTIME_MODULES = sorted(m for m in modules() if m.startswith("edgekit.runtime")) + ["edgekit", "edgekit.cli"]

BLOCK = ("import sys\nfor m in ('torch', 'torchvision', 'onnx', 'onnxslim', 'torch_pruning'):\n"
         "    sys.modules[m] = None\n")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True)


def test_the_blocking_works():
    """Without this, the tests below could pass on a machine that merely lacks nothing."""
    r = run_python("import torch")
    assert r.returncode == 1 and ("ModuleNotFoundError" in r.stderr or "ImportError" in r.stderr)


def test_runtime_modules_import_without_torch_or_onnx():
    assert len(RUNTIME_MODULES) > 20
    r = run_python("\n".join(f"import {m}" for m in RUNTIME_MODULES) +
                   "\nassert not [m for m in sys.modules if m.startswith('edgekit.build')], 'build side loaded'")
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
