"""Real TensorRT engines of small edgekit models: built, run, compared with ONNX Runtime on the CPU."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgekit.build.demo import CALIBRATION, SHIPPED
from edgekit.build.engine_build import BuildOptions, build_engine
from edgekit.errors import EdgekitError
from edgekit.runtime import manifest as mf
from edgekit.runtime.card import ModelCard
from edgekit.runtime.opening import open_engine
from edgekit.runtime.preprocess import preprocess

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


def _export(checkpoint_path: Path, onnx_path: Path) -> Path:
    """Exporting needs PyTorch, which a Jetson's runtime image may lack: jetson/selftest.sh then passes ONNX
    files exported on a PC through EDGEKIT_ONNX_DIR."""
    given = Path(os.environ.get("EDGEKIT_ONNX_DIR", "/nonexistent")) / onnx_path.name
    if given.is_file():
        return given
    pytest.importorskip("torch", reason="exporting needs PyTorch (or EDGEKIT_ONNX_DIR with exported ONNX files)")
    from edgekit.build.export import export

    export(checkpoint_path, onnx_path)
    return onnx_path


@pytest.fixture(scope="module")
def det_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    return _export(SHIPPED["detection"], folder / "edgenet-det-s.onnx")


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    return _export(SHIPPED["segmentation"], folder / "edgenet-seg-s.onnx")


@pytest.mark.parametrize("task", ["detection", "segmentation"])
@pytest.mark.parametrize("precision, floor", [("fp32", 0.99), ("fp16", 0.97), ("int8", 0.9)])
def test_shipped_engines_agree_with_onnxruntime_cpu(trt, det_onnx, seg_onnx, tmp_path, task, precision, floor):
    """The real models on real calibration images: the TensorRT engine against ONNX Runtime on the CPU running
    the same graph (FP32 ONNX; for INT8 the Q/DQ file TensorRT built from), compared as a user would."""
    from edgekit.build.engine_build import measure_agreement
    from edgekit.runtime.backends.base import TENSORRT_QDQ
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgekit.runtime.calibration import load

    onnx_path = det_onnx if task == "detection" else seg_onnx
    engine = tmp_path / f"{task}.{precision}.plan"
    opts = BuildOptions(backend="tensorrt", precision=precision)
    if precision == "int8":
        opts.calib, opts.calib_size = str(CALIBRATION), 32
    build_engine(onnx_path, engine, opts)
    opened = open_engine(engine)
    assert opened.manifest is not None
    qdq = opened.manifest.side_file(engine, TENSORRT_QDQ)
    reference = OnnxRuntimeBackend(qdq or onnx_path)
    with opened, reference:
        xs = [preprocess(frame, opened.card)[0] for frame in load(str(CALIBRATION), 8).frames]
        refs = [reference.infer([x]) for x in xs]
        if precision == "fp32":
            for x, ref in zip(xs, refs):
                for name, r in ref.items():
                    np.testing.assert_allclose(opened.infer(x)[name], r, atol=2e-2, rtol=1e-2)
        agreement = measure_agreement(opened.card, refs, opened.backend, xs)
    key = "detection_f1" if task == "detection" else "pixel_agreement"
    assert agreement[key] >= floor, agreement


def ort_reference(onnx_path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-2), ("fp16", 0.5)])
def test_engine_matches_onnxruntime(trt, det_onnx, tmp_path, precision, atol):
    engine = tmp_path / f"det.{precision}.plan"
    rep = build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision=precision))
    assert rep.backend == "tensorrt" and engine.is_file() and mf.path_for(engine).is_file()
    opened = open_engine(engine)
    backend, manifest, card = opened.backend, opened.manifest, opened.card
    x, _ = preprocess(np.full((240, 320, 3), 100, np.uint8), card)  # a flat frame: no detections needed
    y = backend.infer([x])["output0"]
    np.testing.assert_allclose(y, ort_reference(det_onnx, x), atol=atol, rtol=1e-2)
    t = backend.last_timing
    assert t.device_ms is not None and t.device_ms > 0 and t.h2d_ms is not None
    assert manifest.backend.gpu and manifest.backend.compute_capability


def test_int8_engine_from_qdq(trt, det_onnx, tiny_calib, tmp_path):
    engine = tmp_path / "det.int8.plan"
    rep = build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision="int8", calib=str(tiny_calib),
                                                      calib_size=16))
    assert rep.precision == "int8" and rep.agreement["frames"] > 0
    m = json.loads(mf.path_for(engine).read_text())
    assert m["files"]["tensorrt_qdq_onnx"]
    # every TensorRT generation builds the Q/DQ file on the GPU, and the manifest says so
    assert m["backend"]["int8_path"] == "explicit Q/DQ" and "calibrator" not in m["backend"]
    assert m["int8"]["quantizer"].startswith("onnxruntime.quantization") and "Q/DQ" in m["int8"]["engine_file_is"]
    assert not (tmp_path / "det.int8.plan.calib.cache").exists()


def test_implicit_calibrator_reuses_its_cache_only_for_the_same_inputs(trt, det_onnx, tiny_calib, tmp_path,
                                                                       monkeypatch):
    if getattr(trt, "IInt8MinMaxCalibrator", None) is None:
        pytest.skip("this TensorRT has no implicit calibrator (11.x)")
    from edgekit.runtime import calibration
    from edgekit.runtime.backends.base import BuildRequest
    from edgekit.runtime.backends.tensorrt import build_serialized
    from edgekit.runtime.calibration import load

    card = open_engine_card(det_onnx)
    tensors = [preprocess(f, card)[0] for f in load(tiny_calib, 8).frames]
    cache = tmp_path / "det.calib.cache"
    reads = []
    real_read = calibration.read_cache

    def spy(path, key):
        got = real_read(path, key)
        reads.append(got is not None)
        return got

    monkeypatch.setattr(calibration, "read_cache", spy)

    def request(calib_tensors):
        return BuildRequest(det_onnx, {}, tmp_path, "int8", card.input_size, calib_tensors=calib_tensors,
                            calib_cache=cache, calib_method="minmax", workspace_mb=512)

    record = build_serialized(request(tensors), tmp_path / "a.plan", force_implicit=True)
    assert record.int8_path == "implicit calibration" and record.calibrator == "IInt8MinMaxCalibrator"
    first = cache.read_text(errors="replace")
    assert first.splitlines()[0].startswith("TRT-") and "MinMaxCalibration" in first.splitlines()[0]
    assert reads == [False]
    build_serialized(request(tensors), tmp_path / "b.plan", force_implicit=True)
    assert reads[-1] is True  # same ONNX, images, method and TensorRT: the cache was used
    black = [np.zeros_like(t) for t in tensors]
    build_serialized(request(black), tmp_path / "c.plan", force_implicit=True)
    assert reads[-1] is False  # other images: the stale cache was ignored and TensorRT calibrated again
    assert cache.read_text(errors="replace") != first


def test_engine_memory_is_flat_and_freed_on_close(trt, det_onnx, tmp_path):
    engine = tmp_path / "det.plan"
    build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision="fp16"))
    opened = open_engine(engine)
    backend = opened.backend
    x, _ = preprocess(np.full((240, 320, 3), 100, np.uint8), opened.card)
    for _ in range(20):
        backend.infer([x])
    free0 = backend.cuda.mem_info()[0]
    for _ in range(1000):
        backend.infer([x])
    assert abs(backend.cuda.mem_info()[0] - free0) < (4 << 20)
    opened.close()
    assert backend.cuda.mem_info()[0] >= free0
    opened.close()  # again: nothing happens
    with pytest.raises(EdgekitError, match="closed"):
        backend.infer([x])


def test_layer_times_name_real_layers(trt, det_onnx, tmp_path):
    engine = tmp_path / "det.plan"
    build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision="fp16"))
    with open_engine(engine) as opened:
        x, _ = preprocess(np.full((240, 320, 3), 100, np.uint8), opened.card)
        times = opened.backend.layer_times([x], 50)
        opened.infer(x)  # the profiler is detached: runs go on as before
    assert times and all(t.ms >= 0 and t.device == "GPU" and t.name for t in times)
    assert [t.ms for t in times] == sorted((t.ms for t in times), reverse=True)
    assert any(t.kind for t in times)  # built with detailed profiling verbosity: the inspector gives kinds


def test_inference_from_a_worker_thread(trt, det_onnx, tmp_path):
    """run-stream infers on a pipeline thread: the engine loaded on the main thread runs there (primary context)."""
    import threading

    engine = tmp_path / "det.plan"
    build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision="fp32"))
    with open_engine(engine, pipelined=True) as opened:
        x, _ = preprocess(np.full((240, 320, 3), 100, np.uint8), opened.card)
        expected = opened.infer(x)
        got, errors = [], []

        def work():
            try:
                got.append(opened.infer(x))
            except Exception as e:  # collected for the main thread
                errors.append(e)

        t = threading.Thread(target=work)
        t.start()
        t.join(120)
    assert not errors, errors
    for name, value in expected.items():
        np.testing.assert_allclose(got[0][name], value, atol=1e-5)


def test_execution_contexts_in_parallel_give_the_engine_s_results(trt, det_onnx, tmp_path):
    """run-stream's --workers on TensorRT: contexts of one engine, each on its own stream with its own buffers, run
    at once from their threads and give what the engine gives alone; closing them leaves the engine running."""
    import threading

    engine = tmp_path / "det.plan"
    build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision="fp32"))
    with open_engine(engine, pipelined=True) as opened:
        frames = [preprocess(np.full((240, 320, 3), v, np.uint8), opened.card)[0] for v in (40, 100, 160, 220)]
        expected = [opened.infer(x) for x in frames]
        workers = [opened.backend.worker(0) for _ in range(3)]
        got, errors = {}, []

        def work(k, w):
            try:
                for i in range(20):
                    got[(k, i)] = w.infer([frames[(k + i) % len(frames)]])
            except Exception as e:  # collected for the main thread
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k, w)) for k, w in enumerate(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for w in workers:
            w.close()
        again = opened.infer(frames[0])
    assert not errors, errors
    for (k, i), out in got.items():
        for name, value in expected[(k + i) % len(frames)].items():
            np.testing.assert_allclose(out[name], value, atol=1e-5)
    for name, value in expected[0].items():
        np.testing.assert_allclose(again[name], value, atol=1e-5)


def test_run_stream_on_tensorrt_reports_what_the_runner_adds_to_the_engine(trt, det_onnx, tmp_path):
    """Two execution contexts in run-stream: every frame's H2D + compute + D2H (CUDA events) is in the report, and
    the ratio issue 17 asks for (end-to-end p50 / engine p50, goal <= 1.15 on a Jetson) is printed."""
    from edgekit.runtime.stream.report import markdown
    from edgekit.runtime.stream.runner import StreamOptions, run_stream

    engine = tmp_path / "det.plan"
    build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision="fp16"))
    r = run_stream(engine, "synthetic://?size=640x480&fps=30", StreamOptions(
        out=str(tmp_path / "s"), max_frames=150, save_video=False, progress=False))
    assert r["inference"]["workers"] == 2 and r["frames"]["accounted"]
    assert r["engine_ms"]["count"] == r["frames"]["processed"] > 0
    assert r["engine_ms"]["p50"] >= r["device_ms"]["p50"] > 0
    assert "end to end p50 / engine p50 (H2D + compute + D2H)" in markdown(r)


def test_manifest_from_another_gpu_is_refused(trt, det_onnx, tmp_path):
    engine = tmp_path / "det.plan"
    build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision="fp32"))
    data = json.loads(mf.path_for(engine).read_text())
    data["backend"]["gpu"] = "Some Other GPU"
    mf.path_for(engine).write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match="built with gpu Some Other GPU"):
        open_engine(engine)


@pytest.mark.jetson
def test_dla_engine_where_present(trt, det_onnx, tiny_calib, tmp_path):
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    if builder.num_DLA_cores == 0:
        pytest.skip("no DLA cores on this device")
    engine = tmp_path / "det.dla.plan"
    rep = build_engine(det_onnx, engine, BuildOptions(backend="tensorrt", precision="fp16", dla_core=0))
    m = json.loads(mf.path_for(engine).read_text())
    assert m["backend"]["dla_core"] == 0
    assert rep.agreement["detection_f1"] >= 0.95  # FP16 on the DLA follows the FP32 graph closely
    # where the layers run, from the engine inspector: most on the DLA, in the manifest and the build summary
    assert rep.placement.get("DLA") and m["placement"] == rep.placement
    from edgekit.build.engine_build import placement_summary

    assert placement_summary(rep.placement, 0).startswith(f"layers: {len(rep.placement['DLA'])} on DLA 0")
    if getattr(trt, "IInt8MinMaxCalibrator", None) is not None:  # INT8 on the DLA: TensorRT calibrates itself
        int8 = tmp_path / "det.dla.int8.plan"
        build_engine(det_onnx, int8, BuildOptions(backend="tensorrt", precision="int8", dla_core=0,
                                                  calib=str(tiny_calib), calib_size=16))
        m = json.loads(mf.path_for(int8).read_text())
        assert m["backend"]["int8_path"] == "implicit calibration"
        assert m["int8"]["quantizer"].startswith("TensorRT implicit calibration (IInt8MinMaxCalibrator)")
        assert m["int8"]["kept_fp32"] == [] and (tmp_path / "det.dla.int8.plan.calib.cache").is_file()


@pytest.fixture(scope="module")
def tiny_calib(tmp_path_factory):
    import cv2

    from edgekit.runtime.data.synth import render_image

    folder = tmp_path_factory.mktemp("calib")
    for i in range(16):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), render_image(5, i).image)
    return folder


def open_engine_card(onnx_path: Path) -> ModelCard:
    from edgekit.build.onnx_io import embedded_card, load_model

    card = embedded_card(load_model(onnx_path), str(onnx_path))
    assert card is not None
    return card
