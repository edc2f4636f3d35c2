"""`edgekit build-engine`: ONNX -> an engine for TensorRT or ONNX Runtime, FP32 / FP16 / INT8, with a
manifest, written atomically; INT8 calibrated on real images through the card's preprocessing."""

import contextlib
import itertools
import numbers
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional

import numpy as np

from edgekit import __version__
from edgekit.build import describe, graph_nms, onnx_io
from edgekit.build.export import refuse_overwriting_inputs, write_failure
from edgekit.errors import EdgekitError
from edgekit.runtime import calibration, registry
from edgekit.runtime import manifest as mf
from edgekit.runtime.artifacts import ensure_writable_dir
from edgekit.runtime.backends import backend_class, engine_builders
from edgekit.runtime.backends import resolve as resolve_backend
from edgekit.runtime.backends.base import ONNXRUNTIME_U8S8, TENSORRT_QDQ, Backend, BuildRequest, TensorSpec
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgekit.runtime.card import ModelCard
from edgekit.runtime.manifest import BackendRecord
from edgekit.runtime.measure import evaluate
from edgekit.runtime.text import printable

PRECISIONS = ("fp32", "fp16", "int8", "best")
NMS_CHECK_FRAMES = 8  # --nms engine: frames the appended NMS is checked against host NMS on


@dataclass
class BuildOptions:
    backend: str = "auto"
    precision: str = "fp32"
    calib: Optional[str] = None
    calib_method: str = "minmax"
    calib_size: int = 200
    keep_fp32: List[str] = field(default_factory=list)
    dla_core: Optional[int] = None
    workspace_mb: int = 1024
    timing_cache: Optional[str] = None
    sparsity: bool = False
    max_batch: int = 1
    if_stale: bool = False
    # For an ONNX not made by edgekit (or to correct one): a card YAML, card fields from flags that win over
    # whatever the file says, and the output layout when it should not be recognised from the outputs.
    card_file: Optional[str] = None
    card_overrides: Dict[str, Any] = field(default_factory=dict)
    layout: Optional[str] = None
    # Agreement with FP32 is measured on frames never calibrated on: --val, or the end of --calib held out.
    val: Optional[str] = None
    val_size: int = 50
    # INT8: keep the tensors whose quantization costs most in floating point until the held-out agreement is
    # within this many points (100 x (1 - agreement)) for both INT8 files.
    accuracy_budget: Optional[float] = None
    # Fuse the card's preprocessing into the graph first (fuse_preprocess.py): the engine takes uint8 NHWC frames.
    fuse_preprocess: bool = False
    # Where a detector's NMS runs: "host" (edgekit's, after the engine) or "engine" (appended to the graph,
    # graph_nms.py, before calibration: the INT8 files carry it, in float).
    nms: str = "host"
    # ONNX Runtime: the execution provider that runs the engine (cpu; cuda or tensorrt with onnxruntime-gpu)
    provider: str = "cpu"


@dataclass
class BuildReport:
    engine: Path
    manifest: Path
    backend: str
    precision: str
    seconds: float
    bytes: int
    kept_fp32: List[str]
    agreement: Dict[str, Any]
    extra_files: Dict[str, str]
    agreement_key: str  # the task's agreement measure in `agreement`
    up_to_date: bool = False
    sparsity: Optional[Dict[str, Any]] = None  # with --sparsity: how many conv weights follow the 2:4 pattern
    sensitivity: List[Dict[str, Any]] = field(default_factory=list)  # INT8: tensors ranked by quantization noise
    budget: Optional[Dict[str, Any]] = None  # --accuracy-budget: the search, step by step
    card: Optional[ModelCard] = None  # the card the engine carries
    card_source: str = ""  # where it came from: edgekit metadata, Ultralytics metadata, a card file, flags
    fixed_input: List[str] = field(default_factory=list)  # dynamic input axes given the card's size
    placement: Dict[str, List[str]] = field(default_factory=dict)  # device -> layers, where the build placed them
    dla_core: Optional[int] = None


def _backends_with(feature: str) -> List[str]:
    return [n for n in engine_builders() if getattr(backend_class(n).capabilities, feature)]


def unsupported(backend: str, precision: str, dla_core: Optional[int] = None, sparsity: bool = False,
                timing_cache: Optional[str] = None) -> Optional[str]:
    """Why `backend` cannot build this variant, or None where it can (sweep skips with this reason)."""
    caps = backend_class(backend).capabilities
    if precision not in caps.precisions:
        others = [n for n in engine_builders() if precision in backend_class(n).capabilities.precisions]
        note = caps.precision_notes.get(precision)
        return (f"--precision {precision} is not offered on the {backend} backend" + (f": {note}" if note else "") +
                f"; use {' or '.join(caps.precisions)}" + (f", or the {' or '.join(others)} backend" if others else ""))
    if dla_core is not None and not caps.dla:
        return f"--dla-core needs the {' or '.join(_backends_with('dla'))} backend on a Jetson with DLA"
    if sparsity and not caps.sparsity:
        return (f"--sparsity is a {' or '.join(backend_class(n).label for n in _backends_with('sparsity'))} feature "
                f"(sparse tensor cores); use --backend {' or '.join(_backends_with('sparsity'))}")
    if timing_cache and not caps.timing_cache:
        return (f"--timing-cache is a {' or '.join(backend_class(n).label for n in _backends_with('timing_cache'))} "
                f"feature; use --backend {' or '.join(_backends_with('timing_cache'))}")
    if dla_core is not None and precision == "fp32":
        return "DLA runs FP16 or INT8 only: pass --precision fp16 or int8 with --dla-core"
    return None


def resolve_precision(backend: str, precision: str, opts: BuildOptions) -> str:
    if precision not in PRECISIONS:
        raise EdgekitError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "best":  # the fastest the backend offers: INT8 given calibration images, else FP16 or FP32
        offered = backend_class(backend).capabilities.precisions
        precision = "int8" if opts.calib and "int8" in offered else ("fp16" if "fp16" in offered else "fp32")
    if precision == "int8" and not opts.calib:
        raise EdgekitError("INT8 needs calibration images: pass --calib IMAGE_FOLDER_OR_VIDEO")
    if opts.provider != "cpu" and backend != "onnxruntime":
        raise EdgekitError(f"--provider {opts.provider} chooses ONNX Runtime's execution provider: use it with "
                           "--backend onnxruntime")
    # ONNX Runtime's GPU providers run FP16 (its CPU provider does not); choose_providers checks each pair
    gpu_fp16 = backend == "onnxruntime" and opts.provider != "cpu" and precision == "fp16"
    why = None if gpu_fp16 else unsupported(backend, precision, opts.dla_core, opts.sparsity, opts.timing_cache)
    if why:
        raise EdgekitError(why)
    if backend == "onnxruntime":  # a provider this onnxruntime lacks: refused before anything is built
        from edgekit.runtime.backends.onnxruntime import choose_providers

        choose_providers(opts.provider, precision, backend_class(backend).runtime().get_available_providers())
    if opts.accuracy_budget is not None and precision != "int8":
        raise EdgekitError(f"--accuracy-budget applies to INT8 (--precision int8 with --calib); this build is "
                           f"{precision}")
    return precision


def fingerprint(onnx_sha: str, calib_sha: Optional[str], card: ModelCard, backend_env: BackendRecord,
                precision: str, opts: BuildOptions, judged_sha: Optional[str] = None) -> Dict[str, Any]:
    """Everything an engine depends on; --if-stale rebuilds when any of it changed."""
    return {
        "onnx_sha256": onnx_sha,
        "calibration_sha256": calib_sha,
        **({"agreement_frames_sha256": judged_sha} if judged_sha else {}),
        "preprocess_sha256": mf.preprocess_sha256(card),
        "backend": backend_env.to_dict(),
        "precision": precision,
        "flags": {"calib_method": opts.calib_method if precision == "int8" else None,
                  "calib_size": opts.calib_size if precision == "int8" else None,
                  "keep_fp32": sorted(opts.keep_fp32), "dla_core": opts.dla_core, "workspace_mb": opts.workspace_mb,
                  "sparsity": opts.sparsity, "max_batch": opts.max_batch,
                  **({"val": opts.val, "val_size": opts.val_size} if opts.val else {}),
                  **({"accuracy_budget": opts.accuracy_budget} if opts.accuracy_budget is not None else {}),
                  # recorded only where set: the fingerprints of engines built before these flags stay as they were
                  **({"fuse_preprocess": True} if opts.fuse_preprocess else {}),
                  **({"nms": opts.nms} if opts.nms != "host" else {}),
                  **({"provider": opts.provider} if opts.provider != "cpu" else {})},
        "edgekit_version": __version__,
    }


def _is_up_to_date(out: Path, fp: Dict[str, Any]) -> bool:
    try:
        old = mf.read(out)
    except EdgekitError:
        return False
    return old.fingerprint == fp and old.engine.sha256 == mf.file_sha256(out)


SIDE_FILE_SUFFIX = {TENSORRT_QDQ: "trt-qdq", ONNXRUNTIME_U8S8: "u8s8"}  # ENGINE.<suffix>.onnx
CALIB_CACHE_SUFFIX = ".calib.cache"  # ENGINE.calib.cache: TensorRT's implicit calibration (DLA)


def side_file(out: Path, kind: str) -> Path:
    return out.with_name(f"{out.name}.{SIDE_FILE_SUFFIX[kind]}.onnx")


def output_files(out: Path) -> Dict[str, Path]:
    """Every file a build at OUT writes or replaces, by what it is."""
    cache = out.with_name(out.name + CALIB_CACHE_SUFFIX)
    files = {"the output": out, "its manifest": mf.path_for(out), "its calibration cache": cache,
             "its calibration cache key": calibration.key_path(cache)}
    files.update({f"its {suffix} side file": side_file(out, k) for k, suffix in SIDE_FILE_SUFFIX.items()})
    return files


def check_options(onnx_path: Path, out: Path, opts: BuildOptions) -> None:
    """What is wrong with the options before anything is read or written: a calibration size below 1 (the
    API's counterpart of the CLI's range check: 0 used to calibrate on synthetic frames instead of the
    user's), or an output that would replace one of the inputs (-o equal to the ONNX, or a side file or the
    manifest landing on it)."""
    size = opts.calib_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise EdgekitError(f"--calib-size {size!r}: calibrate on 1 image or more")
    size = opts.val_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise EdgekitError(f"--val-size {size!r}: measure agreement on 1 image or more")
    budget = opts.accuracy_budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Real)
                               or not 0 <= budget < 100):
        raise EdgekitError(f"--accuracy-budget {budget!r}: points of agreement with FP32 that INT8 may lose, "
                           "from 0 to below 100")
    inputs = {"the input ONNX": onnx_path}
    if opts.card_file:
        inputs["the --card file"] = Path(opts.card_file)
    if opts.calib and Path(opts.calib).is_file():
        inputs["the --calib video"] = Path(opts.calib)
    if opts.val and Path(opts.val).is_file():
        inputs["the --val video"] = Path(opts.val)
    outputs = output_files(out)
    if opts.timing_cache:  # read and rewritten by design, but never in place of an output
        refuse_overwriting_inputs(outputs, {"the --timing-cache file": Path(opts.timing_cache)}, str(out))
        inputs["the --timing-cache file"] = Path(opts.timing_cache)
    refuse_overwriting_inputs(outputs, inputs, str(out))


def check_batch_axis(model: Any, max_batch: int, source: str) -> None:
    """--max-batch N (N > 1) needs an input with a dynamic batch axis: refused in one line before anything is
    written (every backend would otherwise fail later, TensorRT with a generic message of its own)."""
    if max_batch < 1:
        raise EdgekitError(f"--max-batch {max_batch}: the largest batch is 1 or more")
    inputs, _ = onnx_io.io_names(model)
    if max_batch == 1 or not inputs:
        return
    dims = inputs[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        raise EdgekitError(f"{source}: --max-batch {max_batch} needs a dynamic batch axis, but input "
                           f"'{inputs[0].name}' has a static batch of {dims[0].dim_value}: export with "
                           f"`edgekit export --dynamic-batch {max_batch}`")


def placement_summary(placement: Dict[str, List[str]], dla_core: Optional[int], shown: int = 8) -> str:
    """One line on where a DLA build runs its layers, e.g. 'layers: 41 on DLA 0, 3 fell back to GPU: A, B, C'."""
    dla, gpu = placement.get("DLA", []), placement.get("GPU", [])
    text = f"layers: {len(dla)} on DLA{'' if dla_core is None else f' {dla_core}'}"
    if not gpu:
        return text + ", none fell back to GPU"
    names = ", ".join(gpu[:shown])
    more = f" and {len(gpu) - shown} more (all listed in the manifest)" if len(gpu) > shown else ""
    return text + f", {len(gpu)} fell back to GPU: {names}{more}"


def build_engine(onnx_path: "str | Path", out: "str | Path", opts: BuildOptions) -> BuildReport:
    """Build an engine at OUT with its manifest and side files, all or nothing: the work happens in a private
    folder beside OUT, removed on any error (and on SIGTERM where the CLI turns it into an exception)."""
    t0 = time.perf_counter()
    onnx_path, out = Path(onnx_path), Path(out)
    check_options(onnx_path, out, opts)
    model = onnx_io.load_model(onnx_path)
    check_batch_axis(model, opts.max_batch, str(onnx_path))
    described = describe.card_for(model, str(onnx_path), opts.card_file, opts.card_overrides, opts.layout)
    card = described.card
    fixed = describe.fix_input_shape(model, card, opts.max_batch)
    if opts.fuse_preprocess:  # before anything feeds the graph: calibration, quantization, agreement all see it
        import dataclasses

        from edgekit.build.fuse_preprocess import fuse

        model, card = fuse(model, card, str(onnx_path))
        described = dataclasses.replace(described, card=card)
    backend = resolve_backend(opts.backend)
    cls = backend_class(backend)
    precision = resolve_precision(backend, opts.precision, opts)
    ensure_writable_dir(out.parent)
    calib, judged = _frames(opts, precision)

    backend_env = cls.environment()
    fp = fingerprint(mf.file_sha256(onnx_path), calib.sha256 if calib else None, card, backend_env, precision, opts,
                     judged.sha256 if judged is not None and judged is not calib else None)
    graph_nms.check_mode(opts.nms)
    if opts.card_file or opts.card_overrides or opts.layout:  # the card given decides the engine too
        fp["card_given"] = {"file": Path(opts.card_file).read_text() if opts.card_file else None,
                            "fields": {k: repr(v) for k, v in sorted(opts.card_overrides.items())},
                            "layout": opts.layout}
    if opts.if_stale and _is_up_to_date(out, fp):
        m = mf.read(out)
        return BuildReport(out, mf.path_for(out), backend, precision, 0.0, out.stat().st_size,
                           m.int8.kept_fp32 if m.int8 else [], m.agreement, dict(m.files),
                           registry.task(card.task).agreement_key, up_to_date=True, placement=m.placement or {},
                           dla_core=m.backend.dla_core)

    from edgekit.build.sparsity import check_onnx

    sparse = check_onnx(model) if opts.sparsity else None  # sparse kernels only help where the zeros are
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        built = _build_in(work, model, onnx_path, out, opts, described, fixed, cls, precision, calib, judged, fp,
                          sparse, t0)
    except Exception as e:  # a write that ran out of room anywhere in the build (ours, onnx's, onnxruntime's)
        failure = write_failure(e, out, work, onnx_path.stat().st_size)
        if failure is None:
            raise
        raise failure from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    card, seconds, kept, agreement, final_files, placement, ranked, budget = built
    spread = source_spread_warning(agreement, registry.task(card.task).agreement_key)
    if spread:
        print(f"edgekit: warning: {spread}", file=sys.stderr)
    if judged is None:
        print(f"edgekit: note: no --calib given: agreement with FP32 was measured on {SYNTHETIC_FRAMES} synthetic "
              "scenes, not on your images", file=sys.stderr)
    return BuildReport(out, mf.path_for(out), backend, precision, seconds, out.stat().st_size, sorted(kept),
                       agreement, {k: str(v) for k, v in final_files.items()}, registry.task(card.task).agreement_key,
                       sparsity=sparse, card=card, card_source=described.source, fixed_input=fixed,
                       placement=placement, dla_core=opts.dla_core, sensitivity=ranked, budget=budget)


Frames = Optional[calibration.CalibrationSet]


def _frames(opts: BuildOptions, precision: str) -> "tuple[Frames, Frames]":
    """(the calibration set, the frames agreement with FP32 is measured on). INT8 is never judged on the frames it
    was calibrated on: on --val, or else on the end of --calib held out of calibration. Other precisions are
    judged on --val or --calib; without either, on synthetic scenes (the build says so)."""
    val = calibration.load(opts.val, opts.val_size, role="--val", warn_short=False) if opts.val else None
    if not opts.calib:
        return None, val
    if precision != "int8":
        calib = calibration.load(opts.calib, opts.calib_size)
        return calib, val or calib
    if val is None or not opts.val:
        return calibration.held_out_split(opts.calib, opts.calib_size, opts.val_size)
    calib = calibration.load(opts.calib, opts.calib_size)
    both = set(calib.digests) & set(val.digests)
    if Path(opts.val).resolve() == Path(opts.calib).resolve() or both:
        raise EdgekitError(f"--val {opts.val}: {'holds images that are also' if both else 'is'} the calibration "
                           "images; agreement measured on them flatters INT8: give frames it was not calibrated on, "
                           "or leave --val out to hold the end of --calib out")
    return calib, val


def _build_in(work: Path, model: Any, onnx_path: Path, out: Path, opts: BuildOptions, described: Any,
              fixed: List[str], cls: Any, precision: str, calib: Optional[calibration.CalibrationSet],
              judged: Optional[calibration.CalibrationSet], fp: Dict[str, Any], sparse: Optional[Dict[str, Any]],
              t0: float) -> "_Done":
    """The build inside `work`, then every file moved into place."""
    import onnx

    fp32 = work / "fp32.onnx"
    onnx.save(model, str(fp32))
    outputs = describe.run_outputs(fp32, described.card, str(onnx_path), fixed)
    card = describe.resolve_layout(described, outputs, str(onnx_path))
    if opts.nms == "engine":  # before calibration and the agreement runs: every file built carries the NMS
        # The ONNX NonMaxSuppression graph for every backend, TensorRT included (graph_nms.tensorrt_graph says why),
        # checked against host NMS on the first frames agreement is measured on.
        head_card, head = card, work / "head.onnx"
        fp32.rename(head)
        card = graph_nms.append_nms(model, card, graph_nms.ONNX_NMS, str(onnx_path))
        onnx.save(model, str(fp32))
        feed = list(itertools.islice(calibration.Preprocessed(
            judged if judged is not None else _agreement_frames(card), card), NMS_CHECK_FRAMES))
        graph_nms.check_against_host(head_card, card, onnx_io.run_onnxruntime(head, feed), fp32, feed,
                                     str(onnx_path), "frames checked")
    if onnx_io.embedded_card(model, str(onnx_path)) != card:  # carry the card inside from now on
        onnx_io.set_card(model, card)
        onnx.save(model, str(fp32))
    # Decoded and preprocessed one frame at a time, on every pass (calibration, agreement): never all held.
    tensors = calibration.Preprocessed(calib if calib is not None else [], card)
    judge = calibration.Preprocessed(judged if judged is not None else _agreement_frames(card), card)
    files: Dict[str, Path] = {}
    kept: Dict[str, str] = {}
    ranked: List[Dict[str, Any]] = []
    budget: Optional[Dict[str, Any]] = None
    if precision == "int8":
        files[TENSORRT_QDQ] = work / "trt-qdq.onnx"
        if cls.capabilities.int8_file == ONNXRUNTIME_U8S8:
            files[ONNXRUNTIME_U8S8] = work / "cpu-u8s8.onnx"
        kept, ranked, budget = _quantize(fp32, card, tensors, judge, files, opts, work)
    built = cls.build(BuildRequest(
        fp32, files, work, precision, card.input_size,
        calib_tensors=tensors if precision == "int8" else None,
        calib_cache=out.with_name(out.name + CALIB_CACHE_SUFFIX) if precision == "int8" else None,
        calib_method=opts.calib_method, dla_core=opts.dla_core, workspace_mb=opts.workspace_mb,
        timing_cache=opts.timing_cache, sparsity=opts.sparsity, max_batch=opts.max_batch,
        to_fp16_onnx=_to_fp16_onnx, provider=opts.provider,
    ))
    if built.record.int8_path == mf.INT8_IMPLICIT:
        kept = {}  # TensorRT calibrated every layer itself: the Q/DQ file's choices do not apply to this engine
        if budget is not None:
            print("edgekit: warning: --accuracy-budget chose what the Q/DQ file keeps out of INT8, but TensorRT "
                  "calibrated this engine itself (DLA or TensorRT 8.5/8.6, implicit INT8): the choice does not "
                  "reach it; the agreement below is the engine's own", file=sys.stderr)
    # What the Jetson engine will do, predicted on this CPU: the symmetric Q/DQ file on ONNX Runtime.
    qdq = files[TENSORRT_QDQ] if precision == "int8" and cls.capabilities.int8_file != TENSORRT_QDQ else None
    with cls.load(built.engine, built.record) as engine, \
            (OnnxRuntimeBackend(qdq) if qdq else contextlib.nullcontext()) as qdq_engine:
        measured = measure_agreements(card, fp32, {"engine": engine, "qdq": qdq_engine} if qdq_engine
                                      else {"engine": engine}, judge, _sources(judged))
    agreement = measured["engine"]
    if "qdq" in measured:
        agreement["tensorrt_qdq_predicted"] = measured["qdq"]
    agreement["source"] = _judged_source(judged, calib, opts)
    seconds = time.perf_counter() - t0
    # Final names: the engine at OUT; side files beside it, named after it.
    final_files = {k: side_file(out, k) for k in files if files[k] != built.engine}
    manifest = mf.Manifest(
        schema=mf.SCHEMA,
        edgekit_version=__version__,
        engine=mf.EngineFile(out.name, mf.file_sha256(built.engine), built.engine.stat().st_size),
        backend=built.record,
        environment=mf.host_environment(),
        precision=precision,
        onnx=mf.OnnxSource(str(onnx_path), fp["onnx_sha256"]),
        preprocess_sha256=fp["preprocess_sha256"],
        io=_io_description(built.io_onnx),
        int8=None if precision != "int8" else mf.Int8Record(
            method=opts.calib_method, quantizer=_quantizer(built.record),
            calibration=_calibration_record(calib), kept_fp32=sorted(kept), kept_reason=kept,
            engine_file_is=built.int8_engine_is,
            held_out=_calibration_record(judged) if judged is not None and opts.val is None else None,
            sensitivity=ranked, budget=budget),
        files={k: v.name for k, v in final_files.items()},
        agreement=agreement,
        build=mf.BuildRecord(round(seconds, 2), time.strftime("%Y-%m-%dT%H:%M:%S%z"), mf.command_line(),
                             fp["flags"]),
        fingerprint=fp,
        sparsity=sparse,
        placement=built.placement or None,
        card=card,
    )
    mtmp = work / "manifest.json"
    mf.write(manifest, mtmp)
    with _signals_held():
        # Side files first, then the engine, then the manifest: a reader never sees a manifest that points at
        # files not yet in place. Then the side files this build did not write (an INT8 build's Q/DQ file
        # beside what is now an FP32 engine): no manifest names them any more.
        for k, dest in final_files.items():
            files[k].replace(dest)
        built.engine.replace(out)
        mtmp.replace(mf.path_for(out))
        for k in SIDE_FILE_SUFFIX:
            if k not in final_files:
                with contextlib.suppress(FileNotFoundError):
                    side_file(out, k).unlink()
    return _Done(card, seconds, kept, agreement, final_files, built.placement, ranked, budget)


class _Done(NamedTuple):
    card: ModelCard
    seconds: float
    kept: Dict[str, str]
    agreement: Dict[str, Any]
    final_files: Dict[str, Path]
    placement: Dict[str, List[str]]
    sensitivity: List[Dict[str, Any]]
    budget: Optional[Dict[str, Any]]


def _sources(frames: Optional[calibration.CalibrationSet]) -> Optional[List[str]]:
    """Each frame's source: its sub-folder in the folder given (a video or a flat folder is one source)."""
    if frames is None or frames.root is None:
        return None
    return [str(f.parent.relative_to(frames.root)) for f in frames.files]


def _judged_source(judged: Optional[calibration.CalibrationSet], calib: Optional[calibration.CalibrationSet],
                   opts: BuildOptions) -> str:
    """Where the agreement was measured, in words for the report."""
    if judged is None:
        return SYNTHETIC_SOURCE
    if opts.val:
        return f"{judged.source} (--val)"
    if judged is calib:
        return f"{judged.source} (--calib; this precision is not calibrated)"
    return f"{judged.source}: the end of --calib, held out of calibration"


def _quantize(fp32: Path, card: ModelCard, tensors: calibration.Preprocessed, judge: calibration.Preprocessed,
              files: Dict[str, Path], opts: BuildOptions,
              work: Path) -> "tuple[Dict[str, str], List[Dict[str, Any]], Optional[Dict[str, Any]]]":
    """Both INT8 files from one calibration, the tensors ranked by the noise their quantization adds and, with
    --accuracy-budget, the search for the fewest groups of them to take out of INT8 (int8_search). Returns
    (nodes left in floating point with the reason, the ranking, the search)."""
    import onnx

    from edgekit.build import int8_search
    from edgekit.build.quantize import Quantizer

    trt, cpu = files[TENSORRT_QDQ], files.get(ONNXRUNTIME_U8S8)
    quantizer = Quantizer(fp32, card.input_name, tensors, opts.calib_method, opts.keep_fp32, work)
    if card.input_format == "nhwc_uint8":  # the fused preprocessing stays in float (its pixels quantized once)
        from edgekit.build.fuse_preprocess import float_nodes

        quantizer.kept.update(float_nodes(quantizer.model))
    kept = quantizer.write(trt, cpu)
    ranked = int8_search.sensitivity(quantizer.fp32_path, trt, card.input_name, tensors, work)
    if opts.accuracy_budget is None:
        return kept, [r.to_dict() for r in ranked], None
    key = registry.task(card.task).agreement_key
    quantizer.write(trt, cpu, keep_activations=True)  # pairs taken off later must not lose a folded Relu
    base = {kind: onnx.load(str(path)) for kind, path in files.items()}
    fp32_graph = onnx.load(str(quantizer.fp32_path))
    weights = {t.name: t for t in fp32_graph.graph.initializer}
    # Groups ranked on a few calibration frames, spread over the set (the held-out frames judge the steps).
    wanted = set(calibration.video_frame_indices(len(tensors), int8_search.SENSITIVITY_FRAMES))
    few = _Reference(card, fp32, [x for i, x in enumerate(tensors) if i in wanted])
    held = _Reference(card, fp32, judge)

    def loss(graph: bytes) -> float:
        import onnxruntime as ort

        session = ort.InferenceSession(graph, _quiet_options(), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return agreement_loss(few.fidelity(lambda x: dict(zip(names, session.run(None, {card.input_name: x})))), key)

    tensors_by_module = int8_search.module_groups(int8_search.quantized_tensors(base.values(), fp32_graph))
    groups = int8_search.rank_groups(tensors_by_module, list(base.values()), loss, weights)

    def try_step(in_float: List[str]) -> "tuple[Dict[str, float], Optional[float]]":
        for kind, path in files.items():
            m = onnx.ModelProto()
            m.CopyFrom(base[kind])
            int8_search.remove_qdq(m, in_float, weights)
            onnx.save(m, str(path))
        agreement = {}
        for kind, path in files.items():
            with OnnxRuntimeBackend(path) as engine:
                agreement[kind] = float(held.fidelity(lambda x: engine.infer([x]))[key])
        return agreement, _latency_ratio(fp32, cpu, judge) if cpu else None

    found = int8_search.search(groups, float(opts.accuracy_budget), key, try_step)
    return kept, [r.to_dict() for r in ranked], found.to_dict()


class _Reference:
    """FP32's decoded results on some frames, computed once: what every step of the budget search compares with
    (raw outputs would not fit: a segmenter's logits are megabytes a frame)."""

    def __init__(self, card: ModelCard, fp32: Path, frames: Iterable[np.ndarray]) -> None:
        self.card, self.frames, self.decode = card, frames, evaluate.decoder(card)
        with OnnxRuntimeBackend(fp32) as ref:
            self.results = [self.decode(ref.infer([x])) for x in frames]

    def fidelity(self, run: Callable[[np.ndarray], Mapping[str, Any]]) -> Dict[str, Any]:
        """The task's agreement figures of `run` (one preprocessed frame -> raw outputs) against FP32's."""
        f = registry.task(self.card.task).fidelity(self.card)
        for x, result in zip(self.frames, self.results):
            f.add(result, self.decode(run(x)))
        return f.summary()


def agreement_loss(summary: Dict[str, Any], key: str) -> float:
    """One number, 0 for the same results, that moves with every result that moves (what ranks the groups of the
    budget search on a few frames, where the agreement measure alone changes in steps of whole boxes): the
    agreement lost, plus the IoU lost by matched results and their mean score difference."""
    iou = summary.get("mean_box_iou", summary.get("mean_mask_iou", 1.0))
    return (1.0 - summary[key]) + (1.0 - iou) + summary.get("mean_score_diff", 0.0)


def _quiet_options() -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # a graph with pairs taken off has unused initializers: ONNX Runtime warns of each
    return so


def _latency_ratio(fp32: Path, int8: Path, frames: Iterable[np.ndarray], runs: int = 15) -> float:
    """The INT8 file's median latency over the FP32 graph's on this CPU, on one frame, measured interleaved
    (A B A B) after a warm-up, so both see the same machine load (BENCHMARKS.md). Idle threads sleep between
    runs (pipelined sessions): a session whose threads spin after its run takes the cores from the other's."""
    x = next(iter(frames))
    with OnnxRuntimeBackend(fp32, pipelined=True) as ref, OnnxRuntimeBackend(int8, pipelined=True) as engine:
        for _ in range(3):
            ref.infer([x])
            engine.infer([x])
        times: Dict[str, List[float]] = {"fp32": [], "int8": []}
        for _ in range(runs):
            for name, b in (("fp32", ref), ("int8", engine)):
                t = time.perf_counter()
                b.infer([x])
                times[name].append(time.perf_counter() - t)
    return float(np.median(times["int8"]) / np.median(times["fp32"]))


def _calibration_record(calib: Optional[calibration.CalibrationSet]) -> mf.CalibrationRecord:
    """Where an INT8 engine's calibration came from: always the user's --calib (INT8 without it is refused)."""
    if calib is None:
        raise EdgekitError("INT8 needs calibration images: pass --calib IMAGE_FOLDER_OR_VIDEO")
    return mf.CalibrationRecord(calib.source, len(calib), calib.sha256)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT arriving while the finished files are moved into place take effect once they all
    are (a signal halfway would leave a new engine beside an old manifest)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[signal.Signals] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signal.Signals(signum))) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)  # raises KeyboardInterrupt, or the CLI's Terminated
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


def _quantizer(record: BackendRecord) -> str:
    """What quantized the engine, truthfully: TensorRT's own calibrator (implicit) or the Q/DQ file's quantizer."""
    if record.int8_path == mf.INT8_IMPLICIT:
        return f"TensorRT implicit calibration ({record.calibrator or 'its calibrator'}) of the FP32 ONNX"
    return "onnxruntime.quantization (QDQ, per-channel weights)"


def _to_fp16_onnx(src: Path, dst: Path) -> Path:
    """TensorRT 11: FP16 means an FP16 ONNX (inputs and outputs stay FP32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


SYNTHETIC_FRAMES = 16
SYNTHETIC_SOURCE = f"{SYNTHETIC_FRAMES} synthetic scenes (edgekit's generator; no --calib given)"


def _agreement_frames(card: ModelCard) -> List[np.ndarray]:
    """Synthetic scenes for the agreement measurement where the user gave no images (16 small frames)."""
    from edgekit.runtime.data.synth import render_image

    h, w = card.input_size
    return [render_image(4242, i, (max(w, 64), max(h, 64))).image for i in range(SYNTHETIC_FRAMES)]


def _io_description(onnx_file: Path) -> mf.IODescription:
    import onnx

    inputs, outputs = onnx_io.io_specs(onnx.load(str(onnx_file), load_external_data=False))

    def desc(specs: List[TensorSpec]) -> List[mf.TensorDescription]:
        return [mf.TensorDescription(s.name, list(s.shape), s.dtype) for s in specs]

    return mf.IODescription(desc(inputs), desc(outputs))


class AgreementMeter:
    """How closely an engine follows FP32 over many frames: the task's agreement measure pooled over them (and
    the figures beside it: box IoU and score differences of matched detections, IoU per class, ...), and how
    far raw output values moved. Holds a few numbers, not the frames."""

    def __init__(self, card: ModelCard) -> None:
        task = registry.task(card.task)
        self.card, self.key = card, task.agreement_key
        self.decode, self.fidelity = evaluate.decoder(card), task.fidelity(card)
        self.max_abs, self.max_at, self.span = 0.0, "", (0.0, 0.0)
        self.values = self.moved = 0

    def add(self, ref: Dict[str, np.ndarray], got: Dict[str, np.ndarray]) -> None:
        for name, r in ref.items():
            if r.shape != got[name].shape:  # outputs of varying length (NMS in the graph) compare decoded only
                continue
            diff = np.abs(r - got[name].astype(np.float32))
            if diff.size:
                lo, hi = float(r.min()), float(r.max())
                self.values += diff.size
                self.moved += int((diff > 0.01 * max(hi - lo, 1e-12)).sum())
                if float(diff.max()) > self.max_abs:
                    self.max_abs, self.max_at, self.span = float(diff.max()), name, (lo, hi)
        self.fidelity.add(self.decode(ref), self.decode(got))

    def result(self) -> Dict[str, Any]:
        out = self.fidelity.summary()
        out["max_abs_diff"] = round(self.max_abs, 5)
        out["values_moved"] = round(self.moved / self.values, 6) if self.values else 0.0
        lo, hi = self.span
        if self.max_abs > 0.1 * max(hi - lo, 1e-12) and out[self.key] >= 0.99:
            # The two figures seem to contradict each other (max abs diff 1.0 on a sigmoid, agreement 1.0): say why.
            out["note"] = (f"max_abs_diff is the largest change of any one raw value ('{self.max_at}', whose values "
                           f"span {lo:.3g}..{hi:.3g}); {100 * out['values_moved']:.3f}% of the raw values moved by "
                           f"more than 1% of their output's span, and the decoded results agree at {self.key} "
                           f"{out[self.key]:.4f}: a few values (a pixel's probability at a mask edge, a score under "
                           f"the threshold) moved, not the results")
        return out


def measure_agreements(card: ModelCard, fp32: Path, engines: Dict[str, Backend], tensors: Iterable[np.ndarray],
                       sources: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Each engine against the FP32 ONNX on ONNX Runtime, in one pass over the frames (they may be thousands of
    calibration images): one burst of frames and of their FP32 outputs held at a time, each session run over
    the whole burst in turn (calibration.BURST says why). With `sources` (each frame's, in order) the agreement
    of each source is given too (`by_source`)."""
    meters = {k: AgreementMeter(card) for k in engines}
    task = registry.task(card.task)
    per_source: Dict[str, Dict[str, Any]] = {k: {} for k in engines}
    labels = iter(sources or [])
    with OnnxRuntimeBackend(fp32) as ref:
        for chunk in calibration.bursts(tensors):
            expected = [ref.infer([x]) for x in chunk]
            names = [next(labels, "") for _ in chunk]
            for k, engine in engines.items():
                for x, r, name in zip(chunk, expected, names):
                    got = engine.infer([x])
                    meters[k].add(r, got)
                    if sources:
                        f = per_source[k].setdefault(name, task.fidelity(card))
                        f.add(meters[k].decode(r), meters[k].decode(got))
    results = {k: m.result() for k, m in meters.items()}
    if sources and len(set(sources)) > 1:
        for k, result in results.items():
            result["by_source"] = {n: f.summary()[task.agreement_key] for n, f in sorted(per_source[k].items())}
    return results


SOURCE_SPREAD = 5.0  # points of agreement between the best and the worst held-out source worth a warning


def source_spread_warning(agreement: Dict[str, Any], key: str) -> Optional[str]:
    """A warning where the held-out sources (sub-folders) agree with FP32 very differently: the calibration set
    represents some of them less well than others."""
    by = agreement.get("by_source") or {}
    if len(by) < 2:
        return None
    worst, best = min(by, key=lambda n: by[n]), max(by, key=lambda n: by[n])
    spread = 100 * (by[best] - by[worst])
    if spread < SOURCE_SPREAD:
        return None
    return (f"INT8 agreement with FP32 varies across the held-out sources by {spread:.1f} points ({key} "
            f"{by[worst]:.4f} on {printable(worst)}, {by[best]:.4f} on {printable(best)}): calibrate on frames "
            f"like {printable(worst)} too")


def measure_agreement(card: ModelCard, reference: Iterable[Dict[str, np.ndarray]], engine: Backend,
                      tensors: Iterable[np.ndarray]) -> Dict[str, Any]:
    """How closely an engine follows given reference outputs on the same preprocessed frames (read in step,
    one at a time)."""
    meter = AgreementMeter(card)
    for x, ref in zip(tensors, reference):
        meter.add(ref, engine.infer([x]))
    return meter.result()
