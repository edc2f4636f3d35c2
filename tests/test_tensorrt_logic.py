"""The TensorRT backend's logic on CPU (issue 14): feature detection per API generation, the INT8 route, the calibration
cache key, the one process logger, the engine inspector's JSON, buffer reuse and release, the --max-batch check,
the doctor's CUDA binding lines. TensorRT and CUDA are stood in for by small fakes that behave as the documented
API does (TENSORRT.md); what needs the real ones is in tests/gpu and jetson/gpu-check.sh."""

import json
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from edgekit.errors import EdgekitError
from edgekit.runtime import calibration
from edgekit.runtime import manifest as mf
from edgekit.runtime.backends import tensorrt as trtmod
from edgekit.runtime.backends.base import TENSORRT_QDQ, BuildRequest
from edgekit.runtime.backends.cuda_mem import BufferPool, CudaApi, install_advice, known_problem


# --- fakes ----------------------------------------------------------------------------------------------------------
class FakeCuda(CudaApi):
    """Device memory as a dict of bytes; counts what is alive so a test can see leaks."""

    name = "fake-cuda"

    def __init__(self) -> None:
        self.mem: Dict[int, bytes] = {}
        self.next = 0x1000
        self.host_live: Dict[int, int] = {}  # address -> bytes
        self.streams = self.events = 0
        self.device_allocs = self.host_allocs = 0

    def malloc(self, nbytes: int) -> int:
        self.next += 0x1000 + nbytes
        self.mem[self.next] = bytes(nbytes)
        self.device_allocs += 1
        return self.next

    def free(self, ptr: int) -> None:
        del self.mem[ptr]  # KeyError on a double free

    def host_alloc(self, nbytes: int) -> np.ndarray:
        buf = np.zeros(nbytes, np.uint8)
        self.host_live[buf.__array_interface__["data"][0]] = nbytes
        self.host_allocs += 1
        return buf

    def host_free(self, buf: np.ndarray) -> None:
        del self.host_live[buf.__array_interface__["data"][0]]

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        assert len(self.mem[dst]) >= src.nbytes
        self.mem[dst] = np.ascontiguousarray(src).tobytes() + self.mem[dst][src.nbytes:]

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        dst.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.mem[src][: dst.nbytes], np.uint8)

    def stream(self) -> Any:
        self.streams += 1
        return object()

    def destroy_stream(self, stream: Any) -> None:
        self.streams -= 1

    def stream_handle(self, stream: Any) -> int:
        return id(stream)

    def synchronize(self, stream: Any) -> None:
        pass

    def event(self) -> Any:
        self.events += 1
        return object()

    def destroy_event(self, event: Any) -> None:
        self.events -= 1

    def record(self, event: Any, stream: Any) -> None:
        pass

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return 0.5

    def device_info(self):
        return "Fake GPU", "8.7"


GENERATIONS = ("8.6", "10.3", "11.4")


class State:
    """What the fake TensorRT saw."""

    def __init__(self) -> None:
        self.loggers: List[Any] = []
        self.parsed: Optional[str] = None
        self.flags: List[str] = []
        self.network_flags = 0
        self.calibrator: Any = None
        self.calibration_profile: Any = None
        self.profiles: List[Any] = []
        self.batches = 0
        self.verbosity = None
        self.layers_json = json.dumps({"Layers": ["conv1 + relu1", "head"], "Bindings": ["images", "out"]})
        self.input_shape = (1, 3, 8, 8)
        self.dla_cores = 0


def fake_trt(generation: str, cuda: FakeCuda, state: State) -> types.ModuleType:
    """A TensorRT Python module of one API generation, with the names that generation has (TENSORRT.md)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = {"8.6": "8.6.2", "10.3": "10.3.0", "11.4": "11.4.0"}[generation]
    weak = generation != "11.4"

    class ILogger:
        def __init__(self) -> None:
            pass

    class IProfiler:
        def __init__(self) -> None:
            pass

    class Calibrator:
        def __init__(self) -> None:
            pass

    net_flags = ["EXPLICIT_BATCH"] if generation != "11.4" else []
    net_flags += ["STRONGLY_TYPED"] if generation != "8.6" else []
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**{n: i for i, n in enumerate(net_flags)})
    trt.BuilderFlag = types.SimpleNamespace(**{n: n for n in ["SPARSE_WEIGHTS", "GPU_FALLBACK", "TF32"]
                                               + (["FP16", "INT8"] if weak else [])})
    trt.ILogger, trt.IProfiler = ILogger, IProfiler
    if weak:
        trt.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (Calibrator,), {})
        trt.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (Calibrator,), {})
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="json", ONELINE="oneline")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed", LAYER_NAMES_ONLY="names")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.DeviceType = types.SimpleNamespace(GPU="gpu", DLA="dla")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dt: np.dtype(dt).type

    class Profile:
        def __init__(self) -> None:
            self.shapes: Dict[str, Any] = {}

        def set_shape(self, name, mn, opt, mx):
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))

    class IBuilderConfig:
        def __init__(self) -> None:
            self.profiling_verbosity = None

        def set_memory_pool_limit(self, pool, size):
            pass

        def set_flag(self, flag):
            state.flags.append(flag)

        def add_optimization_profile(self, profile):
            state.profiles.append(profile)

    if weak:
        IBuilderConfig.int8_calibrator = None

        def set_calibration_profile(self, profile):
            state.calibration_profile = profile

        IBuilderConfig.set_calibration_profile = set_calibration_profile

    class Tensor:
        name = "images"

        @property
        def shape(self):
            return state.input_shape

    class Network:
        num_layers = 3

        def get_layer(self, i):
            return types.SimpleNamespace(name=["conv1", "relu1", "head"][i])

        def get_input(self, i):
            return Tensor()

    class Parser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            state.loggers.append(logger)

        def parse_from_file(self, path):
            state.parsed = path
            return True

    class Builder:
        def __init__(self, logger) -> None:
            state.loggers.append(logger)
            self.num_DLA_cores = state.dla_cores

        def create_network(self, flags):
            state.network_flags = flags
            return Network()

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            state.verbosity = config.profiling_verbosity
            cal = getattr(config, "int8_calibrator", None)
            state.calibrator = cal
            if cal is not None and cal.read_calibration_cache() is None:  # calibrate, as TensorRT does
                while cal.get_batch(["images"]) is not None:
                    state.batches += 1
                cal.write_calibration_cache(f"TRT-8602-MinMaxCalibration\nimages: {state.batches:08x}\n".encode())
            return b"engine"

    class Context:
        def __init__(self) -> None:
            self.addresses: Dict[str, int] = {}
            self.shapes: Dict[str, tuple] = {}
            self.address_calls = 0
            self.profiler = None
            self.enqueue_emits_profile = True

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return len(shape) == 4

        def get_tensor_shape(self, name):
            return self.shapes["images"] if name == "out" else self.shapes[name]

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            self.address_calls += 1
            return True

        def execute_async_v3(self, handle):
            n = int(np.prod(self.shapes["images"])) * 4
            x = np.frombuffer(cuda.mem[self.addresses["images"]][:n], np.float32)
            out = self.addresses["out"]
            cuda.mem[out] = (x * 2).tobytes() + cuda.mem[out][n:]
            if self.profiler is not None:
                for name, ms in (("conv1 + relu1", 0.3), ("head", 0.1)):
                    self.profiler.report_layer_time(name, ms)
            return True

    class Inspector:
        def get_engine_information(self, fmt):
            assert fmt == "json"
            return state.layers_json

    class ICudaEngine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["images", "out"][i]

        def get_tensor_shape(self, name):
            return (-1, 3, 8, 8)

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_mode(self, name):
            return "input" if name == "images" else "output"

        def create_execution_context(self):
            self.context = Context()
            return self.context

        def create_engine_inspector(self):
            return Inspector()

    class IExecutionContext:
        execute_async_v3 = Context.execute_async_v3

    if generation == "8.6":
        ICudaEngine.num_bindings = 2
        IExecutionContext.execute_async_v2 = Context.execute_async_v3

    class Runtime:
        def __init__(self, logger) -> None:
            state.loggers.append(logger)
            self.DLA_core = -1

        def deserialize_cuda_engine(self, blob):
            return ICudaEngine() if blob == b"engine" else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    trt.IBuilderConfig, trt.ICudaEngine, trt.IExecutionContext = IBuilderConfig, ICudaEngine, IExecutionContext
    return trt


@pytest.fixture
def fake(monkeypatch):
    """fake(generation) -> (trt, cuda, state), installed as what the backend imports."""
    def install(generation: str):
        cuda, state = FakeCuda(), State()
        trt = fake_trt(generation, cuda, state)
        monkeypatch.setattr(trtmod, "_trt", lambda: trt)
        monkeypatch.setattr(trtmod, "open_cuda", lambda: cuda)
        monkeypatch.setattr(trtmod, "_logger", None)  # a fresh process, as far as the logger goes
        return trt, cuda, state
    return install


# --- feature detection ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generation", GENERATIONS)
def test_api_features_per_generation(generation):
    f = trtmod.api_features(fake_trt(generation, FakeCuda(), State()))
    expected = {
        "8.6": dict(explicit_batch=True, fp16_flag=True, int8_flag=True, implicit_calibration=True,
                    calibration_profile=True, strongly_typed_flag=False, binding_index_api=True),
        "10.3": dict(explicit_batch=False, fp16_flag=True, int8_flag=True, implicit_calibration=True,
                     calibration_profile=True, strongly_typed_flag=True, binding_index_api=False),
        "11.4": dict(explicit_batch=False, fp16_flag=False, int8_flag=False, implicit_calibration=False,
                     calibration_profile=False, strongly_typed_flag=True, binding_index_api=False),
    }[generation]
    assert {k: getattr(f, k) for k in expected} == expected
    assert f.name_based_io and f.engine_inspector and f.profiler
    assert f.strongly_typed_only == (generation == "11.4")


def test_api_features_of_bare_classes_says_nothing_is_there():
    bare = types.SimpleNamespace(**{n: type(n, (), {}) for n in ("NetworkDefinitionCreationFlag", "BuilderFlag",
                                                                 "IBuilderConfig", "ICudaEngine", "IExecutionContext")})
    f = trtmod.api_features(bare)
    assert not any(v for v in vars(f).values())


# --- the INT8 route and the build decisions ---------------------------------------------------------------------------
@pytest.mark.parametrize("generation", GENERATIONS)
def test_int8_on_the_gpu_builds_the_qdq_file_on_every_generation(generation):
    f = trtmod.api_features(fake_trt(generation, FakeCuda(), State()))
    assert trtmod.int8_route(f, None, has_qdq=True) == mf.INT8_QDQ
    with pytest.raises(EdgekitError, match="Q/DQ ONNX, and none was prepared"):
        trtmod.int8_route(f, None, has_qdq=False)


def test_int8_on_the_dla_calibrates_implicitly_where_tensorrt_can():
    f8, f11 = (trtmod.api_features(fake_trt(g, FakeCuda(), State())) for g in ("8.6", "11.4"))
    assert trtmod.int8_route(f8, 0, has_qdq=True) == mf.INT8_IMPLICIT
    with pytest.raises(EdgekitError, match="--precision fp16"):
        trtmod.int8_route(f11, 1, has_qdq=True)


def test_calibrators_follow_the_method():
    assert trtmod.implicit_calibrator("minmax") == "IInt8MinMaxCalibrator"
    assert trtmod.implicit_calibrator("entropy") == "IInt8EntropyCalibrator2"
    with pytest.raises(EdgekitError, match="--calib-method percentile: .* minmax or entropy"):
        trtmod.implicit_calibrator("percentile")


def test_flags_per_generation():
    f8, f10, f11 = (trtmod.api_features(fake_trt(g, FakeCuda(), State())) for g in GENERATIONS)
    assert trtmod.network_flag_names(f8, strongly_typed=False) == ["EXPLICIT_BATCH"]
    assert trtmod.network_flag_names(f10, strongly_typed=False) == []
    assert trtmod.network_flag_names(f11, strongly_typed=True) == ["STRONGLY_TYPED"]
    with pytest.raises(EdgekitError, match="no strongly typed networks"):
        trtmod.network_flag_names(f8, strongly_typed=True)
    assert trtmod.builder_flag_names(f8, "int8", sparsity=True, dla=True) == ["FP16", "INT8", "SPARSE_WEIGHTS",
                                                                             "GPU_FALLBACK"]
    assert trtmod.builder_flag_names(f10, "fp16", sparsity=False, dla=False) == ["FP16"]
    assert trtmod.builder_flag_names(f10, "fp32", sparsity=False, dla=False) == []
    assert trtmod.builder_flag_names(f11, "int8", sparsity=False, dla=False) == []  # 11.x: precision from the ONNX


def test_profile_shapes():
    assert trtmod.profile_shapes((1, 3, 64, 96), (64, 96), 1) is None
    assert trtmod.profile_shapes((-1, 3, 64, 96), (64, 96), 8) == ((1, 3, 64, 96), (4, 3, 64, 96), (8, 3, 64, 96))
    assert trtmod.profile_shapes((-1, 3, -1, -1), (32, 48), 1) == ((1, 3, 32, 48),) * 3
    assert trtmod.profile_shapes((2, 3, -1, -1), (32, 48), 1) == ((2, 3, 32, 48),) * 3
    with pytest.raises(EdgekitError, match="NCHW"):
        trtmod.profile_shapes((-1, 16), (32, 48), 1)


# --- builds through the fake TensorRT ---------------------------------------------------------------------------------
def _request(tmp_path: Path, precision: str, dla_core=None, method="minmax", tensors=None, max_batch=1):
    fp32, qdq = tmp_path / "fp32.onnx", tmp_path / "trt-qdq.onnx"
    fp32.write_bytes(b"fp32 graph")
    qdq.write_bytes(b"qdq graph")
    if tensors is None:
        tensors = [np.full((1, 3, 8, 8), i, np.float32) for i in range(5)]
    return BuildRequest(fp32, {TENSORRT_QDQ: qdq}, tmp_path, precision, (8, 8), calib_tensors=tensors,
                        calib_cache=tmp_path / "e.plan.calib.cache", calib_method=method, dla_core=dla_core,
                        max_batch=max_batch)


@pytest.mark.parametrize("generation", ["8.6", "10.3"])
def test_gpu_int8_build_takes_the_qdq_file_and_no_calibrator(fake, tmp_path, generation):
    trt, cuda, state = fake(generation)
    built = trtmod._build(_request(tmp_path, "int8"), tmp_path / "e.plan")
    assert state.parsed == str(tmp_path / "trt-qdq.onnx") and state.calibrator is None
    assert state.flags == ["FP16", "INT8"] and state.verbosity == "detailed"
    assert state.network_flags == (1 if generation == "8.6" else 0)  # EXPLICIT_BATCH only where 8.x needs it
    assert built.record.int8_path == mf.INT8_QDQ and built.record.calibrator is None
    assert "Q/DQ ONNX" in built.int8_engine_is and not (tmp_path / "e.plan.calib.cache").exists()
    assert (tmp_path / "e.plan").read_bytes() == b"engine" and built.placement == {}


def test_dla_int8_build_calibrates_with_the_asked_method_and_frees_its_buffers(fake, tmp_path):
    trt, cuda, state = fake("8.6")
    state.dla_cores = 2
    state.layers_json = json.dumps({"Layers": [{"Name": "{ForeignNode[conv1...relu1]}"},
                                               {"Name": "head", "LayerType": "CaskConvolution"}]})
    built = trtmod._build(_request(tmp_path, "int8", dla_core=1), tmp_path / "e.plan")
    assert state.parsed == str(tmp_path / "fp32.onnx")  # the FP32 ONNX: TensorRT calibrates it itself
    assert isinstance(state.calibrator, trt.IInt8MinMaxCalibrator) and state.batches == 5
    assert state.flags == ["FP16", "INT8", "GPU_FALLBACK"]
    assert built.record.int8_path == mf.INT8_IMPLICIT and built.record.calibrator == "IInt8MinMaxCalibrator"
    assert "implicit-calibration" in built.record.builder_flags and built.record.dla_core == 1
    assert "IInt8MinMaxCalibrator" in built.int8_engine_is and "DLA core 1" in built.int8_engine_is
    assert built.placement == {"DLA": ["conv1", "relu1"], "GPU": ["head"]}
    assert cuda.mem == {} and cuda.streams == 0  # the calibrator's buffer and its one stream are released


def test_calibration_cache_is_reused_only_for_the_same_inputs(fake, tmp_path):
    trt, cuda, state = fake("8.6")
    state.dla_cores = 1
    cache = tmp_path / "e.plan.calib.cache"
    trtmod._build(_request(tmp_path, "int8", dla_core=0), tmp_path / "e.plan")
    assert state.batches == 5 and cache.read_text().startswith("TRT-")
    trtmod._build(_request(tmp_path, "int8", dla_core=0), tmp_path / "e.plan")
    assert state.batches == 5  # same ONNX, images, method, version: the cache was read, nothing calibrated
    trtmod._build(_request(tmp_path, "int8", dla_core=0, tensors=[np.zeros((1, 3, 8, 8), np.float32)] * 2),
                  tmp_path / "e.plan")
    assert state.batches == 7  # other images: the stale cache was ignored, TensorRT calibrated again...
    assert cache.read_text().splitlines()[1] == "images: 00000007"  # ...and the cache was rewritten
    trtmod._build(_request(tmp_path, "int8", dla_core=0, method="entropy",
                           tensors=[np.zeros((1, 3, 8, 8), np.float32)] * 2), tmp_path / "e.plan")
    assert state.batches == 9 and isinstance(state.calibrator, trt.IInt8EntropyCalibrator2)


def test_dynamic_network_calibrates_with_a_batch_1_profile(fake, tmp_path):
    trt, cuda, state = fake("8.6")
    state.input_shape = (-1, 3, 8, 8)
    trtmod.build_serialized(_request(tmp_path, "int8", max_batch=4), tmp_path / "e.plan", force_implicit=True)
    assert [p.shapes["images"] for p in state.profiles] == [((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))]
    assert state.calibration_profile.shapes["images"] == ((1, 3, 8, 8),) * 3


def test_build_refusals_are_one_line(fake, tmp_path):
    trt, cuda, state = fake("8.6")
    with pytest.raises(EdgekitError, match="no DLA cores"):
        trtmod._build(_request(tmp_path, "fp16", dla_core=0), tmp_path / "e.plan")
    state.dla_cores = 2
    with pytest.raises(EdgekitError, match="percentile"):
        trtmod._build(_request(tmp_path, "int8", dla_core=0, method="percentile"), tmp_path / "e.plan")
    state.input_shape = (-1, 3, 8, 8)
    with pytest.raises(EdgekitError, match="DLA needs static shapes"):
        trtmod._build(_request(tmp_path, "fp16", dla_core=0, max_batch=4), tmp_path / "e.plan")
    assert not (tmp_path / "e.plan").exists()
    trt, cuda, state = fake("11.4")
    state.dla_cores = 2
    with pytest.raises(EdgekitError, match="--precision fp16"):
        trtmod._build(_request(tmp_path, "int8", dla_core=0), tmp_path / "e.plan")


# --- the one process logger -------------------------------------------------------------------------------------------
def test_one_logger_per_process_with_a_tail_per_build(fake, tmp_path):
    trt, cuda, state = fake("10.3")
    logger = trtmod.process_logger(trt)
    assert trtmod.process_logger(trt) is logger and isinstance(logger, trt.ILogger)
    with trtmod.LOG.capture() as first:
        logger.log(types.SimpleNamespace(name="ERROR"), "first build failed")
    with trtmod.LOG.capture() as second:
        logger.log(types.SimpleNamespace(name="VERBOSE"), "noise")
        logger.log(types.SimpleNamespace(name="WARNING"), "second build warned")
    assert first.tail() == "[ERROR] first build failed"
    assert second.tail() == "[WARNING] second build warned"  # its own messages, not empty, not the first build's
    trtmod._build(_request(tmp_path, "fp32"), tmp_path / "e.plan")
    trtmod.TensorRTBackend(tmp_path / "e.plan").close()
    assert state.loggers and all(lg is logger for lg in state.loggers)  # Builder, parser, Runtime: the same one


def test_a_logger_that_fails_never_raises_into_tensorrt(fake, monkeypatch):
    trt, cuda, state = fake("10.3")
    logger = trtmod.process_logger(trt)
    monkeypatch.setattr(trtmod.LOG, "emit", lambda *a: 1 / 0)
    logger.log("ERROR", "x")


# --- running: buffers reused per shape, everything released -----------------------------------------------------------
def test_infer_reuses_buffers_and_close_frees_everything(fake, tmp_path):
    trt, cuda, state = fake("10.3")
    (tmp_path / "e.plan").write_bytes(b"engine")
    engine = trtmod.TensorRTBackend(tmp_path / "e.plan", max_batch=4)
    assert cuda.streams == 1 and cuda.events == 4
    x4 = np.arange(4 * 3 * 8 * 8, dtype=np.float32).reshape(4, 3, 8, 8)
    for _ in range(50):
        for batch in (1, 4, 2, 3):  # every shape change within the largest seen: no new buffer
            out = engine.infer([x4[:batch]])["out"]
            np.testing.assert_array_equal(out, x4[:batch] * 2)
    # one device and one page-locked host buffer per tensor, grown once (batch 1, then 4)
    assert cuda.device_allocs == 4 and cuda.host_allocs == 4
    assert len(cuda.mem) == 2 and len(cuda.host_live) == 2
    assert engine.context.address_calls == 4  # TensorRT is given an address only for a new buffer
    assert engine.last_timing.device_ms == 0.5
    engine.close()
    assert cuda.mem == {} and cuda.host_live == {} and cuda.streams == 0 and cuda.events == 0
    engine.close()  # again: nothing to do, nothing freed twice
    with pytest.raises(EdgekitError, match="closed"):
        engine.infer([x4[:1]])


def test_a_failed_load_releases_what_it_made(fake, tmp_path):
    trt, cuda, state = fake("10.3")
    (tmp_path / "bad.plan").write_bytes(b"not an engine")
    with pytest.raises(EdgekitError, match="cannot deserialize"):
        trtmod.TensorRTBackend(tmp_path / "bad.plan")
    assert cuda.streams == 0 and cuda.events == 0


def test_buffer_pool_grows_only_when_larger():
    cuda = FakeCuda()
    pool = BufferPool(cuda)
    sizes = [100, 40, 100, 250, 10, 250, 249] * 200
    for n in sizes:
        ptr, _ = pool.device("x", n)
        host = pool.host("x", (n,), np.uint8)
        assert host.shape == (n,) and len(cuda.mem[ptr]) >= n
    assert cuda.device_allocs == 2 and cuda.host_allocs == 2  # 100, then 250: flat after that
    assert pool.device("x", 10) == (ptr, False)
    with pytest.raises(EdgekitError, match="data-dependent"):
        pool.host("y", (-1, 4), np.float32)
    pool.close()
    pool.close()
    assert cuda.mem == {} and cuda.host_live == {}


# --- per-layer times and placement from the engine inspector ----------------------------------------------------------
# The engine inspector's JSON as TensorRT documents it (get_engine_information(LayerInformationFormat.JSON)), for an
# engine built with ProfilingVerbosity.DETAILED for DLA core 0: two DLA subgraphs (ForeignNodes), TensorRT's copies in
# and out of DLA memory, a reformat, and the layers that fell back to the GPU (one fused).
DLA_ENGINE_JSON = json.dumps({
    "Layers": [
        {"Name": "Reformatting CopyNode for Input Tensor 0 to images to nvm", "LayerType": "Reformat",
         "Inputs": [{"Name": "images", "Location": "Device", "Dimensions": [1, 3, 64, 64],
                     "Format/Datatype": "Row major linear FP32"}], "Outputs": [], "TacticValue": "0x0"},
        {"Name": "images to nvm", "Inputs": [], "Outputs": []},
        {"Name": "{ForeignNode[/backbone/conv1/Conv.../backbone/act3/Relu]}", "Inputs": [], "Outputs": []},
        {"Name": "/backbone/act3/Relu_output_0 from nvm", "Inputs": [], "Outputs": []},
        {"Name": "/neck/Resize", "LayerType": "Resize", "Inputs": [], "Outputs": []},
        {"Name": "{ForeignNode[/head/conv/Conv]}", "Inputs": [], "Outputs": [],
         "Metadata": "[ONNX Layer: /head/conv/Conv]\x1e[ONNX Layer: /head/act/Sigmoid]"},
        {"Name": "/head/Reshape + /head/Transpose", "LayerType": "Shuffle", "Inputs": [], "Outputs": []},
        {"Name": "output0 copy finish", "Inputs": [], "Outputs": []},
    ],
    "Bindings": ["images", "output0"],
})
NETWORK = ["/backbone/conv1/Conv", "/backbone/act1/Relu", "/backbone/conv2/Conv", "/backbone/act2/Relu",
           "/backbone/conv3/Conv", "/backbone/act3/Relu", "/neck/Resize", "/head/conv/Conv", "/head/act/Sigmoid",
           "/head/Reshape", "/head/Transpose"]


def test_placement_from_the_inspector_json():
    layers = trtmod.parse_engine_information(DLA_ENGINE_JSON, dla=True)
    assert [lay.device for lay in layers] == ["GPU", "DLA", "DLA", "DLA", "GPU", "DLA", "GPU", "DLA"]
    assert [lay.inserted for lay in layers] == [True, True, False, True, False, False, False, True]
    where = trtmod.placement(layers, NETWORK)
    assert where == {"DLA": NETWORK[:6] + ["/head/conv/Conv", "/head/act/Sigmoid"],
                     "GPU": ["/neck/Resize", "/head/Reshape", "/head/Transpose"]}
    # without the network's layer list a DLA range stays one entry
    assert trtmod.placement(layers)["DLA"][0] == "{ForeignNode[/backbone/conv1/Conv.../backbone/act3/Relu]}"
    from edgekit.build.engine_build import placement_summary

    assert placement_summary(where, 0) == ("layers: 8 on DLA 0, 3 fell back to GPU: /neck/Resize, /head/Reshape, "
                                           "/head/Transpose")
    assert placement_summary(where, 0, shown=1).endswith("/neck/Resize and 2 more (all listed in the manifest)")
    assert placement_summary({"DLA": ["a"]}, 1) == "layers: 1 on DLA 1, none fell back to GPU"


def test_layer_names_only_and_gpu_foreign_nodes():
    names_only = json.dumps({"Layers": ["{ForeignNode[a...c]}", "d + e"], "Bindings": []})
    layers = trtmod.parse_engine_information(names_only, dla=True)
    assert trtmod.placement(layers, ["a", "b", "c", "d", "e"]) == {"DLA": ["a", "b", "c"], "GPU": ["d", "e"]}
    # on a GPU engine a ForeignNode is a Myelin subgraph: GPU; so is a Myelin one on a DLA engine
    assert trtmod.parse_engine_information(names_only, dla=False)[0].device == "GPU"
    myelin = json.dumps({"Layers": [{"Name": "{ForeignNode[x...y]}", "LayerType": "Myelin"}]})
    assert trtmod.parse_engine_information(myelin, dla=True)[0].device == "GPU"
    signal = json.dumps({"Layers": [{"Name": "sync", "LayerType": "signal"}, "z"]})
    assert [lay.name for lay in trtmod.parse_engine_information(signal, dla=False)] == ["z"]
    for bad in ("[]", '{"Bindings": []}', "not json"):
        with pytest.raises(ValueError):
            trtmod.parse_engine_information(bad, dla=False)


def test_layer_times_from_the_profiler(fake, tmp_path):
    trt, cuda, state = fake("10.3")
    state.layers_json = json.dumps({"Layers": [{"Name": "conv1 + relu1", "LayerType": "CaskConvolution"},
                                               {"Name": "head", "LayerType": "CaskGemm"}]})
    (tmp_path / "e.plan").write_bytes(b"engine")
    with trtmod.TensorRTBackend(tmp_path / "e.plan") as engine:
        times = engine.layer_times([np.ones((1, 3, 8, 8), np.float32)], 20)
        assert engine.context.profiler is None  # detached after the profiled runs
    assert [(t.name, t.kind, t.device) for t in times] == [("conv1 + relu1", "CaskConvolution", "GPU"),
                                                           ("head", "CaskGemm", "GPU")]
    assert [round(t.ms, 6) for t in times] == [0.3, 0.1]  # mean per run: the warm-up run is not counted
    with pytest.raises(EdgekitError, match="1 or more iterations"):
        trtmod.TensorRTBackend(tmp_path / "e.plan").layer_times([np.ones((1, 3, 8, 8), np.float32)], 0)


def test_layer_times_say_dla_for_dla_layers():
    layers = trtmod.parse_engine_information(DLA_ENGINE_JSON, dla=True)
    totals = {"{ForeignNode[/backbone/conv1/Conv.../backbone/act3/Relu]}": 8.0, "/neck/Resize": 2.0,
              "/backbone/act3/Relu_output_0 from nvm": 4.0, "unknown layer": 1.0}
    times = trtmod.layer_times_from_totals(totals, 4, layers, dla=True)
    assert [(t.ms, t.device) for t in times] == [(2.0, "DLA"), (1.0, "DLA"), (0.5, "GPU"), (0.25, "GPU")]
    assert times[2].kind == "Resize"


# --- the calibration cache key ---------------------------------------------------------------------------------------
def test_calibration_cache_key_and_staleness(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph one")
    xs = [np.ones((1, 3, 4, 4), np.float32)]
    key = calibration.cache_key(onnx, xs, "minmax", "8.6.2")
    assert key == calibration.cache_key(onnx, [x.astype(np.float64) for x in xs], "minmax", "8.6.2")  # as sent
    others = {calibration.cache_key(onnx, xs, "entropy", "8.6.2"), calibration.cache_key(onnx, xs, "minmax", "10.3"),
              calibration.cache_key(onnx, [xs[0] * 2], "minmax", "8.6.2"),
              calibration.cache_key(onnx, [xs[0].reshape(1, 3, 2, 8)], "minmax", "8.6.2"),
              calibration.cache_key(onnx, xs + xs, "minmax", "8.6.2")}
    onnx.write_bytes(b"graph two")
    others.add(calibration.cache_key(onnx, xs, "minmax", "8.6.2"))
    assert key not in others and len(others) == 6
    cache = tmp_path / "e.calib.cache"
    assert calibration.read_cache(cache, key) is None
    calibration.write_cache(cache, key, b"TRT-8602-MinMaxCalibration\n")
    assert calibration.read_cache(cache, key) == b"TRT-8602-MinMaxCalibration\n"
    assert calibration.read_cache(cache, "another key") is None  # stale: ignored
    calibration.key_path(cache).unlink()
    assert calibration.read_cache(cache, key) is None  # a cache without its key is never trusted


# --- the manifest ---------------------------------------------------------------------------------------------------
def test_manifest_placement_is_written_only_when_there_is_one():
    from dataclasses import fields

    assert "placement" in {f.name for f in fields(mf.Manifest)}
    rec = mf.BackendRecord("tensorrt", "8.6.2", int8_path=mf.INT8_IMPLICIT, calibrator="IInt8MinMaxCalibrator")
    assert rec.to_dict()["int8_path"] == "implicit calibration"
    assert "int8_path" not in mf.BackendRecord("tensorrt", "10.3").to_dict()


# --- --max-batch on a static ONNX, before anything is written ---------------------------------------------------------
def _tiny_onnx(path: Path, batch: Any) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_max_batch_needs_a_dynamic_batch_axis(tmp_path):
    import onnx

    from edgekit.build.engine_build import check_batch_axis

    static = onnx.load(str(_tiny_onnx(tmp_path / "s.onnx", 1)))
    dynamic = onnx.load(str(_tiny_onnx(tmp_path / "d.onnx", "batch")))
    check_batch_axis(static, 1, "s.onnx")
    check_batch_axis(dynamic, 8, "d.onnx")
    with pytest.raises(EdgekitError) as e:
        check_batch_axis(static, 4, "s.onnx")
    assert str(e.value) == ("s.onnx: --max-batch 4 needs a dynamic batch axis, but input 'images' has a static batch "
                            "of 1: export with `edgekit export --dynamic-batch 4`")
    with pytest.raises(EdgekitError, match="--max-batch 0: the largest batch is 1 or more"):
        check_batch_axis(dynamic, 0, "d.onnx")


def test_max_batch_on_a_static_onnx_is_refused_before_anything_is_written(tmp_path):
    onnx_path = _tiny_onnx(tmp_path / "static.onnx", 1)
    out = tmp_path / "new" / "e.onnx"
    r = run_cli("build-engine", str(onnx_path), "-o", str(out), "--backend", "onnxruntime", "--max-batch", "4")
    assert_one_line_error(r, "static batch of 1", "edgekit export --dynamic-batch 4")
    assert not (tmp_path / "new").exists()


# --- CUDA bindings: advice per JetPack, and the doctor's lines ------------------------------------------------------
def test_cuda_binding_advice_per_jetpack():
    assert "pycuda" in install_advice((35, 4)) and "Python 3.8" in install_advice((35, 4))
    assert "cuda-python==12.2.1" in install_advice((36, 3))
    assert "cuda-python==12.6.2.post1" in install_advice((36, 4))
    assert "SBSA" in install_advice((38, 2))
    assert "<13" in install_advice(None)
    assert "SBSA" in known_problem("cuda-python", "12.9.0", (36, 4))
    assert "SBSA" in known_problem("cuda-python", "13.0.3", (36, 3))
    assert "CUDA 12 driver" in known_problem("cuda-python", "12.6.2", (35, 4))
    for fine in (("cuda-python", "12.6.2.post1", (36, 4)), ("cuda-python", "13.0.3", (38, 2)),
                 ("cuda-python", "13.0.3", None), ("pycuda", "2024.1", (36, 4)), ("cuda-python", None, (36, 4))):
        assert known_problem(*fine) is None, fine


def test_doctor_says_which_binding_works(monkeypatch):
    from edgekit.runtime.backends import cuda_mem
    from edgekit.runtime.jetson.doctor import cuda_binding_checks

    class Works(FakeCuda):
        name = "pycuda"

    class Fails(FakeCuda):
        name = "cuda-python"

        def __init__(self) -> None:
            raise EdgekitError("CUDA error cudaErrorInsufficientDriver (35)")

    checks = cuda_binding_checks((36, 4), [Fails, Works], {"cuda-python": "12.9.0", "pycuda": "2024.1.2"})
    bad, good = checks
    assert good.ok and good.detail.startswith("2024.1.2: works (1024-byte host->device->host copy on Fake GPU")
    assert not bad.ok and "cudaErrorInsufficientDriver" in bad.detail and "SBSA" in bad.detail
    assert bad.detail.endswith("; pycuda is used") and "cuda-python==12.6.2.post1" in bad.fix
    none = cuda_binding_checks((35, 4), [Fails, Works], {"cuda-python": None, "pycuda": None})
    assert [c.detail for c in none] == ["not installed", "not installed"]
    assert all("pip install pycuda" in c.fix for c in none)
    assert cuda_mem.self_test(FakeCuda(), 64).startswith("64-byte")


# --- pycuda: the primary context, current around every call on whichever thread makes it ------------------------------
def _fake_pycuda(monkeypatch):
    """A pycuda.driver whose calls fail, as CUDA does ("invalid device context"), where no context is current on the
    calling thread; and a pycuda.autoinit that must not be imported."""
    import sys
    import threading

    local = threading.local()
    calls = {"retain": 0}

    def current():
        stack = getattr(local, "stack", [])
        if not stack:
            raise RuntimeError("cuMemAlloc failed: invalid device context")
        return stack[-1]

    class Context:
        def push(self):
            local.stack = getattr(local, "stack", []) + [self]

        @staticmethod
        def pop():
            local.stack.pop()

        @staticmethod
        def get_device():
            current()
            return Device(0)

    primary = Context()

    class Device:
        def __init__(self, n):
            pass

        def retain_primary_context(self):
            calls["retain"] += 1
            return primary

        def name(self):
            return "Orin"

        def compute_capability(self):
            return 8, 7

    class Allocation:
        def __init__(self, n):
            assert current() is primary
            self.n = n

        def __int__(self):
            return id(self)

        def free(self):
            assert current() is primary

    freed = []

    class HostAllocation(bytearray):  # what a pycuda page-locked array's .base is
        def free(self):
            assert current() is primary
            freed.append(len(self))

    def pagelocked_empty(n, dtype):
        assert current() is primary
        return np.frombuffer(HostAllocation(n * np.dtype(dtype).itemsize), dtype)

    driver = types.ModuleType("pycuda.driver")
    driver.init = lambda: None
    driver.Device, driver.Context = Device, Context
    driver.mem_alloc = Allocation
    driver.pagelocked_empty = pagelocked_empty

    class Stream:
        def __init__(self):
            assert current() is primary
            self.handle = 7

        def synchronize(self):
            assert current() is primary

    class Event:
        def __init__(self):
            assert current() is primary

        def record(self, stream):
            assert current() is primary

        def synchronize(self):
            assert current() is primary

        def time_till(self, other):
            return 1.5

    driver.Stream, driver.Event = Stream, Event
    driver.memcpy_htod_async = lambda dst, src, s: current()
    driver.memcpy_dtoh_async = lambda dst, src, s: current()
    autoinit = types.ModuleType("pycuda.autoinit")

    def no_autoinit(name):
        raise AssertionError("pycuda.autoinit makes a context of its own: it must not be used")

    autoinit.__getattr__ = no_autoinit
    package = types.ModuleType("pycuda")
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setitem(sys.modules, "pycuda.autoinit", autoinit)
    calls["freed"] = freed
    return calls, local


def test_pycuda_uses_the_primary_context_on_every_thread(monkeypatch):
    import threading

    from edgekit.runtime.backends.cuda_mem import PyCuda

    calls, local = _fake_pycuda(monkeypatch)
    monkeypatch.setattr(PyCuda, "_primary", None)
    cuda = PyCuda()
    assert PyCuda() and calls["retain"] == 1  # retained once per process

    def use():
        ptr = cuda.malloc(64)
        buf = cuda.host_alloc(64)
        s, e = cuda.stream(), cuda.event()
        cuda.htod_async(ptr, buf, s)
        cuda.dtoh_async(buf, ptr, s)
        cuda.record(e, s)
        cuda.synchronize(s)
        assert cuda.elapsed_ms(e, e) == 1.5 and cuda.device_info() == ("Orin", "8.7")
        cuda.host_free(buf)
        cuda.free(ptr)
        cuda.destroy_event(e)
        cuda.destroy_stream(s)
        assert getattr(local, "stack", []) == []  # every push popped: nothing left current on this thread

    use()
    assert calls["freed"] == [64]  # the page-locked buffer was freed through its HostAllocation
    errors = []

    def worker():
        try:
            use()
        except Exception as e:  # collected for the main thread
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert not errors, errors


def test_an_nms_graph_needs_a_tensorrt_that_parses_nms():
    """build-engine --nms engine gives TensorRT ONNX's NonMaxSuppression, parsed from 8.5 (INMSLayer): an older
    TensorRT is told so in one line before it fails in its parser."""
    assert trtmod.nms_support({"Conv", "NonMaxSuppression", "TopK"}, parses_nms=True) == ""
    assert trtmod.nms_support({"Conv", "Sigmoid"}, parses_nms=False) == ""
    assert "--nms host" in trtmod.nms_support({"NonMaxSuppression"}, parses_nms=False)
