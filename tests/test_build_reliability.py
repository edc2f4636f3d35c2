"""Issue 15, build side: calibration that streams (memory flat in the number of images, results unchanged),
--calib-size below 1 refused by the API and the calibration source recorded, one-line errors for a full disk
and for untrusted resume files, SIGTERM cleanup, outputs that would replace their inputs, stale side files.

Real parts throughout: the shipped detector exported to ONNX (the det_engine session fixture's folder), the
shipped calibration images, real onnxruntime calibrators and sessions, `edgekit` run as a user runs it."""

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_cli

from edgekit.build.demo import CALIBRATION, SHIPPED
from edgekit.build.engine_build import BuildOptions, build_engine
from edgekit.errors import EdgekitError
from edgekit.runtime import calibration
from edgekit.runtime import manifest as mf


@pytest.fixture(scope="module")
def det_onnx(det_engine, tmp_path_factory) -> Path:
    """A private copy of the shipped detector's ONNX (exported by the det_engine session fixture)."""
    copy = tmp_path_factory.mktemp("reliability") / "det.onnx"
    shutil.copyfile(det_engine.parent / "det.onnx", copy)
    return copy


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


# --- item 7: calibration streams -------------------------------------------------------------------------------

def test_calibration_set_describes_frames_and_keeps_the_old_hash(tmp_path):
    folder = tmp_path / "calib"
    shutil.copytree(CALIBRATION, folder)
    calib = calibration.load(folder, 8)
    files = sorted(folder.glob("*.jpg"))
    picked = [files[i] for i in calibration.video_frame_indices(len(files), 8)]
    old = hashlib.sha256()  # the hash build-engine has always recorded for these images
    for f in picked:
        old.update(f.name.encode())
        old.update(f.read_bytes())
    assert calib.sha256 == old.hexdigest()
    assert len(calib) == 8 and calib.source == f"8 images from {folder}"
    assert not any(isinstance(v, np.ndarray) for v in vars(calib).values())  # a description, not pixels
    first, second = list(calib), list(calib)  # iterable again and again (calibrators rewind)
    assert len(first) == 8 and all(np.array_equal(a, b) for a, b in zip(first, second))
    assert first[0].shape == (240, 320, 3) and first[0].dtype == np.uint8
    other = next(f for f in files if f not in picked)
    picked[3].write_bytes(other.read_bytes())  # an image replaced after load: refused, not calibrated on
    with pytest.raises(EdgekitError, match="changed while the engine was being built"):
        list(calib)


def test_video_calibration_streams_and_keeps_the_old_hash(tiny_synth):
    video = tiny_synth / "videos" / "stream_00.mp4"
    calib = calibration.load(video, 4)
    indices = calibration.video_frame_indices(calibration.video_frame_count(video), 4)
    assert calib.sha256 == hashlib.sha256(video.read_bytes() + repr(indices).encode()).hexdigest()
    frames = list(calib)
    assert len(frames) == len(calib) == 4 and calib.source == f"4 frames sampled from {video}"
    expected = calibration.read_video_frames(video, indices)
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected))


def test_calibration_cache_key_is_computed_streaming_with_the_same_value(det_onnx):
    """TensorRT's calibration cache key (implicit calibration, DLA) hashes every tensor: from the streaming set
    it is the key the list of all tensors gives."""
    from edgekit.build.onnx_io import embedded_card, load_model

    card = embedded_card(load_model(det_onnx), "x")
    tensors = calibration.Preprocessed(calibration.load(CALIBRATION, 5), card)
    held = list(tensors)
    assert len(held) == 5 and np.array_equal(tensors[3], held[3])
    assert (calibration.cache_key(det_onnx, tensors, "minmax", "10.3")
            == calibration.cache_key(det_onnx, held, "minmax", "10.3"))


def _ort_one_shot(onnx_path: Path, input_name: str, tensors: list, method: str, work: Path):
    """onnxruntime's own calibrator fed every tensor in one collect_data call (what build-engine did)."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import create_calibrator

    from edgekit.build import quantize as q

    cal = create_calibrator(onnx_path, None, augmented_model_path=str(work / "one-shot.onnx"),
                            calibrate_method=q._method_enum()[method], extra_options=q.CALIBRATOR_OPTIONS[method])
    with contextlib.redirect_stdout(io.StringIO()):
        cal.collect_data(q._Reader(input_name, tensors))
    return cal


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_streamed_calibration_gives_onnxruntime_s_own_ranges(det_onnx, tmp_path, method):
    """Chunked MinMax and two-pass histograms, one image at a time: the ranges file is byte for byte the one
    onnxruntime writes when it holds every image's activations at once."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import save_tensors_data

    from edgekit.build import quantize as q
    from edgekit.build.onnx_io import embedded_card, load_model

    card = embedded_card(load_model(det_onnx), "x")
    tensors = calibration.Preprocessed(calibration.load(CALIBRATION, 8), card)
    with contextlib.redirect_stdout(io.StringIO()):
        streamed = q.calibrate(det_onnx, card.input_name, tensors, method, tmp_path, chunk=3)  # chunks 3+3+2
        save_tensors_data(_ort_one_shot(det_onnx, card.input_name, list(tensors), method, tmp_path).compute_data(),
                          tmp_path / "one-shot.json")
    assert streamed.read_bytes() == (tmp_path / "one-shot.json").read_bytes()


def test_streamed_entropy_histograms_are_onnxruntime_s(det_onnx, tmp_path):
    """Entropy's threshold search takes half a minute on this graph: compare what it searches, the histograms
    (counts, bin edges, min, max, threshold of every tensor), with onnxruntime's own collection."""
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import create_calibrator

    from edgekit.build import quantize as q
    from edgekit.build.onnx_io import embedded_card, load_model

    card = embedded_card(load_model(det_onnx), "x")
    tensors = calibration.Preprocessed(calibration.load(CALIBRATION, 6), card)
    calibrator = create_calibrator(det_onnx, None, augmented_model_path=str(tmp_path / "a.onnx"),
                                   calibrate_method=q._method_enum()["entropy"],
                                   extra_options=q.CALIBRATOR_OPTIONS["entropy"])
    mine = q.histograms(calibrator, card.input_name, tensors).histogram_dict
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = _ort_one_shot(det_onnx, card.input_name, list(tensors), "entropy", tmp_path).collector.histogram_dict
    assert list(mine) == list(theirs) and len(mine) > 50
    for name, expected in theirs.items():
        got = mine[name]
        assert len(got) == len(expected) == 5, name
        for a, b in zip(got, expected):
            assert np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype, name


# --- item 10: the calibration source is the user's, and recorded -----------------------------------------------

def test_calib_size_below_one_is_refused_by_the_api(det_onnx, tmp_path):
    out = tmp_path / "e.onnx"
    for precision in ("int8", "fp32"):
        with pytest.raises(EdgekitError, match="--calib-size 0: calibrate on 1 image or more"):
            build_engine(det_onnx, out, BuildOptions(backend="onnxruntime", precision=precision,
                                                     calib=str(CALIBRATION), calib_size=0))
    with pytest.raises(EdgekitError, match="calibrate on 1 image or more"):
        calibration.load(CALIBRATION, 0)
    assert _leftovers(tmp_path) == []


def test_manifest_records_the_calibration_and_agreement_source(det_onnx, tmp_path):
    engine = tmp_path / "e.onnx"
    r = run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime", "--precision", "int8",
                "--calib", str(CALIBRATION), "--calib-size", "6")
    assert r.returncode == 0, r.stderr
    m = json.loads(mf.path_for(engine).read_text())
    source = f"6 images from {CALIBRATION}"  # spread over the first 26 of the 32: the last 6 are held out
    assert m["int8"]["calibration"] == {"source": source, "images": 6,
                                        "sha256": calibration.held_out_split(CALIBRATION, 6, 50)[0].sha256}
    held = f"6 images from {CALIBRATION}: the end of --calib, held out of calibration"
    assert m["agreement"]["source"] == held and m["agreement"]["frames"] == 6
    assert f"agreement with FP32 on {held}:" in r.stdout and "synthetic" not in r.stderr

    # FP32 with --calib: the agreement is measured on the user's images, not on synthetic scenes
    r = run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime", "--calib",
                str(CALIBRATION), "--calib-size", "5")
    assert r.returncode == 0, r.stderr
    m = json.loads(mf.path_for(engine).read_text())
    assert m["agreement"]["source"] == f"5 images from {CALIBRATION} (--calib; this precision is not calibrated)"
    assert m["agreement"]["frames"] == 5

    # No --calib at all: the synthetic fallback is said and recorded
    r = run_cli("build-engine", str(det_onnx), "-o", str(engine), "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "edgekit: note: no --calib given" in r.stderr and "synthetic" in r.stderr
    m = json.loads(mf.path_for(engine).read_text())
    assert "synthetic" in m["agreement"]["source"] and m["agreement"]["frames"] == 16


# --- item 12: one line, not a traceback -------------------------------------------------------------------------

def _run_with_file_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    """`edgekit ARGS` where no file may grow beyond `limit` bytes (writes fail with EFBIG, as `ulimit -f`)."""
    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "edgekit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit_files)


@pytest.mark.parametrize("limit", [300_000, 1_000_000])  # the FP32 copy fails; the quantizer's files fail
def test_file_size_limit_during_build_engine_is_one_line_and_leaves_nothing(det_onnx, tmp_path, limit):
    out = tmp_path / "out"
    out.mkdir()
    r = _run_with_file_limit(limit, "build-engine", str(det_onnx), "-o", str(out / "e.onnx"), "--backend",
                             "onnxruntime", "--precision", "int8", "--calib", str(CALIBRATION), "--calib-size", "4")
    assert_one_line_error(r, f"file size limit reached while writing {out / 'e.onnx'}; nothing was written")
    assert _leftovers(out) == []


def test_file_size_limit_during_export_and_disk_full_messages(tmp_path):
    from edgekit.build.export import write_failure

    r = _run_with_file_limit(200_000, "export", str(SHIPPED["detection"]), "-o", str(tmp_path / "d.onnx"))
    assert_one_line_error(r, f"file size limit reached while writing {tmp_path / 'd.onnx'}; nothing was written")
    assert _leftovers(tmp_path) == []
    full = write_failure(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), tmp_path / "e.onnx")
    assert str(full) == f"disk full while writing {tmp_path / 'e.onnx'}; nothing was written"
    assert write_failure(OSError(errno.EACCES, "Permission denied"), tmp_path / "e.onnx") is None


def test_resume_config_with_a_yaml_tag_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "constructed"
    (run / "config.yaml").write_text(f"task: !!python/object/apply:os.system ['touch {marker}']\ndata: x\nout: y\n")
    (run / "last.pt").write_bytes(b"")
    r = run_cli("train", "--resume", str(run), "-q")
    assert_one_line_error(r, f"{run / 'config.yaml'}: not a valid edgekit resume config",
                          "YAML tag edgekit does not load")
    assert not marker.exists()
    (run / "config.yaml").write_text("task: detection\ndata: x\nout: y\nepochs: many\n")
    assert_one_line_error(run_cli("train", "--resume", str(run), "-q"), "not a valid edgekit resume config",
                          "epochs: 'many' is not a number")


def test_resume_file_with_pickled_objects_is_refused_without_unsafe_advice(tiny_synth, tmp_path):
    import torch

    from edgekit.build.train.loop import TrainConfig, _config_dict
    from edgekit.runtime.artifacts import write_text
    from edgekit.runtime.card import _yaml

    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(task="detection", data=str(tiny_synth), out=str(run), imgsz=(64, 64), epochs=1, device="cpu")
    write_text(run / "config.yaml", _yaml().safe_dump(_config_dict(cfg.resolved()), sort_keys=False))
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "epoch": 1, "best": 0.0, "best_epoch": 1,
                "extra": Path("anything")}, run / "last.pt")  # a pickled object weights-only loading refuses
    r = run_cli("train", "--resume", str(run), "-q")
    assert_one_line_error(r, f"{run / 'last.pt'}: not an edgekit resume file (it holds pickled objects that "
                             "edgekit does not load)")
    assert "weights_only" not in r.stderr
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:100])  # truncated
    assert_one_line_error(run_cli("train", "--resume", str(run), "-q"), "not an edgekit resume file (unreadable")


# --- item 13: SIGTERM, outputs replacing inputs, stale side files ----------------------------------------------

def test_sigterm_during_build_engine_removes_its_temporary_folder(det_onnx, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-m", "edgekit", "build-engine", str(det_onnx), "-o", str(out / "e.onnx"), "--backend",
         "onnxruntime", "--precision", "int8", "--calib", str(CALIBRATION), "--calib-size", "26",
         "--calib-method", "percentile"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(".e.onnx.*.tmp")):  # the build's private folder: the work has started
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 143, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines == ["edgekit: terminated (SIGTERM); temporary files removed"], stderr
    assert _leftovers(out) == []


def test_output_that_would_replace_an_input_is_refused(det_onnx, tmp_path):
    onnx_copy = tmp_path / "m.onnx"
    shutil.copyfile(det_onnx, onnx_copy)
    before = _sha(onnx_copy)
    r = run_cli("build-engine", str(onnx_copy), "-o", str(onnx_copy), "--backend", "onnxruntime")
    assert_one_line_error(r, f"would replace the input ONNX {onnx_copy}; choose another -o")
    side = tmp_path / "e.trt-qdq.onnx"  # what an INT8 build at -o e writes beside the engine
    shutil.copyfile(det_onnx, side)
    r = run_cli("build-engine", str(side), "-o", str(tmp_path / "e"), "--backend", "onnxruntime", "--precision", "int8",
                "--calib", str(CALIBRATION), "--calib-size", "2")
    assert_one_line_error(r, f"its trt-qdq side file {side} would replace the input ONNX")
    (tmp_path / "link.onnx").symlink_to(onnx_copy)  # the same file by another name
    r = run_cli("build-engine", str(tmp_path / "link.onnx"), "-o", str(onnx_copy), "--backend", "onnxruntime")
    assert_one_line_error(r, "would replace the input ONNX")
    assert _sha(onnx_copy) == before and _sha(side) == _sha(det_onnx)
    assert sorted(_leftovers(tmp_path)) == ["e.trt-qdq.onnx", "link.onnx", "m.onnx"]

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in (SHIPPED["detection"], SHIPPED["detection"].with_name("edgenet-det-s.card.yaml")):
        shutil.copyfile(f, ckpt / f.name)
    weights = ckpt / SHIPPED["detection"].name
    before = _sha(weights)
    r = run_cli("export", str(weights), "-o", str(weights))
    assert_one_line_error(r, f"would replace the checkpoint {weights}; choose another -o")
    assert _sha(weights) == before and sorted(_leftovers(ckpt)) == ["edgenet-det-s.card.yaml", weights.name]


def test_fp32_rebuild_over_an_int8_engine_removes_its_side_file(det_onnx, tmp_path):
    engine = tmp_path / "e.onnx"
    build_engine(det_onnx, engine, BuildOptions(backend="onnxruntime", precision="int8", calib=str(CALIBRATION),
                                                calib_size=2))
    assert _leftovers(tmp_path) == ["e.onnx", "e.onnx.manifest.json", "e.onnx.trt-qdq.onnx"]
    build_engine(det_onnx, engine, BuildOptions(backend="onnxruntime", precision="fp32"))
    assert _leftovers(tmp_path) == ["e.onnx", "e.onnx.manifest.json"]
    m = mf.read(engine)
    assert m.precision == "fp32" and m.files == {}
