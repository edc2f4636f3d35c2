"""TensorRT backend: builds with the TensorRT builder, runs with the name-based tensor API
(set_tensor_address + execute_async_v3) on a non-default stream, times device work with CUDA events.

Written against the TensorRT 10.x API (type-checked with tensorrt-stubs) with feature detection, not
version strings, for 8.5/8.6 (JetPack 5) and 11.x (strongly typed only); see ../shared/TENSORRT.md.
Names that exist only in 8.x or only in 11.x are reached through getattr.
"""

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import (
    TENSORRT_QDQ,
    Backend,
    BuildRequest,
    BuildResult,
    Capabilities,
    TensorSpec,
    Timing,
    runtime_module,
)
from edgekit.runtime.backends.cuda_mem import CudaApi, open_cuda
from edgekit.runtime.manifest import BackendRecord


def _trt() -> Any:
    # TensorRT comes with JetPack (apt) or NVIDIA's wheels, not from an edgekit extra.
    return runtime_module("tensorrt", "tensorrt", "", needs="Builder",
                          how="on a Jetson: jetson/setup.sh (JetPack's python3-libnvinfer); on a PC with an NVIDIA "
                              "GPU: pip install 'tensorrt-cu12<11'")


class _Logger:
    """A TensorRT logger that keeps every message, so failures can quote the TensorRT log."""

    def __init__(self, trt: Any) -> None:
        self.trt = trt
        base = trt.ILogger

        class Keep(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)
                self.lines: List[str] = []

            def log(self, severity: Any, msg: str) -> None:
                self.lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

        self.logger = Keep()

    def tail(self, n: int = 8) -> str:
        errors = [ln for ln in self.logger.lines if "ERROR" in ln or "INTERNAL" in ln]
        return " | ".join((errors or self.logger.lines)[-n:])


def _strongly_typed_only(trt: Any) -> bool:
    """TensorRT 11 removed the FP16/INT8 builder flags: precision comes from the ONNX itself."""
    return getattr(trt.BuilderFlag, "FP16", None) is None


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # required by 8.x, gone in 11
    if explicit is not None:
        flags |= 1 << int(explicit)
    if strongly_typed:
        typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if typed is None:
            raise EdgekitError("this TensorRT has no strongly typed networks (needs 9.x or later)")
        flags |= 1 << int(typed)
    return flags


def _environment(trt: Any, cuda: Optional[CudaApi]) -> BackendRecord:
    env = BackendRecord(name="tensorrt", version=trt.__version__)
    if cuda is not None:
        env.gpu, env.compute_capability = cuda.device_info()
        env.cuda_binding = cuda.name
    return env


def _make_calibrator(trt: Any, tensors: Sequence[np.ndarray], cache: Path, cuda: CudaApi) -> Any:
    """Implicit INT8 calibrator (TensorRT 8.5/8.6 and DLA); deprecated in 10.1, removed in 11."""
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise EdgekitError("this TensorRT has no implicit INT8 calibrator; use the Q/DQ path (not DLA)")

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.tensors, self.i = list(tensors), 0
            self.ptr = cuda.malloc(self.tensors[0].nbytes)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            if self.i >= len(self.tensors):
                return None
            x = np.ascontiguousarray(self.tensors[self.i], dtype=np.float32)
            stream = cuda.stream()
            cuda.htod_async(self.ptr, x, stream)
            cuda.synchronize(stream)
            self.i += 1
            return [self.ptr]

        def read_calibration_cache(self) -> Optional[bytes]:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            from edgekit.runtime.artifacts import write_bytes

            write_bytes(cache, bytes(data))

    return Calibrator()


def build_serialized(request: BuildRequest, out: Path, force_implicit: bool = False) -> BackendRecord:
    """Build a serialized engine into `out`; returns the manifest's backend record.

    INT8 builds from the symmetric Q/DQ ONNX (explicit quantization) except on DLA and TensorRT 8.x,
    which calibrate the FP32 ONNX implicitly (and keep a calibration cache): TensorRT must never get
    a calibration table for a Q/DQ model.
    """
    r = request
    precision, dla_core, max_batch = r.precision, r.dla_core, r.max_batch
    trt = _trt()
    cuda = open_cuda()
    log = _Logger(trt)
    builder = trt.Builder(log.logger)
    strongly_typed = _strongly_typed_only(trt)
    if dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise EdgekitError(f"--dla-core {dla_core}: this device has no DLA cores")
        if not 0 <= dla_core < builder.num_DLA_cores:
            raise EdgekitError(f"--dla-core {dla_core}: this device has DLA cores 0..{builder.num_DLA_cores - 1}")
    # Implicit calibration (with a calibration cache) where Q/DQ is not the way: DLA, and TensorRT 8.x
    # (recognized by having no strongly typed networks).
    pre_9 = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None) is None
    implicit_int8 = precision == "int8" and (dla_core is not None or pre_9 or force_implicit)
    qdq_onnx = r.int8_files.get(TENSORRT_QDQ)
    onnx_path = qdq_onnx if precision == "int8" and not implicit_int8 and qdq_onnx is not None else r.fp32_onnx
    if precision == "fp16" and strongly_typed:
        if r.to_fp16_onnx is None:
            raise EdgekitError("this TensorRT builds FP16 only from an FP16 ONNX, and no converter was given")
        onnx_path = r.to_fp16_onnx(onnx_path, out.with_suffix(".fp16.onnx"))
    network = builder.create_network(_network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgekitError(f"{onnx_path}: TensorRT cannot parse it: " + " | ".join(errors or [log.tail()]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, r.workspace_mb << 20)
    flags_used: List[str] = []
    if not strongly_typed:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # lets layers TensorRT keeps out of INT8 run in FP16
            flags_used.append("FP16")
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # 8.x/10.x need it to honour Q/DQ or to calibrate
            flags_used.append("INT8")
    if implicit_int8:
        if r.calib_tensors is None or r.calib_cache is None:
            raise EdgekitError("implicit INT8 calibration needs calibration images")
        config.int8_calibrator = _make_calibrator(trt, r.calib_tensors, r.calib_cache, cuda)
        flags_used.append("implicit-calibration")
    if r.sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        flags_used.append("SPARSE_WEIGHTS")
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        flags_used.append("GPU_FALLBACK")
    cache_obj = None
    timing_cache = r.timing_cache
    if timing_cache:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache_obj = config.create_timing_cache(blob)
        config.set_timing_cache(cache_obj, False)
    input_name = network.get_input(0).name
    if max_batch > 1 or any(d == -1 for d in network.get_input(0).shape):
        if dla_core is not None:
            raise EdgekitError("DLA needs static shapes: export without --dynamic-batch")
        h, w = r.input_size
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (1, 3, h, w), (max(1, max_batch // 2), 3, h, w), (max(1, max_batch), 3, h, w))
        config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise EdgekitError(f"{onnx_path}: TensorRT build failed: {log.tail()}")
    from edgekit.runtime.artifacts import write_bytes

    write_bytes(out, bytes(blob))
    if timing_cache and cache_obj is not None:
        write_bytes(timing_cache, bytes(cache_obj.serialize()))
    record = _environment(trt, cuda)
    record.strongly_typed, record.dla_core, record.builder_flags = strongly_typed, dla_core, flags_used
    record.build_seconds = round(time.perf_counter() - t0, 2)
    record.calibration_cache = str(r.calib_cache) if implicit_int8 else None
    return record


class TensorRTBackend(Backend):
    name = "tensorrt"
    label = "TensorRT"
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"), dla=True, sparsity=True, timing_cache=True,
                                file_suffix=".plan", device_label="gpu", int8_file=TENSORRT_QDQ)

    @classmethod
    def runtime(cls) -> Any:
        return _trt()

    @classmethod
    def describe(cls, runtime: Any) -> str:
        gpu, cc = open_cuda().device_info()  # EdgekitError where no CUDA binding finds a GPU
        return f"TensorRT {runtime.__version__} on {gpu} (SM {cc})"

    @classmethod
    def environment(cls) -> BackendRecord:
        return _environment(_trt(), open_cuda())

    @classmethod
    def how_to_install(cls, jetpack_major: Optional[int]) -> str:
        if jetpack_major == 35:
            return "sudo apt install python3-libnvinfer (JetPack 5: TensorRT 8.5 for the system Python 3.8)"
        if jetpack_major is not None:
            return "sudo apt install python3-libnvinfer (JetPack 6), in a venv made with --system-site-packages"
        return "pip install 'tensorrt-cu12<11' on a machine with an NVIDIA GPU and its driver"

    @classmethod
    def dla_cores(cls) -> int:
        """DLA cores this device has (AGX Orin and Orin NX: 2; Orin Nano and desktop GPUs: 0)."""
        trt = _trt()
        return int(trt.Builder(_Logger(trt).logger).num_DLA_cores)

    @classmethod
    def build(cls, request: BuildRequest) -> BuildResult:
        engine = request.work / "engine.plan"
        record = build_serialized(request, engine)
        return BuildResult(engine, record, io_onnx=request.fp32_onnx,
                           int8_engine_is="TensorRT engine built from the symmetric int8 Q/DQ ONNX")

    @classmethod
    def load(cls, path: Path, record: BackendRecord, pipelined: bool = False, max_batch: int = 1) -> "Backend":
        return cls(path, dla_core=record.dla_core, max_batch=max_batch)

    def __init__(self, path: "str | Path", dla_core: Optional[int] = None, max_batch: int = 1) -> None:
        trt = _trt()
        self.cuda = open_cuda()
        self.log = _Logger(trt)
        self.trt_runtime = trt.Runtime(self.log.logger)
        if dla_core is not None:
            self.trt_runtime.DLA_core = dla_core  # must be set before deserializing a DLA engine
        self.engine = self.trt_runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EdgekitError(f"{path}: TensorRT cannot deserialize it: {self.log.tail()}")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self.events = [self.cuda.event() for _ in range(4)]
        self._inputs: List[TensorSpec] = []
        self._outputs: List[TensorSpec] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            spec = TensorSpec(name, tuple(self.engine.get_tensor_shape(name)),
                              np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(spec)
            else:
                self._outputs.append(spec)
        self._max_batch = max_batch
        self._device: Dict[str, Tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._host_out: Dict[str, np.ndarray] = {}
        self._timing = Timing()

    def batch_limit(self) -> Optional[int]:
        static = super().batch_limit()
        return static if static is not None else self._max_batch  # a dynamic axis up to the built profile's max

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._device.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.malloc(nbytes)
            self._device[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def infer(self, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        t0 = time.perf_counter_ns()
        cuda, s, ev = self.cuda, self.stream, self.events
        cuda.record(ev[0], s)
        for spec, x in zip(self._inputs, inputs):
            x = np.ascontiguousarray(x, dtype=spec.dtype)
            self.context.set_input_shape(spec.name, tuple(x.shape))
            cuda.htod_async(self._buffer(spec.name, x.nbytes), x, s)
        outs = []
        for spec in self._outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            host = self._host_out.get(spec.name)
            if host is None or host.shape != shape:
                host = cuda.pinned_empty(shape, np.dtype(spec.dtype))
                self._host_out[spec.name] = host
            self._buffer(spec.name, host.nbytes)
            outs.append(host)
        cuda.record(ev[1], s)
        if not self.context.execute_async_v3(cuda.stream_handle(s)):
            raise EdgekitError(f"TensorRT execution failed: {self.log.tail()}")
        cuda.record(ev[2], s)
        for spec, host in zip(self._outputs, outs):
            cuda.dtoh_async(host, self._device[spec.name][0], s)
        cuda.record(ev[3], s)
        cuda.synchronize(s)
        self._timing = Timing(
            host_ms=(time.perf_counter_ns() - t0) / 1e6,
            h2d_ms=cuda.elapsed_ms(ev[0], ev[1]),
            device_ms=cuda.elapsed_ms(ev[1], ev[2]),
            d2h_ms=cuda.elapsed_ms(ev[2], ev[3]),
        )
        return {spec.name: o.copy() for spec, o in zip(self._outputs, outs)}

    def close(self) -> None:
        for ptr, _ in self._device.values():
            self.cuda.free(ptr)
        self._device.clear()
