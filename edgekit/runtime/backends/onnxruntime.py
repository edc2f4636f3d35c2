"""ONNX Runtime backend: an "engine" is an ONNX file plus the providers and session options it was
validated with (recorded in its manifest)."""

import json
import mmap
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import (
    ONNXRUNTIME_U8S8,
    TENSORRT_QDQ,
    Backend,
    BuildRequest,
    BuildResult,
    Capabilities,
    LayerTime,
    TensorSpec,
    Timing,
    runtime_module,
)
from edgekit.runtime.manifest import BackendRecord, path_for
from edgekit.runtime.text import printable

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


# Where a provider runs its nodes, as `profile --layers` shows it.
_PROVIDER_DEVICE = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "GPU", "TensorrtExecutionProvider": "GPU",
                    "ROCMExecutionProvider": "GPU", "MIGraphXExecutionProvider": "GPU", "DmlExecutionProvider": "GPU",
                    "OpenVINOExecutionProvider": "OpenVINO", "CoreMLExecutionProvider": "CoreML"}
_KERNEL_SUFFIX = "_kernel_time"  # ONNX Runtime's trace names a node's kernel event "<node>_kernel_time"
_PROFILE_WARMUP = 2  # profiled runs left out of the layer times (first-run allocations, caches)


def _ort() -> Any:
    return runtime_module("onnxruntime", "onnxruntime", "onnxruntime")


# The session options a manifest may set, and what each takes. Nothing else: a planted manifest must not reach
# options that write files (optimized_model_filepath, profile_file_prefix) or take any type pybind rejects.
_OPTIMIZATION_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_LAYOUT",
                        "ORT_ENABLE_ALL")
_SESSION_OPTIONS = {
    "graph_optimization_level": ("one of " + ", ".join(_OPTIMIZATION_LEVELS), lambda v: v in _OPTIMIZATION_LEVELS),
    "intra_op_num_threads": ("a thread count 0..1024", lambda v: type(v) is int and 0 <= v <= 1024),
    "inter_op_num_threads": ("a thread count 0..1024", lambda v: type(v) is int and 0 <= v <= 1024),
    "execution_mode": ("ORT_SEQUENTIAL or ORT_PARALLEL", lambda v: v in ("ORT_SEQUENTIAL", "ORT_PARALLEL")),
    "enable_cpu_mem_arena": ("true or false", lambda v: type(v) is bool),
    "enable_mem_pattern": ("true or false", lambda v: type(v) is bool),
}


def check_session_options(session_options: Dict[str, Any], source: str) -> None:
    """A one-line error for a session option a manifest may not set, or one of the wrong kind."""
    for key, value in session_options.items():
        if key not in _SESSION_OPTIONS:
            raise EdgekitError(f"{source}: backend.session_options.{printable(key)[:60]} is not a session option "
                               f"edgekit sets (it sets {', '.join(_SESSION_OPTIONS)})")
        what, ok = _SESSION_OPTIONS[key]
        if not ok(value):
            raise EdgekitError(f"{source}: backend.session_options.{key} must be {what}, got "
                               f"{printable(repr(value)[:40])}")


def _session_options(ort: Any, session_options: Optional[Dict[str, Any]], pipelined: bool) -> Any:
    so = ort.SessionOptions()
    if pipelined:
        # In a pipeline other stages need the cores between runs: idle intra-op threads must sleep,
        # not spin (measured on 2 cores: run-stream 182 -> 210 FPS; a single-threaded loop is unchanged).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (session_options or {}).items():
        if key == "graph_optimization_level":
            value = getattr(ort.GraphOptimizationLevel, value)
        elif key == "execution_mode":
            value = getattr(ort.ExecutionMode, value)
        setattr(so, key, value)
    return so


# --- what a graph is made of, read from the file itself (the runtime side has no `onnx` package) ---------------
# ONNX's protobuf field numbers (onnx/onnx.proto): ModelProto.graph 7, GraphProto.node 1, NodeProto.op_type 4.
_MODEL_GRAPH, _GRAPH_NODE, _NODE_OP_TYPE = 7, 1, 4
# Ops that only a quantized graph has: Q/DQ pairs (what edgekit's INT8 files and TensorRT's explicit quantization
# use), QLinear* and the integer kernels of ONNX Runtime's operator-oriented format.
_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                  "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def _varint(buf: Any, pos: int, end: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: Any, start: int, end: int) -> Iterator[Tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the protobuf message in buf[start:end];
    other wire types are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            continue
        if wire == 2:
            length, pos = _varint(buf, pos, end)
            nxt = pos + length
        elif wire in (1, 5):
            nxt = pos + (8 if wire == 1 else 4)
        else:  # groups (wire 3/4) are not in ONNX's schema
            raise ValueError(f"wire type {wire}")
        if nxt > end:
            raise ValueError("field runs past its message")
        if wire == 2:
            yield key >> 3, pos, nxt
        pos = nxt


def graph_op_types(path: "str | Path") -> Optional[Set[str]]:
    """The op types of an ONNX file's main graph, read straight from its protobuf (initializers are skipped, not
    read); None where the file is not one this reader follows."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            ops: Set[str] = set()
            for number, start, end in _fields(buf, 0, len(buf)):
                if number != _MODEL_GRAPH:
                    continue
                for n, node_start, node_end in _fields(buf, start, end):
                    if n != _GRAPH_NODE:
                        continue
                    for k, s, e in _fields(buf, node_start, node_end):
                        if k == _NODE_OP_TYPE:
                            ops.add(bytes(buf[s:e]).decode("utf-8", "replace"))
            return ops
    except (OSError, ValueError):
        return None


def quantized_op_types(ops: Set[str]) -> List[str]:
    return sorted(op for op in ops if op in _QUANTIZED_OPS or op.startswith("QLinear"))


def layer_times_from_trace(events: Sequence[Dict[str, Any]], skip_runs: int) -> Tuple[List[LayerTime], int]:
    """Per-node mean milliseconds per run from an ONNX Runtime profiling trace (Chrome trace events), leaving
    out the node events of the first `skip_runs` runs; returns (slowest first, runs counted)."""
    runs = sorted((int(e["ts"]), int(e["ts"]) + int(e.get("dur", 0))) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    counted = runs[skip_runs:]
    if not counted:
        return [], 0
    start = counted[0][0]
    total: Dict[str, float] = {}
    kind: Dict[str, str] = {}
    device: Dict[str, str] = {}
    indices: Dict[str, str] = {}
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith(_KERNEL_SUFFIX) or int(e.get("ts", 0)) < start:
            continue
        node = name[:-len(_KERNEL_SUFFIX)]
        args = e.get("args") or {}
        index = str(args.get("node_index", ""))
        if indices.setdefault(node, index) != index:  # two nodes of one name (unusual): keep them apart
            node = f"{node}#{index}"
        total[node] = total.get(node, 0.0) + float(e.get("dur", 0)) / 1000.0  # trace durations are microseconds
        kind.setdefault(node, str(args.get("op_name", "")))
        provider = str(args.get("provider", ""))
        device.setdefault(node, _PROVIDER_DEVICE.get(provider, provider.replace("ExecutionProvider", "") or "?"))
    layers = [LayerTime(n, kind[n], device[n], ms / len(counted)) for n, ms in total.items()]
    return sorted(layers, key=lambda t: -t.ms), len(counted)


# build-engine --provider: the ONNX Runtime execution providers an engine runs on, first choice first; CPU last, so
# that nodes a GPU provider does not take still run. GPU providers come with `onnxruntime-gpu` (x86-64: PyPI; Jetson:
# NVIDIA's Jetson wheels or a source build, TENSORRT.md).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
_TRT_EP, _CUDA_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider"
# The provider options a manifest may record (booleans only); the cache paths are derived from the engine's path
# when it is loaded, never read from a manifest.
_RECORDED_PROVIDER_OPTIONS = {_TRT_EP: ("trt_fp16_enable",)}
ENGINE_CACHE_SUFFIX = ".ort-trt-cache"  # TensorRT provider: its engines and timing cache, beside the engine file


def choose_providers(choice: str, precision: str, available: Sequence[str]) -> Tuple[List[str], Dict[str, Any]]:
    """(providers, recorded provider options) for build-engine --provider CHOICE at PRECISION; a one-line error
    where this ONNX Runtime lacks the provider or the provider cannot run that precision well."""
    if choice not in PROVIDERS:
        raise EdgekitError(f"--provider {choice}: choose one of {', '.join(PROVIDERS)}")
    providers = PROVIDERS[choice]
    if providers[0] not in available:
        raise EdgekitError(f"--provider {choice}: this onnxruntime has no {providers[0]} (available: "
                           f"{', '.join(available)}); install onnxruntime-gpu in its place (on a Jetson, NVIDIA's "
                           "Jetson wheel), or build with --provider cpu")
    if choice == "cpu" and precision == "fp16":
        raise EdgekitError("--precision fp16 is not offered on the onnxruntime CPU provider: it has no fast FP16 "
                           "kernels and would run FP16 slower than FP32; use --provider tensorrt or cuda, or fp32/int8")
    if choice == "cuda" and precision == "int8":
        raise EdgekitError("--precision int8 on the CUDA provider would run the Q/DQ graph in float, slower than "
                           "FP32; use --provider tensorrt (TensorRT runs the Q/DQ graph in INT8) or fp16")
    options = {_TRT_EP: {"trt_fp16_enable": True}} if choice == "tensorrt" and precision == "fp16" else {}
    return list(providers), options


def check_provider_options(recorded: Dict[str, Any], source: str) -> None:
    for provider, options in recorded.items():
        allowed = _RECORDED_PROVIDER_OPTIONS.get(provider, ())
        if not isinstance(options, dict) or any(k not in allowed or type(v) is not bool for k, v in options.items()):
            raise EdgekitError(f"{source}: backend.provider_options.{printable(str(provider))[:60]} may only set "
                               f"{', '.join(allowed) or 'nothing'} (true or false)")


def provider_options(providers: Sequence[str], recorded: Optional[Dict[str, Any]],
                     engine: Path) -> List[Dict[str, str]]:
    """ONNX Runtime's provider options, one dict per provider: the TensorRT provider caches the engines it builds
    (and its timing cache) in ENGINE.ort-trt-cache beside the engine file, so only the first run builds."""
    out: List[Dict[str, str]] = []
    for p in providers:
        options = {k: str(v) for k, v in ((recorded or {}).get(p) or {}).items()}
        if p == _TRT_EP:
            cache = str(engine.with_name(engine.name + ENGINE_CACHE_SUFFIX))
            options.update(trt_engine_cache_enable="True", trt_engine_cache_path=cache,
                           trt_timing_cache_enable="True", trt_timing_cache_path=cache)
        out.append(options)
    return out


MAX_CPU_WORKERS = 4  # sessions run-stream opens by default on a CPU provider (each holds the model's weights)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    label = "ONNX Runtime"
    capabilities = Capabilities(
        precisions=("fp32", "int8"),
        precision_notes={"fp16": "its CPU provider has no fast FP16 kernels and would run FP16 slower than FP32"},
        file_suffix=".onnx", device_label="cpu", int8_file=ONNXRUNTIME_U8S8, extra="onnxruntime",
    )
    # How engines are run: recorded in the manifest (with the providers), so a later edgekit runs them the same way.
    SESSION_OPTIONS = {"graph_optimization_level": "ORT_ENABLE_ALL"}

    @classmethod
    def runtime(cls) -> Any:
        return _ort()

    @classmethod
    def describe(cls, runtime: Any) -> str:
        return f"onnxruntime {runtime.__version__} ({', '.join(runtime.get_available_providers())})"

    @classmethod
    def build(cls, request: BuildRequest) -> BuildResult:
        """The engine is an ONNX file: for INT8 the U8S8 one (CPU provider) or the symmetric Q/DQ one, which the
        TensorRT provider runs in INT8; for FP16 on the CUDA provider an FP16 ONNX; else the FP32 one (the TensorRT
        provider builds FP16 from it itself)."""
        providers, options = choose_providers(request.provider, request.precision, _ort().get_available_providers())
        engine, what = request.fp32_onnx, ""
        if request.precision == "int8":
            kind = TENSORRT_QDQ if providers[0] == _TRT_EP else ONNXRUNTIME_U8S8
            engine = request.int8_files[kind]
            what = ("symmetric Q/DQ ONNX, run in INT8 by ONNX Runtime's TensorRT provider" if kind == TENSORRT_QDQ
                    else "U8S8 Q/DQ ONNX for the ONNX Runtime CPU provider")
        elif request.precision == "fp16" and providers[0] == _CUDA_EP:
            if request.to_fp16_onnx is None:
                raise EdgekitError("--precision fp16 on the CUDA provider needs an FP16 ONNX, which this build "
                                   "cannot make")
            engine = request.to_fp16_onnx(request.fp32_onnx, request.work / "model.fp16.onnx")
        record = cls.environment()
        record.providers, record.session_options = providers, dict(cls.SESSION_OPTIONS)
        record.provider_options = options or None
        return BuildResult(engine, record, io_onnx=engine, int8_engine_is=what)

    @classmethod
    def load(cls, path: Path, record: BackendRecord, pipelined: bool = False, max_batch: int = 1) -> "Backend":
        check_session_options(record.session_options or {}, str(path_for(path)))
        check_provider_options(record.provider_options or {}, str(path_for(path)))
        return cls(path, providers=record.providers, session_options=record.session_options, pipelined=pipelined,
                   recorded_options=record.provider_options)

    def __init__(self, path: "str | Path", providers: Optional[List[str]] = None,
                 session_options: Optional[Dict[str, Any]] = None, pipelined: bool = False,
                 recorded_options: Optional[Dict[str, Any]] = None) -> None:
        ort = _ort()
        providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise EdgekitError(
                f"{path}: built for ONNX Runtime provider(s) {', '.join(missing)}, not installed here "
                f"(available: {', '.join(ort.get_available_providers())})"
            )
        self._path, self._providers = Path(path), providers
        self._session_options, self._pipelined = dict(session_options or {}), pipelined
        self._recorded_options = recorded_options
        so = _session_options(ort, session_options, pipelined)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers,
                                                provider_options=provider_options(providers, recorded_options,
                                                                                  self._path))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgekitError(f"{path}: ONNX Runtime cannot load it: {printable(first[:300])}") from None
        self._inputs = [TensorSpec(i.name, tuple(i.shape), _ORT_DTYPES.get(str(i.type), str(i.type)))
                        for i in self.session.get_inputs()]
        self._outputs = [TensorSpec(o.name, tuple(o.shape), _ORT_DTYPES.get(str(o.type), str(o.type)))
                         for o in self.session.get_outputs()]
        self._names = [o.name for o in self._outputs]
        self._timing = Timing()

    def parallel_plan(self, cores: int) -> Tuple[int, int]:
        """On the CPU provider, one-thread sessions side by side: N of them outrun one N-thread session, whose
        threads meet at every operator (BENCHMARKS.md: YOLOv8n@320 on 2 cores, 121 vs 89-98 frames/s). Up to 4
        sessions, each with its share of the cores; on a GPU provider, two sessions (copies and compute of
        consecutive frames overlap)."""
        if any(p != "CPUExecutionProvider" for p in self._providers):
            return 2, 0
        workers = max(1, min(cores, MAX_CPU_WORKERS))
        return workers, max(1, cores // workers)

    def worker(self, threads: int) -> "Backend":
        """A second session on the same file, providers and options, with `threads` intra-op threads."""
        options = dict(self._session_options)
        if threads:
            options.update(intra_op_num_threads=threads, inter_op_num_threads=1)
        return OnnxRuntimeBackend(self._path, providers=self._providers, session_options=options,
                                  pipelined=self._pipelined, recorded_options=self._recorded_options)

    def quantized_ops(self) -> Optional[List[str]]:
        """The quantized op types in the ONNX file this session runs (empty: none); None where it cannot be read."""
        ops = graph_op_types(self._path)
        return None if ops is None else quantized_op_types(ops)

    def infer(self, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        feeds = {s.name: x for s, x in zip(self._inputs, inputs)}
        t0 = time.perf_counter_ns()
        outs = self.session.run(self._names, feeds)
        self._timing = Timing(host_ms=(time.perf_counter_ns() - t0) / 1e6)
        return dict(zip(self._names, outs))

    def layer_times(self, inputs: Sequence[np.ndarray], iterations: int) -> List[LayerTime]:
        """ONNX Runtime's own profiler: a second session on the same file, providers and options with
        profiling on, run `iterations` times after a short warm-up; node times by node name of the optimized
        graph (fused nodes carry the name ONNX Runtime gave them), mean milliseconds per run."""
        ort = _ort()
        so = _session_options(ort, self._session_options, self._pipelined)
        so.enable_profiling = True
        folder = tempfile.mkdtemp(prefix="edgekit-ort-profile-")
        try:
            so.profile_file_prefix = os.path.join(folder, "trace")
            session = ort.InferenceSession(str(self._path), sess_options=so, providers=self._providers,
                                           provider_options=provider_options(self._providers, self._recorded_options,
                                                                             self._path))
            feeds = {s.name: x for s, x in zip(self._inputs, inputs)}
            for _ in range(_PROFILE_WARMUP + max(1, iterations)):
                session.run(self._names, feeds)
            trace = session.end_profiling()
            with open(trace, encoding="utf-8") as f:
                events = json.load(f)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(events, dict):  # the object form of the Chrome trace format
            events = events.get("traceEvents", [])
        layers, _ = layer_times_from_trace(events, _PROFILE_WARMUP)
        if not layers:
            raise EdgekitError(f"{self._path}: ONNX Runtime's profiler recorded no node times")
        return layers
