"""The backend interface (DESIGN.md section 3): a capabilities record read by build, sweep, profile and
doctor instead of testing backend names; availability, environment, build and load; the I/O description,
`infer` with outputs by name, and the timing of the last call."""

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError, MissingDependency
from edgekit.runtime.manifest import BackendRecord

# The INT8 files one calibration gives (TENSORRT.md): the symmetric Q/DQ ONNX TensorRT builds from, and the
# U8S8 ONNX that ONNX Runtime's CPU kernels run fast.
TENSORRT_QDQ = "tensorrt_qdq_onnx"
ONNXRUNTIME_U8S8 = "onnxruntime_u8s8_onnx"


def runtime_module(module: str, package: str, extra: str, needs: str = "", how: str = "") -> Any:
    """A backend's runtime, imported when first needed; a one-line MissingDependency where absent.

    `needs` names an attribute the real package has: type-stub packages (tensorrt-stubs) import as an
    empty namespace package and must not pass for the runtime."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise MissingDependency(package, extra, how) from None
    if needs and not hasattr(mod, needs):
        raise MissingDependency(package, extra, how)
    return mod


class StopWaiting(Exception):
    """What `infer` raises when interrupt() ended its wait (a served model waiting out its server's outage)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers, declared once."""

    precisions: Tuple[str, ...] = ("fp32",)  # what it builds; empty: it builds no engines (runs checkpoints)
    # precision -> why it is not offered, for the one-line refusal (e.g. FP16 on a CPU provider)
    precision_notes: Mapping[str, str] = field(default_factory=dict)
    dla: bool = False  # builds for a Jetson's DLA cores
    sparsity: bool = False  # uses 2:4 sparse weights
    timing_cache: bool = False  # reads and updates a timing cache while building
    dynamic_batch: bool = True  # runs ONNX with a dynamic batch axis
    file_suffix: str = ".onnx"  # of the engine files it writes
    device_label: str = "cpu"  # where it runs, in sweep tables
    int8_file: str = TENSORRT_QDQ  # which INT8 file its engine is made from
    opens_checkpoints: bool = False  # runs an edgekit checkpoint directly (the eager PyTorch reference)
    extra: str = ""  # the edgekit extra that installs its runtime, where one does

    @property
    def builds_engines(self) -> bool:
        return bool(self.precisions)


@dataclass
class BuildRequest:
    """Everything a backend needs to turn prepared ONNX files into an engine (the build side prepares them)."""

    fp32_onnx: Path
    int8_files: Dict[str, Path]  # kind (TENSORRT_QDQ, ONNXRUNTIME_U8S8) -> file, for INT8
    work: Path  # a private folder for the engine file and scratch files
    precision: str
    input_size: Tuple[int, int]  # (height, width)
    calib_tensors: Optional[Sequence[np.ndarray]] = None
    calib_cache: Optional[Path] = None
    calib_method: str = "minmax"  # what --calib-method asked for (the calibrator, where the backend calibrates itself)
    dla_core: Optional[int] = None
    workspace_mb: int = 1024
    timing_cache: Optional[str] = None
    sparsity: bool = False
    max_batch: int = 1
    to_fp16_onnx: Optional[Callable[[Path, Path], Path]] = None  # for runtimes whose FP16 means an FP16 ONNX
    provider: str = "cpu"  # ONNX Runtime: which execution provider runs the engine (cpu, cuda, tensorrt)


@dataclass
class BuildResult:
    engine: Path  # inside request.work, or one of the request's ONNX files
    record: BackendRecord
    io_onnx: Path  # the ONNX whose inputs and outputs the engine has
    int8_engine_is: str = ""  # what the engine file is, for an INT8 build
    # where each layer runs, for a build that places layers (TensorRT with a DLA core): device -> layer names
    placement: Dict[str, List[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[Any, ...]  # ints, or a name/-1 for a dynamic axis
    dtype: str  # numpy dtype name


@dataclass
class Timing:
    """Host wall time of the last infer call and, on a GPU backend, the device time from CUDA events."""

    host_ms: float = 0.0
    device_ms: Optional[float] = None
    h2d_ms: Optional[float] = None
    d2h_ms: Optional[float] = None


@dataclass
class LayerTime:
    """One layer's share of an engine's time (`edgekit profile --layers`)."""

    name: str  # the layer (TensorRT) or node (ONNX Runtime) name
    kind: str  # layer type or op type; "" where the backend does not say
    device: str  # where it ran: "GPU", "DLA", "CPU"
    ms: float  # mean milliseconds per inference


class Backend(ABC):
    """A loaded engine. Use as a context manager, or call close()."""

    name = ""  # as commands and manifests spell it
    label = ""  # as people write it
    capabilities = Capabilities()

    # --- the backend as a whole ---------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def runtime(cls) -> Any:
        """The backend's runtime module, imported now (MissingDependency where absent)."""

    @classmethod
    @abstractmethod
    def describe(cls, runtime: Any) -> str:
        """Version and device in one line; raises EdgekitError where the runtime cannot run here."""

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        """(True, version and device) where this backend can run here, else (False, why not and what to install)."""
        try:
            return True, cls.describe(cls.runtime())
        except EdgekitError as e:
            return False, str(e)

    @classmethod
    def version(cls) -> str:
        return str(cls.runtime().__version__)

    @classmethod
    def environment(cls) -> BackendRecord:
        """What an engine's manifest is checked against on this machine."""
        return BackendRecord(name=cls.name, version=cls.version())

    @classmethod
    def how_to_install(cls, jetpack_major: Optional[int]) -> str:
        """What to install where the backend is missing (`jetpack_major`: 35, 36, ... on a Jetson, else None)."""
        return f"pip install 'edgekit[{cls.capabilities.extra}]'" if cls.capabilities.extra else ""

    @classmethod
    def dla_cores(cls) -> int:
        """DLA cores this device has for this backend (0 where it builds no DLA engines)."""
        return 0

    @classmethod
    def build(cls, request: BuildRequest) -> BuildResult:
        """Turn the prepared ONNX files into an engine."""
        raise EdgekitError(f"the {cls.name} backend builds no engines")

    @classmethod
    def load(cls, path: Path, record: BackendRecord, pipelined: bool = False, max_batch: int = 1) -> "Backend":
        """An engine this backend built, as its manifest's record describes it. `pipelined`: it runs beside
        other busy threads (run-stream), not alone in a loop (profile)."""
        raise EdgekitError(f"the {cls.name} backend loads no engine files")

    @classmethod
    def open_checkpoint(cls, path: Path, device: str) -> Tuple["Backend", Any, BackendRecord]:
        """(backend, model card, record) of an edgekit checkpoint, where capabilities.opens_checkpoints."""
        raise EdgekitError(f"the {cls.name} backend does not run checkpoints")

    # --- one loaded engine --------------------------------------------------------------------------
    _inputs: List[TensorSpec] = []
    _outputs: List[TensorSpec] = []

    @property
    def inputs(self) -> List[TensorSpec]:
        return self._inputs

    @property
    def outputs(self) -> List[TensorSpec]:
        return self._outputs

    @abstractmethod
    def infer(self, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        """Run once on host arrays (in input order); returns host arrays by output name, in output order."""

    def layer_times(self, inputs: Sequence[np.ndarray], iterations: int) -> List[LayerTime]:
        """Per-layer time over `iterations` runs on these inputs, slowest first (TensorRT's IProfiler, ONNX
        Runtime's own profiling); a backend that cannot time its layers raises EdgekitError saying so."""
        raise EdgekitError(f"{self.label or self.name}: per-layer timing is not available on this backend")

    def quantized_ops(self) -> Optional[List[str]]:
        """The quantized op types (QuantizeLinear, QLinearConv, ...) in the graph this engine runs, an empty list
        where there are none; None where the backend cannot tell (a compiled engine). Tells an INT8 ONNX that has
        lost its manifest from an FP32 one."""
        return None

    def parallel_plan(self, cores: int) -> Tuple[int, int]:
        """(inference workers, intra-op threads each; 0: the runtime's default) that run-stream uses by default on
        a machine with `cores` cores. One worker, unless the backend can run several (`worker`)."""
        return 1, 0

    def worker(self, threads: int) -> "Backend":
        """Another handle on this engine for a parallel inference worker: its own session or execution context,
        with its own stream and buffers, and `threads` intra-op threads where the runtime has them (0: its
        default). The engine itself is shared where the runtime allows; close the worker before this backend."""
        raise EdgekitError(f"{self.label or self.name}: this backend runs one inference worker (--workers 1)")

    def batch_limit(self) -> Optional[int]:
        """The largest batch this engine takes; None where any batch goes (a dynamic batch axis)."""
        first = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else 1
        return first if isinstance(first, int) and first > 0 else None

    def interrupt(self) -> None:  # noqa: B027  (a no-op unless the backend waits)
        """Called from another thread when the run stops: an `infer` waiting on something that may take long (a
        served model's reconnect back-off) raises StopWaiting at once."""

    def run_summary(self) -> Optional[Dict[str, Any]]:
        """What the report of a run on this backend adds, gathered after the run (a served model: the server's own
        statistics); None where the backend has nothing to add."""
        return None

    @property
    def last_timing(self) -> Timing:
        return self._timing

    _timing = Timing()

    def close(self) -> None:  # noqa: B027  (a no-op unless the backend holds resources)
        """Release the engine and its memory."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
