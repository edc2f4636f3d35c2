"""TensorRT backend: builds with the TensorRT builder, runs with the name-based tensor API
(set_tensor_address + execute_async_v3) on a non-default stream, times device work with CUDA events.

Written against the TensorRT 10.x API (type-checked with tensorrt-stubs) with feature detection, not
version strings, for 8.5/8.6 (JetPack 5, JetPack 6.0) and 11.x (strongly typed only); see
../shared/TENSORRT.md. `api_features(trt)` says what the TensorRT at hand offers and the build follows it;
names that exist only in 8.x or only in 11.x are reached through getattr, never at import time.

INT8: on the GPU every version builds the symmetric Q/DQ ONNX (explicit quantization; 8.x and 10.x with the
INT8 flag, no calibrator), so the CPU-side evaluation of that file predicts the engine on JetPack 5 and 6 alike.
The DLA is the one place TensorRT calibrates itself (implicit quantization, 8.x/10.x): with a calibration
profile at batch 1 and a calibration cache keyed to what it was computed from. The manifest records which.
"""

import json
import re
import threading
import time
from collections import deque
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import (
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
from edgekit.runtime.backends.cuda_mem import BufferPool, CudaApi, open_cuda
from edgekit.runtime.backends.onnxruntime import graph_op_types
from edgekit.runtime.manifest import INT8_IMPLICIT, INT8_QDQ, BackendRecord

if TYPE_CHECKING:  # the 10.x API, as tensorrt-stubs describe it: what pyright checks the calls against
    import tensorrt


def _trt() -> Any:
    # TensorRT comes with JetPack (apt) or NVIDIA's wheels, not from an edgekit extra.
    return runtime_module("tensorrt", "tensorrt", "", needs="Builder",
                          how="on a Jetson: jetson/setup.sh (JetPack's python3-libnvinfer); on a PC with an NVIDIA "
                              "GPU: pip install 'tensorrt-cu12<11'")


# --- what this TensorRT offers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiFeatures:
    """What the TensorRT Python API at hand offers, found by looking for names (never by version strings).

    8.5/8.6: explicit_batch, fp16_flag, int8_flag, implicit_calibration, binding_index_api; no strongly typed
    networks. 10.x: flags and (deprecated) implicit calibration, strongly typed networks optional, no binding
    indices. 11.x: strongly typed only: no precision flags, no implicit calibration."""

    explicit_batch: bool  # NetworkDefinitionCreationFlag.EXPLICIT_BATCH must be set (8.x/9.x; 10.x ignores it)
    fp16_flag: bool  # BuilderFlag.FP16 exists (8.x, 10.x; gone in 11.x)
    int8_flag: bool  # BuilderFlag.INT8 exists (8.x, 10.x; gone in 11.x)
    implicit_calibration: bool  # IInt8 calibrators and config.int8_calibrator (8.x, 10.x; gone in 11.x)
    calibration_profile: bool  # config.set_calibration_profile (with implicit calibration)
    strongly_typed_flag: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (9.x and later)
    name_based_io: bool  # num_io_tensors / set_tensor_address / execute_async_v3 (8.5 and later)
    binding_index_api: bool  # num_bindings / execute_async_v2 (gone in 10.0)
    engine_inspector: bool  # engine.create_engine_inspector + ProfilingVerbosity.DETAILED (8.2 and later)
    profiler: bool  # trt.IProfiler for per-layer times

    @property
    def strongly_typed_only(self) -> bool:
        """Precision comes from the ONNX itself (FP16 ONNX, Q/DQ): TensorRT 11 removed the precision flags."""
        return not self.fp16_flag


def api_features(trt: Any) -> ApiFeatures:
    """What the TensorRT module `trt` offers; reads class attributes only (nothing is created, no GPU needed).
    The classes and enums probed exist in every version; the names probed on them are the version-specific ones."""
    binding_index = hasattr(trt.ICudaEngine, "num_bindings") or hasattr(trt.IExecutionContext, "execute_async_v2")
    return ApiFeatures(
        # needed where implicit batch still exists (up to 9.x, recognised by the binding-index API of that era)
        explicit_batch=hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and binding_index,
        fp16_flag=hasattr(trt.BuilderFlag, "FP16"),
        int8_flag=hasattr(trt.BuilderFlag, "INT8"),
        implicit_calibration=(hasattr(trt, "IInt8EntropyCalibrator2") or hasattr(trt, "IInt8MinMaxCalibrator"))
        and hasattr(trt.IBuilderConfig, "int8_calibrator"),
        calibration_profile=hasattr(trt.IBuilderConfig, "set_calibration_profile"),
        strongly_typed_flag=hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
        name_based_io=hasattr(trt.ICudaEngine, "num_io_tensors") and hasattr(trt.IExecutionContext, "execute_async_v3"),
        binding_index_api=binding_index,
        engine_inspector=hasattr(trt.ICudaEngine, "create_engine_inspector") and hasattr(trt, "LayerInformationFormat"),
        profiler=hasattr(trt, "IProfiler"),
    )


# --- the one TensorRT logger of the process ------------------------------------------------------------------------
class LogCapture:
    """The TensorRT messages of one build or load (bounded), for error messages that quote TensorRT."""

    def __init__(self, keep: int = 400) -> None:
        self.lines: Deque[str] = deque(maxlen=keep)
        self.errors: Deque[str] = deque(maxlen=keep)

    def add(self, severity: str, msg: str) -> None:
        line = f"[{severity}] {msg}"
        self.lines.append(line)
        if severity in ("ERROR", "INTERNAL_ERROR"):
            self.errors.append(line)

    def tail(self, n: int = 8) -> str:
        """The last errors, or else the last messages, on one line."""
        return " | ".join(list(self.errors or self.lines)[-n:]) or "TensorRT logged nothing"


class LogHub:
    """Where the process's TensorRT logger sends its messages: to every open capture (a build, a load, a run)
    and to `recent`. VERBOSE messages are dropped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: List[LogCapture] = []
        self.recent = LogCapture()

    def emit(self, severity: Any, msg: str) -> None:
        name = str(getattr(severity, "name", severity)).rsplit(".", 1)[-1].upper()
        if name == "VERBOSE":
            return
        with self._lock:
            targets = [self.recent, *self._open]
        for capture in targets:
            capture.add(name, str(msg))

    @contextmanager
    def capture(self) -> Iterator[LogCapture]:
        cap = LogCapture()
        with self._lock:
            self._open.append(cap)
        try:
            yield cap
        finally:
            with self._lock:
                self._open.remove(cap)


LOG = LogHub()
_logger: Any = None
_logger_lock = threading.Lock()


def process_logger(trt: Any) -> Any:
    """The one TensorRT logger of this process, made on first use and given to every Builder, Runtime and parser
    (TensorRT keeps the first logger it gets and warns about later ones); it forwards to LOG."""
    global _logger
    with _logger_lock:
        if _logger is None:
            base = trt.ILogger

            class Forward(base):  # type: ignore[misc, valid-type]
                def __init__(self) -> None:
                    base.__init__(self)

                def log(self, severity: Any, msg: str) -> None:
                    with suppress(Exception):  # a logger must never raise into TensorRT
                        LOG.emit(severity, msg)

            _logger = Forward()
        return _logger


# --- build decisions (pure) ---------------------------------------------------------------------------------------
QDQ_PATH = INT8_QDQ
IMPLICIT_PATH = INT8_IMPLICIT
_CALIBRATORS = {"minmax": "IInt8MinMaxCalibrator", "entropy": "IInt8EntropyCalibrator2"}


def int8_route(features: ApiFeatures, dla_core: Optional[int], has_qdq: bool, force_implicit: bool = False) -> str:
    """How an INT8 engine is built: QDQ_PATH (the symmetric Q/DQ ONNX, on the GPU, every version) or
    IMPLICIT_PATH (TensorRT calibrates the FP32 ONNX itself: the DLA, which takes no Q/DQ network here)."""
    if dla_core is not None or force_implicit:
        if not features.implicit_calibration:
            raise EdgekitError("INT8 on the DLA needs TensorRT's implicit calibration, which this TensorRT no longer "
                               "has (removed in 11): build the DLA engine with --precision fp16")
        return IMPLICIT_PATH
    if not has_qdq:
        raise EdgekitError("INT8 on TensorRT builds from the symmetric Q/DQ ONNX, and none was prepared")
    return QDQ_PATH


def implicit_calibrator(method: str) -> str:
    """The TensorRT calibrator class for --calib-method (implicit calibration only)."""
    if method not in _CALIBRATORS:
        raise EdgekitError(f"--calib-method {method}: TensorRT's own calibration (INT8 on the DLA) offers "
                           f"{' or '.join(_CALIBRATORS)}")
    return _CALIBRATORS[method]


def network_flag_names(features: ApiFeatures, strongly_typed: bool) -> List[str]:
    names = ["EXPLICIT_BATCH"] if features.explicit_batch else []
    if strongly_typed:
        if not features.strongly_typed_flag:
            raise EdgekitError("this TensorRT has no strongly typed networks (needs 9.x or later)")
        names.append("STRONGLY_TYPED")
    return names


def builder_flag_names(features: ApiFeatures, precision: str, sparsity: bool, dla: bool) -> List[str]:
    """BuilderFlag names to set. Where the precision flags exist (8.x, 10.x), FP16 lets layers kept out of INT8
    run in FP16 and INT8 makes TensorRT honour Q/DQ nodes or calibrate; 11.x takes precision from the ONNX."""
    names = []
    if features.fp16_flag and precision in ("fp16", "int8"):
        names.append("FP16")
    if features.int8_flag and precision == "int8":
        names.append("INT8")
    if sparsity:
        names.append("SPARSE_WEIGHTS")
    if dla:
        names.append("GPU_FALLBACK")
    return names


Shape = Tuple[int, ...]


def profile_shapes(input_shape: Sequence[int], input_size: Tuple[int, int],
                   max_batch: int) -> Optional[Tuple[Shape, Shape, Shape]]:
    """(min, opt, max) of an NCHW input with dynamic axes: batch 1 to max_batch, height and width from the card;
    None where every axis is static (no optimization profile needed)."""
    dims = [int(d) for d in input_shape]
    if all(d > 0 for d in dims):
        return None
    if len(dims) != 4:
        raise EdgekitError(f"the input has dynamic axes in shape {dims}; edgekit builds NCHW image inputs")
    h, w = input_size
    c = dims[1] if dims[1] > 0 else 3
    height = dims[2] if dims[2] > 0 else h
    width = dims[3] if dims[3] > 0 else w
    if dims[0] > 0:
        fixed = (dims[0], c, height, width)
        return fixed, fixed, fixed
    top = max(1, max_batch)
    return (1, c, height, width), (max(1, top // 2), c, height, width), (top, c, height, width)


# --- where layers run: the engine inspector's JSON ----------------------------------------------------------------
@dataclass(frozen=True)
class EngineLayer:
    """One layer of a built engine, as the engine inspector (and IProfiler) names it."""

    name: str
    kind: str  # LayerType, where the engine was built with ProfilingVerbosity.DETAILED; else ""
    device: str  # "DLA" or "GPU"
    inserted: bool  # added by TensorRT (reformats, copies to and from the DLA), not a layer of the network
    network_layers: Tuple[str, ...]  # the network layers it runs (fused names split, ONNX names where recorded)


_FOREIGN = re.compile(r"^\{ForeignNode\[(.*)\]\}$", re.S)
_DLA_TRANSFER = re.compile(r" (to nvm|from nvm|copy finish)$")  # TensorRT's copies in and out of DLA memory
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]\x1e\x1f]+)\]")
_GPU_FOREIGN_KINDS = ("myelin", "kgen")  # Myelin subgraphs on the GPU are ForeignNodes too


def engine_layer(name: str, kind: str = "", metadata: str = "", dla: bool = False) -> EngineLayer:
    """Classify one engine layer. On an engine built for a DLA core, the DLA's subgraphs are the
    `{ForeignNode[first...last]}` layers (other than Myelin's GPU subgraphs) and its copies in and out of DLA
    memory ('X to nvm', 'X from nvm', 'X copy finish'); everything else runs on the GPU."""
    low = kind.lower()
    foreign = _FOREIGN.match(name)
    reformat = low == "reformat" or name.startswith("Reformatting CopyNode")  # on the GPU
    transfer = dla and not reformat and bool(_DLA_TRANSFER.search(name))
    on_dla = dla and not reformat and (transfer or low == "dla"
                                       or (foreign is not None and not low.startswith(_GPU_FOREIGN_KINDS)))
    inserted = transfer or reformat
    onnx = tuple(dict.fromkeys(_ONNX_LAYER.findall(metadata)))
    if inserted:
        parts: Tuple[str, ...] = ()
    elif onnx:
        parts = onnx
    elif foreign is not None:
        parts = (name,)  # a range: expanded against the network's layers where they are known
    else:
        parts = tuple(p.strip() for p in name.split(" + ") if p.strip())
    return EngineLayer(name, kind, "DLA" if on_dla else "GPU", inserted, parts)


def parse_engine_information(text: str, dla: bool) -> List[EngineLayer]:
    """The layers of `inspector.get_engine_information(LayerInformationFormat.JSON)`: {"Layers": [...],
    "Bindings": [...]}, each layer a name (LAYER_NAMES_ONLY) or an object with Name, LayerType, Metadata, ...
    (DETAILED). ValueError where the text is not that."""
    data = json.loads(text)
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise ValueError("engine information without a 'Layers' list")
    out = []
    for item in layers:
        if isinstance(item, str):
            out.append(engine_layer(item, dla=dla))
        elif isinstance(item, dict) and isinstance(item.get("Name"), str):
            kind = str(item.get("LayerType") or "")
            if kind.lower() in ("signal", "wait"):  # cross-stream synchronisation, not work
                continue
            out.append(engine_layer(item["Name"], kind, str(item.get("Metadata") or ""), dla))
    return out


def placement(layers: Sequence[EngineLayer], network_layers: Sequence[str] = ()) -> Dict[str, List[str]]:
    """Device -> the network layers it runs ("DLA", "GPU"; only devices that run some). A DLA subgraph known only
    by its range `{ForeignNode[first...last]}` is expanded to the network's layers from first to last (in network
    order) that the GPU does not run, where both ends are found; else it stays one entry."""
    gpu = [n for layer in layers if layer.device == "GPU" and not layer.inserted for n in layer.network_layers]
    on_gpu = set(gpu)
    index = {n: i for i, n in enumerate(network_layers)}
    dla: List[str] = []
    for layer in layers:
        if layer.device != "DLA" or layer.inserted:
            continue
        for part in layer.network_layers:
            m = _FOREIGN.match(part)
            ends = m.group(1).split("...") if m else []
            if m and len(ends) == 1:
                dla.append(ends[0])
            elif m and len(ends) == 2 and ends[0] in index and ends[1] in index:
                first, last = sorted((index[ends[0]], index[ends[1]]))
                dla += [n for n in network_layers[first:last + 1] if n not in on_gpu]
            else:
                dla.append(part)
    out = {"DLA": list(dict.fromkeys(dla)), "GPU": list(dict.fromkeys(gpu))}
    return {k: v for k, v in out.items() if v}


def layer_times_from_totals(totals: Dict[str, float], runs: int, layers: Sequence[EngineLayer],
                            dla: bool) -> List[LayerTime]:
    """Mean milliseconds per run of each layer IProfiler reported, slowest first, with the inspector's kind and
    device where it knows the layer."""
    known = {layer.name: layer for layer in layers}
    out = []
    for name, total in totals.items():
        info = known.get(name) or engine_layer(name, dla=dla)
        out.append(LayerTime(name, info.kind, info.device, total / max(1, runs)))
    return sorted(out, key=lambda t: -t.ms)


# --- building -----------------------------------------------------------------------------------------------------
def _environment(trt: Any, cuda: Optional[CudaApi]) -> BackendRecord:
    env = BackendRecord(name="tensorrt", version=trt.__version__)
    if cuda is not None:
        env.gpu, env.compute_capability = cuda.device_info()
        env.cuda_binding = cuda.name
    return env


def _make_calibrator(trt: Any, class_name: str, tensors: Sequence[np.ndarray], cache: Path, key: str,
                     cuda: CudaApi) -> Any:
    """An implicit INT8 calibrator (8.x/10.x; deprecated in 10.1, removed in 11): one device buffer and one
    stream for all batches, released by close(); the cache is read only where it was written for `key`."""
    from edgekit.runtime import calibration

    base = getattr(trt, class_name, None)
    if base is None:
        raise EdgekitError(f"this TensorRT has no {class_name} (implicit calibration was removed in TensorRT 11)")
    # One tensor in host memory at a time: `tensors` may decode and preprocess each image as it is read.
    batches = (np.ascontiguousarray(t) for t in tensors)
    first = next(batches, None)
    if first is None:
        raise EdgekitError("implicit INT8 calibration needs calibration images")

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.next: Optional[np.ndarray] = first
            self.ptr = cuda.malloc(first.nbytes)  # every tensor has the card's input shape
            self.stream = cuda.stream()

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            batch, self.next = self.next, None
            if batch is None:
                return None
            if batch.nbytes != first.nbytes:
                raise EdgekitError(f"calibration tensor of shape {batch.shape}, expected {first.shape}")
            with cuda.active():
                cuda.htod_async(self.ptr, batch, self.stream)
                cuda.synchronize(self.stream)
            self.next = next(batches, None)
            return [int(self.ptr)]

        def read_calibration_cache(self) -> Optional[bytes]:
            return calibration.read_cache(cache, key)

        def write_calibration_cache(self, data: Any) -> None:
            calibration.write_cache(cache, key, bytes(data))

        def close(self) -> None:
            if self.ptr:
                ptr, self.ptr = self.ptr, 0
                with cuda.active():
                    cuda.destroy_stream(self.stream)
                    cuda.free(ptr)

    return Calibrator()


@dataclass
class _Built:
    record: BackendRecord
    placement: Dict[str, List[str]]
    int8_engine_is: str


def build_serialized(request: BuildRequest, out: Path, force_implicit: bool = False) -> BackendRecord:
    """Build a serialized engine into `out`; returns the manifest's backend record. `force_implicit` calibrates
    with TensorRT's implicit calibrator on the GPU too (tests)."""
    return _build(request, out, force_implicit).record


def nms_support(ops: Set[str], parses_nms: bool) -> str:
    """Why this TensorRT cannot build a graph with these ops for want of NMS ('' where it can): ONNX's
    NonMaxSuppression (build-engine --nms engine) is parsed from TensorRT 8.5 (INMSLayer)."""
    if "NonMaxSuppression" in ops and not parses_nms:
        return ("this TensorRT does not parse ONNX NonMaxSuppression (8.5 and later do): build it with --nms host, "
                "or on a newer TensorRT")
    return ""


def _build(r: BuildRequest, out: Path, force_implicit: bool = False) -> _Built:
    precision, dla_core = r.precision, r.dla_core
    trt = _trt()
    features = api_features(trt)
    cuda = open_cuda()
    logger = process_logger(trt)
    with cuda.active(), LOG.capture() as log:
        builder: tensorrt.Builder = trt.Builder(logger)
        if dla_core is not None:
            if builder.num_DLA_cores == 0:
                raise EdgekitError(f"--dla-core {dla_core}: this device has no DLA cores")
            if not 0 <= dla_core < builder.num_DLA_cores:
                raise EdgekitError(f"--dla-core {dla_core}: this device has DLA cores 0..{builder.num_DLA_cores - 1}")
        route = ""
        calibrator_name = ""
        if precision == "int8":
            route = int8_route(features, dla_core, TENSORRT_QDQ in r.int8_files, force_implicit)
            if route == IMPLICIT_PATH:
                calibrator_name = implicit_calibrator(r.calib_method)
                if not r.calib_tensors or r.calib_cache is None:
                    raise EdgekitError("implicit INT8 calibration needs calibration images")
        onnx_path = r.int8_files[TENSORRT_QDQ] if route == QDQ_PATH else r.fp32_onnx
        strongly_typed = features.strongly_typed_only
        if precision == "fp16" and strongly_typed:
            if r.to_fp16_onnx is None:
                raise EdgekitError("this TensorRT builds FP16 only from an FP16 ONNX, and no converter was given")
            onnx_path = r.to_fp16_onnx(onnx_path, out.with_suffix(".fp16.onnx"))

        flags = 0
        for flag in network_flag_names(features, strongly_typed):
            flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, flag))
        network = builder.create_network(flags)
        nms_problem = nms_support(graph_op_types(onnx_path) or set(), hasattr(network, "add_nms"))
        if nms_problem:
            raise EdgekitError(f"{onnx_path}: {nms_problem}")
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise EdgekitError(f"{onnx_path}: TensorRT cannot parse it: " + " | ".join(errors or [log.tail()]))
        network_layers = [network.get_layer(i).name for i in range(network.num_layers)]

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, r.workspace_mb << 20)
        verbosity = getattr(getattr(trt, "ProfilingVerbosity", None), "DETAILED", None)
        if verbosity is not None:  # layer kinds and placement for the engine inspector; no cost at run time
            config.profiling_verbosity = verbosity
        flag_names = builder_flag_names(features, precision, r.sparsity, dla_core is not None)
        for name in flag_names:
            config.set_flag(getattr(trt.BuilderFlag, name))
        if dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = dla_core

        input_tensor = network.get_input(0)
        shapes = profile_shapes(_shape(input_tensor.shape), r.input_size, r.max_batch)
        if shapes is not None:
            if dla_core is not None and shapes[0] != shapes[2]:
                raise EdgekitError("DLA needs static shapes: export without --dynamic-batch (and build with "
                                   "--max-batch 1)")
            profile = builder.create_optimization_profile()
            profile.set_shape(input_tensor.name, *map(_dims, shapes))
            config.add_optimization_profile(profile)

        calibrator: Any = None
        if route == IMPLICIT_PATH:
            from edgekit.runtime import calibration

            assert r.calib_tensors is not None and r.calib_cache is not None
            if shapes is not None:  # a dynamic network calibrates at batch 1 (what get_batch_size says)
                set_profile = getattr(config, "set_calibration_profile", None)
                if set_profile is None:
                    raise EdgekitError("this TensorRT cannot calibrate a dynamic-shape network (no calibration "
                                       "profile); export with static shapes")
                one = (1, *shapes[0][1:])
                calib_profile = builder.create_optimization_profile()
                calib_profile.set_shape(input_tensor.name, _dims(one), _dims(one), _dims(one))
                set_profile(calib_profile)
            key = calibration.cache_key(onnx_path, r.calib_tensors, r.calib_method, str(trt.__version__))
            calibrator = _make_calibrator(trt, calibrator_name, r.calib_tensors, r.calib_cache, key, cuda)
            setattr(config, "int8_calibrator", calibrator)  # noqa: B010  (absent in TensorRT 11)

        cache_obj = None
        if r.timing_cache:
            blob = Path(r.timing_cache).read_bytes() if Path(r.timing_cache).is_file() else b""
            cache_obj = config.create_timing_cache(blob)
            config.set_timing_cache(cache_obj, False)

        t0 = time.perf_counter()
        try:
            serialized = builder.build_serialized_network(network, config)
        finally:
            if calibrator is not None:
                calibrator.close()
        if serialized is None:
            raise EdgekitError(f"{onnx_path}: TensorRT build failed: {log.tail()}")
        engine_bytes = bytes(serialized)
        seconds = time.perf_counter() - t0
        from edgekit.runtime.artifacts import write_bytes

        write_bytes(out, engine_bytes)
        if r.timing_cache and cache_obj is not None:
            write_bytes(r.timing_cache, bytes(cache_obj.serialize()))
        where = _placement_of(trt, features, engine_bytes, dla_core, network_layers) if dla_core is not None else {}

    record = _environment(trt, cuda)
    record.strongly_typed, record.dla_core = strongly_typed, dla_core
    record.builder_flags = flag_names + (["implicit-calibration"] if route == IMPLICIT_PATH else [])
    record.build_seconds = round(seconds, 2)
    if route:
        record.int8_path = route
    if route == IMPLICIT_PATH:
        record.calibrator = calibrator_name
        record.calibration_cache = str(r.calib_cache)
    if route == QDQ_PATH:
        what = "TensorRT engine built from the symmetric int8 Q/DQ ONNX (explicit quantization)"
    elif route == IMPLICIT_PATH:
        what = (f"TensorRT engine calibrated by TensorRT itself ({calibrator_name}, implicit quantization) from the "
                f"FP32 ONNX{f' for DLA core {dla_core}' if dla_core is not None else ''}; the Q/DQ file was not "
                "used")
    else:
        what = ""
    return _Built(record, where, what)


def _dims(shape: Shape) -> Any:
    """A shape as TensorRT's Dims arguments take it (the bindings convert tuples)."""
    return tuple(shape)


def _shape(dims: Any) -> Shape:
    """TensorRT Dims (indexable, with a length) as a tuple of ints."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _placement_of(trt: Any, features: ApiFeatures, engine_bytes: bytes, dla_core: int,
                  network_layers: Sequence[str]) -> Dict[str, List[str]]:
    """Where the built engine runs each network layer, from the engine inspector; {} where it cannot say."""
    if not features.engine_inspector:
        return {}
    try:
        runtime: tensorrt.Runtime = trt.Runtime(process_logger(trt))
        runtime.DLA_core = dla_core
        engine = runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            return {}
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        return placement(parse_engine_information(info, dla=True), network_layers)
    except (ValueError, RuntimeError, AttributeError, TypeError):  # information only: never fails a build
        return {}


# --- running ------------------------------------------------------------------------------------------------------
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
        return int(trt.Builder(process_logger(trt)).num_DLA_cores)

    @classmethod
    def build(cls, request: BuildRequest) -> BuildResult:
        engine = request.work / "engine.plan"
        built = _build(request, engine)
        return BuildResult(engine, built.record, io_onnx=request.fp32_onnx, int8_engine_is=built.int8_engine_is,
                           placement=built.placement)

    @classmethod
    def load(cls, path: Path, record: BackendRecord, pipelined: bool = False, max_batch: int = 1) -> "Backend":
        return cls(path, dla_core=record.dla_core, max_batch=max_batch)

    def __init__(self, path: "str | Path", dla_core: Optional[int] = None, max_batch: int = 1) -> None:
        self._closed = True  # until everything below is in place
        trt = _trt()
        self.cuda = open_cuda()
        self._dla = dla_core is not None
        self._max_batch = max_batch
        self._pool = BufferPool(self.cuda)
        self._layers: Optional[List[EngineLayer]] = None
        self._timing = Timing()
        logger = process_logger(trt)
        try:
            with self.cuda.active(), LOG.capture() as log:
                self.trt_runtime: tensorrt.Runtime = trt.Runtime(logger)
                if dla_core is not None:
                    self.trt_runtime.DLA_core = dla_core  # must be set before deserializing a DLA engine
                self.engine = self.trt_runtime.deserialize_cuda_engine(Path(path).read_bytes())
                if self.engine is None:
                    raise EdgekitError(f"{path}: TensorRT cannot deserialize it: {log.tail()}")
                self._open_context()
        except BaseException:
            self._release()
            raise
        self._inputs: List[TensorSpec] = []
        self._outputs: List[TensorSpec] = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            spec = TensorSpec(name, _shape(self.engine.get_tensor_shape(name)),
                              np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(spec)
            else:
                self._outputs.append(spec)
        self._closed = False

    def _open_context(self) -> None:
        """This handle's execution context, stream and timing events (inside `cuda.active()`)."""
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EdgekitError(f"TensorRT cannot create an execution context (out of device memory?): "
                               f"{LOG.recent.tail(2)}")
        self.stream = self.cuda.stream()
        self.events = [self.cuda.event() for _ in range(4)]

    def parallel_plan(self, cores: int) -> Tuple[int, int]:
        """Two execution contexts, each on its own stream: one frame's copies overlap the other's compute."""
        return 2, 0

    def worker(self, threads: int) -> "Backend":
        """Another execution context of the same engine, on its own CUDA stream with its own page-locked and
        device buffers (the engine's weights are shared)."""
        if self._closed:
            raise EdgekitError("this TensorRT engine was closed")
        other = TensorRTBackend.__new__(TensorRTBackend)
        other._closed = True
        other.cuda, other._dla, other._max_batch = self.cuda, self._dla, self._max_batch
        other._pool, other._layers, other._timing = BufferPool(self.cuda), None, Timing()
        other.trt_runtime, other.engine = self.trt_runtime, self.engine
        other._inputs, other._outputs = list(self._inputs), list(self._outputs)
        try:
            with self.cuda.active():
                other._open_context()
        except BaseException:
            other._release()
            raise
        other._closed = False
        return other

    def batch_limit(self) -> Optional[int]:
        static = super().batch_limit()
        return static if static is not None else self._max_batch  # a dynamic axis up to the built profile's max

    def _address(self, name: str, nbytes: int) -> int:
        ptr, new = self._pool.device(name, nbytes)
        if new:
            self.context.set_tensor_address(name, ptr)
        return ptr

    def infer(self, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        if self._closed:
            raise EdgekitError("this TensorRT engine was closed")
        t0 = time.perf_counter_ns()
        cuda, s, ev, pool = self.cuda, self.stream, self.events, self._pool
        with cuda.active():
            cuda.record(ev[0], s)
            for spec, x in zip(self._inputs, inputs):
                x = np.asarray(x)
                if not self.context.set_input_shape(spec.name, tuple(x.shape)):
                    raise EdgekitError(f"TensorRT engine input {spec.name} {spec.shape} does not take shape "
                                       f"{tuple(x.shape)}: {LOG.recent.tail(2)}")
                staged = pool.host(spec.name, x.shape, spec.dtype)  # page-locked: the copy is truly async
                np.copyto(staged, x, casting="unsafe")
                cuda.htod_async(self._address(spec.name, staged.nbytes), staged, s)
            outs = []
            for spec in self._outputs:
                host = pool.host(spec.name, _shape(self.context.get_tensor_shape(spec.name)), spec.dtype)
                outs.append((host, self._address(spec.name, host.nbytes)))
            cuda.record(ev[1], s)
            if not self.context.execute_async_v3(cuda.stream_handle(s)):
                raise EdgekitError(f"TensorRT execution failed: {LOG.recent.tail()}")
            cuda.record(ev[2], s)
            for host, ptr in outs:
                cuda.dtoh_async(host, ptr, s)
            cuda.record(ev[3], s)
            cuda.synchronize(s)
            self._timing = Timing(
                host_ms=(time.perf_counter_ns() - t0) / 1e6,
                h2d_ms=cuda.elapsed_ms(ev[0], ev[1]),
                device_ms=cuda.elapsed_ms(ev[1], ev[2]),
                d2h_ms=cuda.elapsed_ms(ev[2], ev[3]),
            )
        return {spec.name: host.copy() for spec, (host, _) in zip(self._outputs, outs)}

    def engine_layers(self) -> List[EngineLayer]:
        """The engine's layers as the inspector describes them ([] where it cannot)."""
        if self._layers is None:
            trt = _trt()
            self._layers = []
            if api_features(trt).engine_inspector:
                try:
                    with self.cuda.active():
                        info = self.engine.create_engine_inspector().get_engine_information(
                            trt.LayerInformationFormat.JSON)
                    self._layers = parse_engine_information(info, self._dla)
                except (ValueError, RuntimeError, AttributeError, TypeError):
                    pass
        return self._layers

    def layer_times(self, inputs: Sequence[np.ndarray], iterations: int) -> List[LayerTime]:
        """TensorRT's IProfiler over `iterations` runs after one warm-up run; each profiled run reports its layers
        synchronously (enqueue_emits_profile). Device from the engine inspector: DLA or GPU."""
        if iterations < 1:
            raise EdgekitError(f"per-layer timing needs 1 or more iterations, not {iterations}")
        trt = _trt()
        base = getattr(trt, "IProfiler", None)
        if base is None:
            raise EdgekitError("TensorRT: this version has no IProfiler, so no per-layer timing")
        totals: Dict[str, float] = {}

        class Collect(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                totals[layer_name] = totals.get(layer_name, 0.0) + float(ms)

        collect = Collect()
        self.infer(inputs)  # first-run work stays out of the layer times
        with self.cuda.active():
            setattr(self.context, "profiler", collect)  # noqa: B010
            try:
                with suppress(AttributeError, TypeError):  # the default, said here
                    setattr(self.context, "enqueue_emits_profile", True)  # noqa: B010
                for _ in range(iterations):
                    self.infer(inputs)
            finally:
                with suppress(TypeError, ValueError):
                    setattr(self.context, "profiler", None)  # noqa: B010
        if not totals:
            raise EdgekitError("TensorRT reported no layer times for this engine")
        return layer_times_from_totals(totals, iterations, self.engine_layers(), self._dla)

    def _release(self) -> None:
        """Free what exists of this engine: buffers, events, stream, then context, engine, runtime."""
        cuda = self.cuda
        with cuda.active():
            self._pool.close()
            for event in getattr(self, "events", []):
                cuda.destroy_event(event)
            self.events = []
            stream = getattr(self, "stream", None)
            if stream is not None:
                cuda.destroy_stream(stream)
                self.stream = None
            for attr in ("context", "engine", "trt_runtime"):  # TensorRT objects, in this order
                if hasattr(self, attr):
                    delattr(self, attr)

    def close(self) -> None:
        """Release the engine and every buffer, stream and event it holds; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._release()
