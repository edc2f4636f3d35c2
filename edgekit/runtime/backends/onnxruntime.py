"""ONNX Runtime backend: an "engine" is an ONNX file plus the providers and session options it was
validated with (recorded in its manifest)."""

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import (
    ONNXRUNTIME_U8S8,
    Backend,
    BuildRequest,
    BuildResult,
    Capabilities,
    TensorSpec,
    Timing,
    runtime_module,
)
from edgekit.runtime.manifest import BackendRecord

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def _ort() -> Any:
    return runtime_module("onnxruntime", "onnxruntime", "onnxruntime")


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
        so = ort.SessionOptions()
        if pipelined:
            # In a pipeline other stages need the cores between runs: idle intra-op threads must sleep,
            # not spin (measured on 2 cores: run-stream 182 -> 210 FPS; a single-threaded loop is unchanged).
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for key, value in (session_options or {}).items():
            if key == "graph_optimization_level":
                value = getattr(ort.GraphOptimizationLevel, value)
            setattr(so, key, value)
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
