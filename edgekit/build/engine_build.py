"""`edgekit build-engine`: ONNX -> an engine for TensorRT or ONNX Runtime, FP32 / FP16 / INT8, with a
manifest, written atomically; INT8 calibrated on real images through the card's preprocessing."""

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgekit import __version__
from edgekit.build import onnx_io
from edgekit.errors import EdgekitError
from edgekit.runtime import calibration
from edgekit.runtime import manifest as mf
from edgekit.runtime.artifacts import ensure_writable_dir
from edgekit.runtime.backends import resolve as resolve_backend
from edgekit.runtime.card import ModelCard
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
    card: Optional[ModelCard] = None  # for an ONNX not made by edgekit


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
    up_to_date: bool = False
    sparsity: Optional[Dict[str, Any]] = None  # with --sparsity: how many conv weights follow the 2:4 pattern


def unsupported(backend: str, precision: str, dla_core: Optional[int] = None, sparsity: bool = False,
                timing_cache: Optional[str] = None) -> Optional[str]:
    """Why `backend` cannot build this variant, or None where it can (sweep skips with this reason)."""
    if backend == "onnxruntime":
        if precision == "fp16":
            return ("--precision fp16 is not offered on the onnxruntime backend: its CPU provider has no fast FP16 "
                    "kernels and would run FP16 slower than FP32; use fp32 or int8, or the tensorrt backend")
        if dla_core is not None:
            return "--dla-core needs the tensorrt backend on a Jetson with DLA"
        if sparsity:
            return "--sparsity is a TensorRT feature (sparse tensor cores); use --backend tensorrt"
        if timing_cache:
            return "--timing-cache is a TensorRT feature; use --backend tensorrt"
    if dla_core is not None and precision == "fp32":
        return "DLA runs FP16 or INT8 only: pass --precision fp16 or int8 with --dla-core"
    return None


def resolve_precision(backend: str, precision: str, opts: BuildOptions) -> str:
    if precision not in PRECISIONS:
        raise EdgekitError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "best":
        if backend == "tensorrt":
            precision = "int8" if opts.calib else "fp16"
        else:
            precision = "int8" if opts.calib else "fp32"
    if precision == "int8" and not opts.calib:
        raise EdgekitError("INT8 needs calibration images: pass --calib IMAGE_FOLDER_OR_VIDEO")
    why = unsupported(backend, precision, opts.dla_core, opts.sparsity, opts.timing_cache)
    if why:
        raise EdgekitError(why)
    return precision


def fingerprint(onnx_sha: str, calib_sha: Optional[str], card: ModelCard, backend: str, backend_env: Dict[str, Any],
                precision: str, opts: BuildOptions) -> Dict[str, Any]:
    """Everything an engine depends on; --if-stale rebuilds when any of it changed."""
    return {
        "onnx_sha256": onnx_sha,
        "calibration_sha256": calib_sha,
        "preprocess_sha256": mf.preprocess_sha256(card),
        "backend": backend_env,
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
    return old.get("fingerprint") == fp and old["engine"]["sha256"] == mf.file_sha256(out)


def _card_for(model: Any, source: Path, given: Optional[ModelCard]) -> ModelCard:
    card = given or onnx_io.embedded_card(model, str(source))
    if card is None:
        raise EdgekitError(f"{source}: no edgekit model card in the ONNX metadata; describe the model with "
                           "--card CARD.yaml (or --task, --classes, --input-size, --mean/--std, --resize)")
    onnx_io.check_against_card(model, card, str(source))
    return card


def build_engine(onnx_path: "str | Path", out: "str | Path", opts: BuildOptions) -> BuildReport:
    t0 = time.perf_counter()
    onnx_path, out = Path(onnx_path), Path(out)
    model = onnx_io.load_model(onnx_path)
    card = _card_for(model, onnx_path, opts.card)
    backend = resolve_backend(opts.backend)
    precision = resolve_precision(backend, opts.precision, opts)
    ensure_writable_dir(out.parent)
    calib = calibration.load(opts.calib, opts.calib_size) if precision == "int8" and opts.calib else None

    from edgekit.runtime.opening import backend_environment

    backend_env = backend_environment(backend)
    fp = fingerprint(mf.file_sha256(onnx_path), calib.sha256 if calib else None, card, backend, backend_env,
                     precision, opts)
    if opts.if_stale and _is_up_to_date(out, fp):
        m = mf.read(out)
        return BuildReport(out, mf.path_for(out), backend, precision, 0.0, out.stat().st_size,
                           (m.get("int8") or {}).get("kept_fp32", []), m.get("agreement", {}),
                           m.get("files", {}), up_to_date=True)

    from edgekit.build.sparsity import check_onnx

    sparse = check_onnx(model) if opts.sparsity else None  # sparse kernels only help where the zeros are
    frames = calib.frames if calib else _agreement_frames(card)
    tensors = [preprocess(f, card)[0] for f in frames]
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        fp32 = work / "fp32.onnx"
        if opts.card is not None:  # an imported ONNX: carry the card inside from now on
            onnx_io.set_card(model, card)
        import onnx

        onnx.save(model, str(fp32))
        files: Dict[str, Path] = {}
        kept: Dict[str, str] = {}
        if precision == "int8":
            from edgekit.build.quantize import quantize

            trt_qdq = work / "trt-qdq.onnx"
            cpu_u8s8 = work / "cpu-u8s8.onnx" if backend == "onnxruntime" else None
            kept = quantize(fp32, card.input_name, tensors, trt_qdq, cpu_u8s8, opts.calib_method, opts.keep_fp32)
            files["tensorrt_qdq_onnx"] = trt_qdq
            if cpu_u8s8 is not None:
                files["onnxruntime_u8s8_onnx"] = cpu_u8s8
        if backend == "onnxruntime":
            engine_tmp = files.get("onnxruntime_u8s8_onnx", fp32)
            backend_section = {**backend_env, "providers": ["CPUExecutionProvider"],
                               "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL"}}
        else:
            from edgekit.runtime.backends.tensorrt import build_serialized

            engine_tmp = work / "engine.plan"
            backend_section = build_serialized(
                fp32, files.get("tensorrt_qdq_onnx"), engine_tmp, precision=precision, card=card,
                calib_tensors=tensors if precision == "int8" else None,
                calib_cache=out.with_name(out.name + ".calib.cache") if precision == "int8" else None,
                dla_core=opts.dla_core, workspace_mb=opts.workspace_mb, timing_cache=opts.timing_cache,
                sparsity=opts.sparsity, max_batch=opts.max_batch,
            )
        reference = reference_outputs(fp32, tensors)
        agreement = measure_agreement(card, reference, engine_tmp, backend, backend_section, tensors)
        if "tensorrt_qdq_onnx" in files and backend == "onnxruntime":
            # What the Jetson engine will do, predicted on this CPU: the symmetric Q/DQ file on ONNX Runtime.
            agreement["tensorrt_qdq_predicted"] = measure_agreement(card, reference, files["tensorrt_qdq_onnx"],
                                                                    "onnxruntime", {}, tensors)
        seconds = time.perf_counter() - t0
        # Final names: the engine at OUT; side files beside it, named after it.
        final_files = {k: out.with_name(f"{out.name}.{'trt-qdq' if k == 'tensorrt_qdq_onnx' else 'u8s8'}.onnx")
                       for k in files if files[k] != engine_tmp}
        manifest = {
            "schema": mf.SCHEMA,
            "edgekit_version": __version__,
            "engine": {"file": out.name, "sha256": mf.file_sha256(engine_tmp), "bytes": engine_tmp.stat().st_size},
            "backend": backend_section,
            "environment": mf.host_environment(),
            "precision": precision,
            "onnx": {"file": str(onnx_path), "sha256": fp["onnx_sha256"]},
            "preprocess_sha256": fp["preprocess_sha256"],
            "io": _io_description(engine_tmp if backend == "onnxruntime" else fp32),
            "int8": None if precision != "int8" else {
                "method": opts.calib_method, "quantizer": "onnxruntime.quantization (QDQ, per-channel weights)",
                "calibration": {"source": calib.source if calib else "", "images": len(tensors),
                                "sha256": fp["calibration_sha256"]},
                "kept_fp32": sorted(kept), "kept_reason": kept,
                "engine_file_is": "U8S8 Q/DQ ONNX for the ONNX Runtime CPU provider" if backend == "onnxruntime"
                else "TensorRT engine built from the symmetric int8 Q/DQ ONNX",
            },
            "files": {k: v.name for k, v in final_files.items()},
            "agreement": agreement,
            "build": {"seconds": round(seconds, 2), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "command": mf.command_line(), "flags": fp["flags"]},
            "fingerprint": fp,
            "sparsity": sparse,
            "card": card.to_dict(),
        }
        mtmp = work / "manifest.json"
        mtmp.write_text(json.dumps(manifest, indent=2) + "\n")
        # Side files first, then the engine, then the manifest: a reader never sees a manifest
        # that points at files not yet in place.
        for k, dest in final_files.items():
            files[k].replace(dest)
        engine_tmp.replace(out)
        mtmp.replace(mf.path_for(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BuildReport(out, mf.path_for(out), backend, precision, seconds, out.stat().st_size, sorted(kept),
                       agreement, {k: str(v) for k, v in final_files.items()}, sparsity=sparse)


def _agreement_frames(card: ModelCard) -> List[np.ndarray]:
    from edgekit.runtime.data.synth import render_image

    h, w = card.input_size
    return [render_image(4242, i, (max(w, 64), max(h, 64))).image for i in range(16)]


def _io_description(onnx_file: Path) -> Dict[str, Any]:
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    inputs, outputs = onnx_io.io_names(model)

    def spec(v: Any) -> Dict[str, Any]:
        return {"name": v.name, "shape": onnx_io.static_shape(v),
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}

    return {"inputs": [spec(i) for i in inputs], "outputs": [spec(o) for o in outputs]}


def reference_outputs(fp32: Path, tensors: List[np.ndarray]) -> List[np.ndarray]:
    """FP32 ONNX Runtime outputs on the agreement frames: the yardstick every built file is held to."""
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(fp32) as ref:
        return [ref.infer([x])[0] for x in tensors]


def measure_agreement(card: ModelCard, reference: List[np.ndarray], engine: Path, backend: str,
                      backend_section: Dict[str, Any], tensors: List[np.ndarray]) -> Dict[str, Any]:
    """How closely the engine follows FP32 on the same preprocessed frames: the largest output
    difference and a task-level agreement (detections matched, or pixels with the same class)."""
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgekit.runtime.opening import backend_class
    from edgekit.runtime.tasks.agreement import task_agreement

    if backend == "onnxruntime":
        eng: Any = OnnxRuntimeBackend(engine, backend_section.get("providers"), backend_section.get("session_options"))
    else:
        eng = backend_class(backend).load_engine(engine, {"backend": backend_section})  # type: ignore[attr-defined]
    max_abs, scores = 0.0, []
    with eng:
        for x, ref in zip(tensors, reference):
            got = eng.infer([x])[0].astype(np.float32)
            max_abs = max(max_abs, float(np.abs(ref - got).max()))
            scores.append(task_agreement(card, ref[0], got[0]))
    key = "detection_f1" if card.task == "detection" else "pixel_agreement"
    return {"frames": len(tensors), "max_abs_diff": round(max_abs, 5), key: round(float(np.mean(scores)), 4)}
