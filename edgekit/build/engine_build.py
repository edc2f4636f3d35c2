"""`edgekit build-engine`: ONNX -> an engine for TensorRT or ONNX Runtime, FP32 / FP16 / INT8, with a
manifest, written atomically; INT8 calibrated on real images through the card's preprocessing."""

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgekit import __version__
from edgekit.build import describe, onnx_io
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
from edgekit.runtime.preprocess import preprocess

PRECISIONS = ("fp32", "fp16", "int8", "best")


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
    why = unsupported(backend, precision, opts.dla_core, opts.sparsity, opts.timing_cache)
    if why:
        raise EdgekitError(why)
    return precision


def fingerprint(onnx_sha: str, calib_sha: Optional[str], card: ModelCard, backend_env: BackendRecord,
                precision: str, opts: BuildOptions) -> Dict[str, Any]:
    """Everything an engine depends on; --if-stale rebuilds when any of it changed."""
    return {
        "onnx_sha256": onnx_sha,
        "calibration_sha256": calib_sha,
        "preprocess_sha256": mf.preprocess_sha256(card),
        "backend": backend_env.to_dict(),
        "precision": precision,
        "flags": {"calib_method": opts.calib_method if precision == "int8" else None,
                  "calib_size": opts.calib_size if precision == "int8" else None,
                  "keep_fp32": sorted(opts.keep_fp32), "dla_core": opts.dla_core, "workspace_mb": opts.workspace_mb,
                  "sparsity": opts.sparsity, "max_batch": opts.max_batch},
        "edgekit_version": __version__,
    }


def _is_up_to_date(out: Path, fp: Dict[str, Any]) -> bool:
    try:
        old = mf.read(out)
    except EdgekitError:
        return False
    return old.fingerprint == fp and old.engine.sha256 == mf.file_sha256(out)


SIDE_FILE_SUFFIX = {TENSORRT_QDQ: "trt-qdq", ONNXRUNTIME_U8S8: "u8s8"}  # ENGINE.<suffix>.onnx


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
    t0 = time.perf_counter()
    onnx_path, out = Path(onnx_path), Path(out)
    model = onnx_io.load_model(onnx_path)
    check_batch_axis(model, opts.max_batch, str(onnx_path))
    described = describe.card_for(model, str(onnx_path), opts.card_file, opts.card_overrides, opts.layout)
    card = described.card
    fixed = describe.fix_input_shape(model, card, opts.max_batch)
    backend = resolve_backend(opts.backend)
    cls = backend_class(backend)
    precision = resolve_precision(backend, opts.precision, opts)
    ensure_writable_dir(out.parent)
    calib = calibration.load(opts.calib, opts.calib_size) if precision == "int8" and opts.calib else None

    backend_env = cls.environment()
    fp = fingerprint(mf.file_sha256(onnx_path), calib.sha256 if calib else None, card, backend_env, precision, opts)
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
        import onnx

        fp32 = work / "fp32.onnx"
        onnx.save(model, str(fp32))
        outputs = describe.run_outputs(fp32, card, str(onnx_path), fixed)
        card = describe.resolve_layout(described, outputs, str(onnx_path))
        if onnx_io.embedded_card(model, str(onnx_path)) != card:  # carry the card inside from now on
            onnx_io.set_card(model, card)
            onnx.save(model, str(fp32))
        frames = calib.frames if calib else _agreement_frames(card)
        tensors = [preprocess(f, card)[0] for f in frames]
        files: Dict[str, Path] = {}
        kept: Dict[str, str] = {}
        if precision == "int8":
            from edgekit.build.quantize import quantize

            files[TENSORRT_QDQ] = work / "trt-qdq.onnx"
            if cls.capabilities.int8_file == ONNXRUNTIME_U8S8:
                files[ONNXRUNTIME_U8S8] = work / "cpu-u8s8.onnx"
            kept = quantize(fp32, card.input_name, tensors, files[TENSORRT_QDQ], files.get(ONNXRUNTIME_U8S8),
                            opts.calib_method, opts.keep_fp32)
        built = cls.build(BuildRequest(
            fp32, files, work, precision, card.input_size,
            calib_tensors=tensors if precision == "int8" else None,
            calib_cache=out.with_name(out.name + ".calib.cache") if precision == "int8" else None,
            calib_method=opts.calib_method, dla_core=opts.dla_core, workspace_mb=opts.workspace_mb,
            timing_cache=opts.timing_cache, sparsity=opts.sparsity, max_batch=opts.max_batch,
            to_fp16_onnx=_to_fp16_onnx,
        ))
        if built.record.int8_path == mf.INT8_IMPLICIT:
            kept = {}  # TensorRT calibrated every layer itself: the Q/DQ file's choices do not apply to this engine
        reference = reference_outputs(fp32, tensors)
        with cls.load(built.engine, built.record) as engine:
            agreement = measure_agreement(card, reference, engine, tensors)
        if precision == "int8" and cls.capabilities.int8_file != TENSORRT_QDQ:
            # What the Jetson engine will do, predicted on this CPU: the symmetric Q/DQ file on ONNX Runtime.
            with OnnxRuntimeBackend(files[TENSORRT_QDQ]) as qdq:
                agreement["tensorrt_qdq_predicted"] = measure_agreement(card, reference, qdq, tensors)
        seconds = time.perf_counter() - t0
        # Final names: the engine at OUT; side files beside it, named after it.
        final_files = {k: out.with_name(f"{out.name}.{SIDE_FILE_SUFFIX[k]}.onnx")
                       for k in files if files[k] != built.engine}
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
                calibration=mf.CalibrationRecord(calib.source if calib else "", len(tensors),
                                                 fp["calibration_sha256"]),
                kept_fp32=sorted(kept), kept_reason=kept, engine_file_is=built.int8_engine_is),
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
        # Side files first, then the engine, then the manifest: a reader never sees a manifest
        # that points at files not yet in place.
        for k, dest in final_files.items():
            files[k].replace(dest)
        built.engine.replace(out)
        mtmp.replace(mf.path_for(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildReport(out, mf.path_for(out), backend, precision, seconds, out.stat().st_size, sorted(kept),
                       agreement, {k: str(v) for k, v in final_files.items()}, registry.task(card.task).agreement_key,
                       sparsity=sparse, card=card, card_source=described.source, fixed_input=fixed,
                       placement=built.placement, dla_core=opts.dla_core)


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


def _agreement_frames(card: ModelCard) -> List[np.ndarray]:
    from edgekit.runtime.data.synth import render_image

    h, w = card.input_size
    return [render_image(4242, i, (max(w, 64), max(h, 64))).image for i in range(16)]


def _io_description(onnx_file: Path) -> mf.IODescription:
    import onnx

    inputs, outputs = onnx_io.io_specs(onnx.load(str(onnx_file), load_external_data=False))

    def desc(specs: List[TensorSpec]) -> List[mf.TensorDescription]:
        return [mf.TensorDescription(s.name, list(s.shape), s.dtype) for s in specs]

    return mf.IODescription(desc(inputs), desc(outputs))


def reference_outputs(fp32: Path, tensors: List[np.ndarray]) -> List[Dict[str, np.ndarray]]:
    """FP32 ONNX Runtime outputs on the agreement frames: the yardstick every built file is held to."""
    with OnnxRuntimeBackend(fp32) as ref:
        return [ref.infer([x]) for x in tensors]


def measure_agreement(card: ModelCard, reference: List[Dict[str, np.ndarray]], engine: Backend,
                      tensors: List[np.ndarray]) -> Dict[str, Any]:
    """How closely an engine follows FP32 on the same preprocessed frames: the largest output difference
    and the task's agreement measure (detections matched, pixels given the same class, ...)."""
    max_abs, scores = 0.0, []
    for x, ref in zip(tensors, reference):
        got = engine.infer([x])
        for name, r in ref.items():
            if r.shape == got[name].shape:  # outputs of varying length (NMS in the graph) compare decoded only
                max_abs = max(max_abs, float(np.abs(r - got[name].astype(np.float32)).max()))
        scores.append(evaluate.agreement(card, ref, got))
    return {"frames": len(tensors), "max_abs_diff": round(max_abs, 5),
            registry.task(card.task).agreement_key: round(float(np.mean(scores)), 4)}
