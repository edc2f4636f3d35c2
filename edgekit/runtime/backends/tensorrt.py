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
from edgekit.runtime.backends.base import Backend, TensorSpec, Timing, runtime_module
from edgekit.runtime.backends.cuda_mem import CudaApi, open_cuda
from edgekit.runtime.card import ModelCard


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


def _environment(trt: Any, cuda: Optional[CudaApi]) -> Dict[str, Any]:
    env: Dict[str, Any] = {"name": "tensorrt", "version": trt.__version__}
    if cuda is not None:
        env["gpu"], env["compute_capability"] = cuda.device_info()
        env["cuda_binding"] = cuda.name
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


def build_serialized(
    fp32_onnx: Path,
    qdq_onnx: Optional[Path],
    out: Path,
    precision: str,
    card: ModelCard,
    calib_tensors: Optional[Sequence[np.ndarray]],
    calib_cache: Optional[Path],
    dla_core: Optional[int],
    workspace_mb: int,
    timing_cache: Optional[str],
    sparsity: bool,
    max_batch: int,
    force_implicit: bool = False,
) -> Dict[str, Any]:
    """Build a serialized engine into `out`; returns the manifest's backend section.

    INT8 builds from the symmetric Q/DQ ONNX (explicit quantization) except on DLA and TensorRT 8.x,
    which calibrate the FP32 ONNX implicitly (and keep a calibration cache): TensorRT must never get
    a calibration table for a Q/DQ model.
    """
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
    onnx_path = qdq_onnx if precision == "int8" and not implicit_int8 and qdq_onnx is not None else fp32_onnx
    if precision == "fp16" and strongly_typed:
        onnx_path = _to_fp16_onnx(onnx_path, out.with_suffix(".fp16.onnx"))
    network = builder.create_network(_network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, log.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgekitError(f"{onnx_path}: TensorRT cannot parse it: " + " | ".join(errors or [log.tail()]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    flags_used: List[str] = []
    if not strongly_typed:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # lets layers TensorRT keeps out of INT8 run in FP16
            flags_used.append("FP16")
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # 8.x/10.x need it to honour Q/DQ or to calibrate
            flags_used.append("INT8")
    if implicit_int8:
        if calib_tensors is None or calib_cache is None:
            raise EdgekitError("implicit INT8 calibration needs calibration images")
        config.int8_calibrator = _make_calibrator(trt, calib_tensors, calib_cache, cuda)
        flags_used.append("implicit-calibration")
    if sparsity:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        flags_used.append("SPARSE_WEIGHTS")
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        flags_used.append("GPU_FALLBACK")
    cache_obj = None
    if timing_cache:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache_obj = config.create_timing_cache(blob)
        config.set_timing_cache(cache_obj, False)
    input_name = network.get_input(0).name
    if max_batch > 1 or any(d == -1 for d in network.get_input(0).shape):
        if dla_core is not None:
            raise EdgekitError("DLA needs static shapes: export without --dynamic-batch")
        h, w = card.input_size
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
    section = _environment(trt, cuda)
    section.update({"strongly_typed": strongly_typed, "dla_core": dla_core, "builder_flags": flags_used,
                    "build_seconds": round(time.perf_counter() - t0, 2),
                    "calibration_cache": str(calib_cache) if implicit_int8 else None})
    return section


def _to_fp16_onnx(src: Path, dst: Path) -> Path:
    """TensorRT 11: FP16 means an FP16 ONNX (inputs and outputs stay FP32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


class TensorRTBackend(Backend):
    name = "tensorrt"

    @classmethod
    def runtime(cls) -> Any:
        return _trt()

    @classmethod
    def describe(cls, runtime: Any) -> str:
        gpu, cc = open_cuda().device_info()  # EdgekitError where no CUDA binding finds a GPU
        return f"TensorRT {runtime.__version__} on {gpu} (SM {cc})"

    @staticmethod
    def environment() -> Dict[str, Any]:
        trt = _trt()
        return _environment(trt, open_cuda())

    @staticmethod
    def dla_cores() -> int:
        """DLA cores this device has (AGX Orin and Orin NX: 2; Orin Nano and desktop GPUs: 0)."""
        trt = _trt()
        return int(trt.Builder(_Logger(trt).logger).num_DLA_cores)

    @classmethod
    def load_engine(cls, path: Path, manifest: Dict[str, Any], pipelined: bool = False) -> "TensorRTBackend":
        return cls(path, dla_core=manifest["backend"].get("dla_core"))

    def __init__(self, path: "str | Path", dla_core: Optional[int] = None) -> None:
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
        self._device: Dict[str, Tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._host_out: Dict[str, np.ndarray] = {}
        self._timing = Timing()

    @property
    def inputs(self) -> List[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> List[TensorSpec]:
        return self._outputs

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._device.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.malloc(nbytes)
            self._device[name] = (ptr, nbytes)
            self.context.set_tensor_address(name, ptr)
        return ptr

    def infer(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
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
        return [o.copy() for o in outs]

    def close(self) -> None:
        for ptr, _ in self._device.values():
            self.cuda.free(ptr)
        self._device.clear()
