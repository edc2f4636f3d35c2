"""ONNX Runtime backend: an "engine" is an ONNX file plus the providers and session options it was
validated with (recorded in its manifest)."""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import (
    ONNXRUNTIME_U8S8,
    Backend,
    BuildRequest,
    BuildResult,
    Capabilities,
    LayerTime,
    TensorSpec,
    Timing,
    runtime_module,
)
from edgekit.runtime.manifest import BackendRecord

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


def _session_options(ort: Any, session_options: Optional[Dict[str, Any]], pipelined: bool) -> Any:
    so = ort.SessionOptions()
    if pipelined:
        # In a pipeline other stages need the cores between runs: idle intra-op threads must sleep,
        # not spin (measured on 2 cores: run-stream 182 -> 210 FPS; a single-threaded loop is unchanged).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (session_options or {}).items():
        if key == "graph_optimization_level":
            value = getattr(ort.GraphOptimizationLevel, value)
        setattr(so, key, value)
    return so


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


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    label = "ONNX Runtime"
    capabilities = Capabilities(
        precisions=("fp32", "int8"),
        precision_notes={"fp16": "its CPU provider has no fast FP16 kernels and would run FP16 slower than FP32"},
        file_suffix=".onnx", device_label="cpu", int8_file=ONNXRUNTIME_U8S8, extra="onnxruntime",
    )
    # How engines are run: recorded in the manifest, so a later edgekit runs them the same way.
    PROVIDERS = ["CPUExecutionProvider"]
    SESSION_OPTIONS = {"graph_optimization_level": "ORT_ENABLE_ALL"}

    @classmethod
    def runtime(cls) -> Any:
        return _ort()

    @classmethod
    def describe(cls, runtime: Any) -> str:
        return f"onnxruntime {runtime.__version__} ({', '.join(runtime.get_available_providers())})"

    @classmethod
    def build(cls, request: BuildRequest) -> BuildResult:
        """The engine is an ONNX file: the U8S8 one for INT8, else the FP32 one."""
        engine = request.int8_files[ONNXRUNTIME_U8S8] if request.precision == "int8" else request.fp32_onnx
        record = cls.environment()
        record.providers, record.session_options = list(cls.PROVIDERS), dict(cls.SESSION_OPTIONS)
        return BuildResult(engine, record, io_onnx=engine,
                           int8_engine_is="U8S8 Q/DQ ONNX for the ONNX Runtime CPU provider")

    @classmethod
    def load(cls, path: Path, record: BackendRecord, pipelined: bool = False, max_batch: int = 1) -> "Backend":
        return cls(path, providers=record.providers, session_options=record.session_options, pipelined=pipelined)

    def __init__(self, path: "str | Path", providers: Optional[List[str]] = None,
                 session_options: Optional[Dict[str, Any]] = None, pipelined: bool = False) -> None:
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
        so = _session_options(ort, session_options, pipelined)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgekitError(f"{path}: ONNX Runtime cannot load it: {first}") from None
        self._inputs = [TensorSpec(i.name, tuple(i.shape), _ORT_DTYPES.get(str(i.type), str(i.type)))
                        for i in self.session.get_inputs()]
        self._outputs = [TensorSpec(o.name, tuple(o.shape), _ORT_DTYPES.get(str(o.type), str(o.type)))
                         for o in self.session.get_outputs()]
        self._names = [o.name for o in self._outputs]
        self._timing = Timing()

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
            session = ort.InferenceSession(str(self._path), sess_options=so, providers=self._providers)
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
