"""Installing edgekit's runtime side the way jetson/setup.sh does it, checked with the real package registry and a
real Python 3.8 (JetPack 5's): what pip resolves for a Jetson (aarch64, JetPack 5's Python 3.8 and JetPack 6's
3.10) keeps NumPy below 2 for JetPack's OpenCV; a venv set up like Ubuntu 20.04's (pip 20.0, setuptools 44) takes
edgekit after setup.sh's pip/setuptools upgrade; a current setuptools still builds the package.

Each test skips, saying why, where the registry cannot be reached or Python 3.8 is absent. Nothing is installed
into the project's own environment: `pip install --dry-run --target` resolves without installing, and the rest
happens in temporary venvs."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import List, Optional

import pytest
from conftest import ROOT
from test_jetson_scripts import DATA, SETUP, runtime_requirements, setup_sh, would_run

# Lines pip prints when it cannot reach an index (connection refused, no DNS, proxy, timeouts).
OFFLINE = re.compile(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
                     r"Name or service not known|Network is unreachable|Max retries exceeded|ProxyError|"
                     r"ConnectTimeout|ReadTimeout|Could not fetch URL|No route to host")
NET = ["--timeout", "20", "--retries", "1"]


def pip(python: str, *args: str, cwd: Optional[Path] = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """`python -m pip ARGS`; skips the test where the failure is the registry being unreachable."""
    r = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if r.returncode != 0:
        offline = OFFLINE.search(r.stdout + r.stderr)
        if offline:
            pytest.skip(f"the package registry cannot be reached ({offline.group(0)})")
    return r


def dry_run_commands(release: str, venv: Path, script: Path = SETUP) -> List[List[str]]:
    r = setup_sh(DATA / release, "--dry-run", "--venv", str(venv), script=script)
    assert r.returncode == 0, r.stderr
    return would_run(r.stdout)


def copy_checkout(dest: Path) -> Path:
    """What an install of the runtime side reads (the package, its metadata, jetson/), without build outputs.
    Builds write into the source folder (build/, *.egg-info): a copy keeps the checkout as it is."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("edgekit", "jetson"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def glibc_platforms(minor: int) -> List[str]:
    """--platform flags for aarch64 Linux with glibc 2.MINOR: pip takes each tag as given, not the older ones."""
    tags = [f"manylinux_2_{m}_aarch64" for m in range(minor, 16, -1)] + ["manylinux2014_aarch64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


@pytest.mark.parametrize("release, python_version, glibc, numpy_floor, cuda_major", [
    # JetPack 5.1.2: Ubuntu 20.04 (glibc 2.31), Python 3.8, system NumPy 1.17, CUDA 11.4
    ("nv_tegra_release_r35.4.1.txt", "3.8", 31, "1.17", 11),
    # JetPack 6.1: Ubuntu 22.04 (glibc 2.35), Python 3.10, system NumPy 1.21.5, CUDA 12.6
    ("nv_tegra_release_r36.4.0.txt", "3.10", 35, "1.21", 12),
])
def test_jetson_runtime_requirements_keep_numpy_1(tmp_path, release, python_version, glibc, numpy_floor, cuda_major):
    # The exact requirements setup.sh installs on this release, resolved for a Jetson's Python and platform as if
    # nothing were installed (the worst case: a venv that sees JetPack's NumPy 1.x may still get a newer one).
    requirements = runtime_requirements(dry_run_commands(release, tmp_path / "venv"))
    report = tmp_path / "report.json"
    r = pip(sys.executable, "install", "--dry-run", "--ignore-installed", "--report", str(report), "--quiet",
            "--python-version", python_version, *glibc_platforms(glibc), "--only-binary=:all:",
            "--target", str(tmp_path / "target"), *NET, *requirements)
    assert r.returncode == 0, r.stderr[-3000:]
    resolved = {i["metadata"]["name"].lower(): i for i in json.loads(report.read_text())["install"]}
    numpy = resolved["numpy"]["metadata"]["version"]
    assert numpy.split(".")[0] == "1", f"NumPy {numpy} would break JetPack's cv2 (built against NumPy 1.x)"
    assert tuple(map(int, numpy.split(".")[:2])) >= tuple(map(int, numpy_floor.split(".")))
    assert "onnxruntime" in resolved and "faster-coco-eval" in resolved
    assert resolved["cuda-python"]["metadata"]["version"].startswith(f"{cuda_major}.")
    for item in resolved.values():  # wheels a Jetson can install: aarch64 or pure Python
        wheel = item["download_info"]["url"].rsplit("/", 1)[-1]
        assert wheel.endswith(("aarch64.whl", "-none-any.whl")), wheel


def find_python38() -> Optional[str]:
    candidates = [os.environ.get("EDGEKIT_PYTHON38", "")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates += [shutil.which("python3.8") or "", "/usr/bin/python3.8"]
    for c in filter(None, candidates):
        try:
            r = subprocess.run([c, "-c", "import sys, venv, ensurepip; print(sys.version_info[:2] == (3, 8))"],
                               capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.stdout.strip() == "True":
            return c
    return None


def test_jetpack5_python38_venv_installs_edgekit(tmp_path):
    python38 = find_python38()
    if python38 is None:
        pytest.skip("no Python 3.8 interpreter (JetPack 5's): set EDGEKIT_PYTHON38 or put python3.8 on PATH")
    src = copy_checkout(tmp_path / "edgekit-src")
    venv = tmp_path / "venv"
    commands = dry_run_commands("nv_tegra_release_r35.4.1.txt", venv, script=src / "jetson" / "setup.sh")
    create = next(c for c in commands if c[1:3] == ["-m", "venv"])
    subprocess.run([python38, *create[1:]], check=True, capture_output=True, timeout=120)
    vpy = str(venv / "bin" / "python")
    # The venv Ubuntu 20.04's python3-venv makes: pip 20.0.2 and setuptools 44.0.0.
    r = pip(vpy, "install", "-q", "pip==20.0.2", "setuptools==44.0.0", *NET)
    assert r.returncode == 0, r.stderr[-2000:]
    r = pip(vpy, "install", "-q", "--no-deps", "-e", str(src))
    assert r.returncode != 0 and "setup.py" in r.stderr, "pip 20.0 was expected to refuse a pyproject-only -e"

    # setup.sh's commands in the venv, in its order, as it runs them: pip and setuptools upgraded, NumPy's pin made
    # the venv's constraint, edgekit installed. Not its runtime packages (their resolution: the test above).
    in_venv = [c for c in commands if c[0] == vpy]
    assert any(a.startswith("onnxruntime") for a in in_venv[-1])
    for command in in_venv[:-1]:
        r = subprocess.run([*command, *(NET if command[1:4] == ["-m", "pip", "install"] else [])],
                           capture_output=True, text=True, timeout=180, cwd=tmp_path)
        if r.returncode != 0 and OFFLINE.search(r.stdout + r.stderr):
            pytest.skip(f"the package registry cannot be reached ({OFFLINE.search(r.stdout + r.stderr).group(0)})")
        assert r.returncode == 0, (command, r.stderr[-3000:])
    r = subprocess.run([vpy, "-m", "pip", "config", "list"], capture_output=True, text=True)
    constraints = venv / "edgekit-constraints.txt"
    assert f"global.constraint='{constraints}'" in r.stdout.splitlines(), r.stdout
    assert "numpy<2" in constraints.read_text().splitlines()
    versions = subprocess.run([vpy, "-c", "from importlib.metadata import version as v; "
                                          "print(v('pip'), v('setuptools'))"], capture_output=True, text=True)
    pip_version, setuptools_version = versions.stdout.split()
    assert int(setuptools_version.split(".")[0]) < 76, setuptools_version  # what Python 3.8 installs
    assert tuple(map(int, pip_version.split(".")[:2])) >= (21, 3), pip_version

    # What a user runs next, from anywhere.
    r = subprocess.run([vpy, "-c", "import edgekit, sys; print(edgekit.__file__, sys.version_info[:2])"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{src / 'edgekit' / '__init__.py'} (3, 8)"
    r = subprocess.run([vpy, "-m", "edgekit", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: edgekit"), r.stderr
    r = subprocess.run([str(venv / "bin" / "edgekit"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("edgekit "), r.stderr

    # A plain build in pip's isolated environment (`pip install .`, `pip wheel .`) on Python 3.8 gets a setuptools
    # from [build-system] that installs there.
    r = pip(vpy, "wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"), *NET, str(src), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    used = setuptools_used(r.stdout + r.stderr)
    assert int(used[-1].split(".")[0]) < 76, used
    assert "License: Apache-2.0" in wheel_metadata(tmp_path / "dist").splitlines()


def setuptools_used(pip_output: str) -> List[str]:
    """The setuptools versions a verbose pip build installed into its isolated build environment."""
    used = re.findall(r"Successfully installed (?:\S+ )*?setuptools-(\d+(?:\.\d+)*)", pip_output)
    assert used, pip_output[-3000:]
    return used


def wheel_metadata(dist: Path) -> str:
    (wheel,) = dist.glob("edgekit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def test_current_setuptools_builds_the_package(tmp_path):
    # pip's isolated build takes the newest setuptools the registry has for this Python (77+ reads PEP 639).
    src = copy_checkout(tmp_path / "edgekit-src")
    r = pip(sys.executable, "wheel", "--no-deps", "-v", "-w", str(tmp_path / "dist"), *NET, str(src), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    used = setuptools_used(r.stdout + r.stderr)
    assert int(used[-1].split(".")[0]) >= 77, used  # one that reads PEP 639 and would reject a malformed license
    meta = wheel_metadata(tmp_path / "dist")
    assert "License: Apache-2.0" in meta.splitlines() or "License-Expression: Apache-2.0" in meta.splitlines()
    assert "Requires-Python: >=3.8" in meta.splitlines()
    assert "error:" not in (r.stdout + r.stderr).lower().replace("error: subprocess", "")
