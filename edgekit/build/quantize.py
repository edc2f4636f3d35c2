"""INT8 by explicit quantization through onnxruntime.quantization (build side).

One calibration, two files (TENSORRT.md): a symmetric int8 Q/DQ ONNX that TensorRT builds from (and
that ONNX Runtime runs correctly, to predict the Jetson engine's accuracy), and a U8S8 ONNX (uint8
asymmetric activations, int8 per-channel weights) that ONNX Runtime's x86/ARM CPU kernels run fast.
"""

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.calibration import bursts

METHODS = ("minmax", "entropy", "percentile")


def output_tail(model: Any) -> Set[str]:
    """Names of nodes after the last convolution on every path to an output (box decoding, sigmoid,
    final resize of logits). They stay in floating point: int8 steps of pixel coordinates or of
    logits at class boundaries cost accuracy and buy no speed."""
    consumers: Dict[str, List[Any]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    feeds_conv: Dict[str, bool] = {}

    def reaches_conv(node: Any) -> bool:
        if node.name in feeds_conv:
            return feeds_conv[node.name]
        feeds_conv[node.name] = False  # guards against cycles (none in a valid ONNX)
        result = any(c.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") or reaches_conv(c)
                     for o in node.output for c in consumers.get(o, []))
        feeds_conv[node.name] = result
        return result

    return {n.name for n in model.graph.node
            if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") and not reaches_conv(n)}


def resolve_keep(model: Any, keep: Sequence[str], source: str) -> Dict[str, str]:
    """Node names to keep in FP32, from node names or op types given by the user, plus the output tail."""
    names = {n.name for n in model.graph.node}
    kept = {name: "output decoding after the last convolution" for name in sorted(output_tail(model))}
    for k in keep:
        matched = [n.name for n in model.graph.node if n.op_type == k]
        if matched:
            kept.update({m: f"--keep-fp32 {k}" for m in matched})
        elif k in names:
            kept[k] = f"--keep-fp32 {k}"
        else:
            ops = sorted({n.op_type for n in model.graph.node})
            raise EdgekitError(f"{source}: --keep-fp32 {k} is neither a node name nor an op type of the graph "
                               f"(op types: {', '.join(ops)})")
    return kept


class _QuietPreprocessHint(logging.Filter):
    """onnxruntime.quantization logs a pre-processing hint on the root logger on every call; our graphs
    come from export already simplified (onnxslim), so the hint is noise for edgekit's users."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage()


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over preprocessed tensors, read from a re-iterable source
    (a calibration.Preprocessed set decodes frames as they are asked for) a burst at a time (see
    calibration.BURST), at most `limit` of them per pass where a limit is given (a chunk); rewind starts over."""

    def __init__(self, input_name: str, tensors: Iterable[np.ndarray], limit: Optional[int] = None) -> None:
        self.input_name, self.tensors, self.limit = input_name, tensors, limit
        self.rewind()

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.limit is not None and self.given >= self.limit:
            return None
        if not self.ready:
            self.ready = next(self.chunks, [])[::-1]
            if not self.ready:
                return None
        self.given += 1
        return {self.input_name: self.ready.pop()}

    def rewind(self) -> None:
        self.chunks: Iterator[List[np.ndarray]] = bursts(self.tensors)
        self.ready: List[np.ndarray] = []
        self.given = 0


class Quantizer:
    """One calibration, then as many quantized files as asked from the same activation ranges, each with its own
    nodes left in floating point (the accuracy-budget search writes one pair per step).

    `tensors` is iterated more than once (two passes for the histogram methods) and never held whole. The
    ranges and the opset-upgraded copy of the graph live in `work` (the build's private folder)."""

    def __init__(self, fp32_path: Path, input_name: str, tensors: Iterable[np.ndarray], method: str,
                 keep: Sequence[str], work: Path) -> None:
        import onnx

        if method not in METHODS:
            raise EdgekitError(f"--calib-method {method}: choose one of {', '.join(METHODS)}")
        model = onnx.load(str(fp32_path))
        if _opset(model) < MIN_OPSET:
            model = _upgrade_opset(model, fp32_path)
            fp32_path = work / (fp32_path.stem + f".opset{MIN_OPSET}.onnx")
            onnx.save(model, str(fp32_path))
        self.fp32_path, self.method, self.model = fp32_path, method, model
        self.kept = resolve_keep(model, keep, str(fp32_path))  # the output tail and --keep-fp32
        with _quiet(), _room_judged(fp32_path, work):
            self.ranges = calibrate(fp32_path, input_name, tensors, method, work)

    def write(self, trt_out: Path, cpu_out: Optional[Path], more: Optional[Dict[str, str]] = None,
              keep_activations: bool = False) -> Dict[str, str]:
        """The TensorRT-style symmetric Q/DQ file and (unless cpu_out is None) the U8S8 CPU file, with the nodes
        in `more` (name -> reason) left in floating point too. Returns every node left in floating point.

        With `keep_activations`, the U8S8 file keeps its Relu/Clip nodes (ONNX Runtime folds them into the
        asymmetric range of the pair before them by default: a Q/DQ pair taken off later would lose the Relu)."""
        kept = {**self.kept, **(more or {})}
        with _quiet(), _room_judged(self.fp32_path, trt_out.parent):
            _quantize_files(self.fp32_path, self.ranges, trt_out, cpu_out, self.method, kept, keep_activations)
        return kept


def quantize(
    fp32_path: Path,
    input_name: str,
    tensors: Iterable[np.ndarray],
    trt_out: Path,
    cpu_out: Optional[Path],
    method: str = "minmax",
    keep: Sequence[str] = (),
) -> Dict[str, str]:
    """Write the TensorRT-style symmetric Q/DQ file and (unless cpu_out is None) the U8S8 CPU file from one
    calibration. Returns the nodes left in floating point, each with the reason."""
    # Scratch files beside the outputs (the build's private folder): a full disk names the output's disk, and
    # whatever removes that folder (an error, SIGTERM) removes these too.
    with tempfile.TemporaryDirectory(prefix="calib-", dir=trt_out.parent) as tmp:
        return Quantizer(fp32_path, input_name, tensors, method, keep, Path(tmp)).write(trt_out, cpu_out)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization's pre-processing hint (root logger) and the histogram calibrators' progress
    (stdout) are noise beside our summary."""
    hint_filter = _QuietPreprocessHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.getLogger().removeFilter(hint_filter)


@contextlib.contextmanager
def _room_judged(fp32_path: Path, folder: Path) -> Iterator[None]:
    """A failure judged while the scratch files still fill the disk: onnx's shape inference (inside
    quantize_static) writes its copy of the model from native code and fails silently on a full disk, which shows
    up later as a parse error; while the scratch files are still there, the lack of room can be seen."""
    try:
        yield
    except Exception as e:
        from edgekit.build.export import write_failure

        failure = write_failure(e, folder / "quantized.onnx", folder, fp32_path.stat().st_size)
        if failure is None:
            raise
        raise failure from None


# Per-channel weights need DequantizeLinear's `axis`, which came with opset 13; Ultralytics exports opset 12
# by default. Older graphs are converted first (the FP32 engine keeps the file as it was).
MIN_OPSET = 13


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _upgrade_opset(model: Any, source: Path) -> Any:
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:  # the converter raises plain RuntimeErrors for ops it cannot move
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgekitError(f"{source}: INT8 needs opset {MIN_OPSET} or later and this opset {_opset(model)} graph "
                           f"could not be converted ({first[:120]}); export it again with opset {MIN_OPSET}+") from None


# Histogram settings of the calibrators. onnxruntime's quantize_static builds its entropy calibrator with 128
# bins and 128 quantized bins, which leaves the KL search one candidate (the full range): entropy came out
# identical to minmax. 2048 bins searched down to 128 levels is the TensorRT entropy calibrator's setting.
CALIBRATOR_OPTIONS: Dict[str, Dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


# MinMax ranges are merged chunk by chunk (onnxruntime's collect_data keeps every image's ReduceMin/ReduceMax
# outputs until it returns, then merges them into its running range: min of mins, max of maxes, exact).
# Its own max_intermediate_outputs option is not used: onnxruntime 1.32 drops the outputs collected so far
# when the count is reached, without merging them.
MINMAX_CHUNK = 64


def calibrate(fp32_path: Path, input_name: str, tensors: Iterable[np.ndarray], method: str, work: Path,
              chunk: int = MINMAX_CHUNK) -> Path:
    """Activation ranges of every tensor, computed once and saved where quantize_static reads them. Memory is
    flat in the number of images: one image's activations at a time (see MINMAX_CHUNK, histograms)."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator: Any = create_calibrator(fp32_path, None, augmented_model_path=str(work / "augmented.onnx"),
                                        calibrate_method=_method_enum()[method],
                                        extra_options=CALIBRATOR_OPTIONS[method])
    if method == "minmax":
        reader = _Reader(input_name, tensors, limit=chunk)
        while True:
            calibrator.collect_data(reader)  # one chunk: its ranges merged into the calibrator's
            if reader.given < chunk:
                break
            reader.given = 0  # the next chunk, from where the iterator stands
        data = calibrator.compute_data()
    else:
        calibrator.collector = histograms(calibrator, input_name, tensors)
        data = calibrator.compute_data()
    ranges = work / "ranges.json"
    save_tensors_data(data, ranges)
    return ranges


def histograms(calibrator: Any, input_name: str, tensors: Iterable[np.ndarray]) -> Any:
    """The HistogramCollector that onnxruntime's HistogramCalibrater.collect_data makes, with one image's activations
    held at a time instead of every image's (it keeps all of them, then stacks them into one more copy).

    Its histograms span the range of all the data (2048 bins over [-max|x|, max|x|] for entropy; over
    [min|x|, max|x|] of the absolute values for the symmetric percentile), which one pass cannot know in
    advance; collecting chunk by chunk instead widens the first chunk's histogram bin by bin, so the bin count
    (and the entropy search's time) would grow with how the data is ordered. So two passes: the ranges, then
    the counts in those fixed bins, summed image by image; a histogram is additive over a fixed binning, so
    the thresholds come out identical (tests/test_build_reliability.py compares them with onnxruntime's own).
    onnxruntime then computes the thresholds from it (compute_data)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    session = calibrator.infer_session
    names = [o.name for o in session.get_outputs()]
    wanted = [n for n in names if n in calibrator.tensors_to_calibrate]
    absolute = calibrator.method == "percentile" and calibrator.symmetric  # collect_absolute_value
    lo: Dict[str, Any] = {}
    hi: Dict[str, Any] = {}
    alo: Dict[str, Any] = {}
    ahi: Dict[str, Any] = {}
    dtypes: Dict[str, Any] = {}
    seen = False
    for x in _one_by_one(tensors):  # pass 1: each tensor's range over all images
        seen = True
        for name, y in _outputs(session, names, wanted, input_name, x):
            dtypes[name] = y.dtype
            if not y.size:
                continue
            _fold(lo, hi, name, np.nanmin(y), np.nanmax(y))
            if absolute:  # onnxruntime's np.histogram(|x|) takes its range from min() and max()
                a = np.absolute(y)
                _fold(alo, ahi, name, a.min(), a.max())
    if not seen:
        raise EdgekitError("calibration needs at least one image")
    histograms: Dict[str, Tuple[Any, ...]] = {}
    edges: Dict[str, Tuple[Any, Any]] = {}
    for name in wanted:
        dtype = dtypes[name]
        low, high = lo.get(name, np.array(0, dtype)), hi.get(name, np.array(0, dtype))
        if absolute:
            edges[name] = (alo.get(name, np.array(0, dtype)), ahi.get(name, np.array(0, dtype)))
        else:
            threshold = np.array(max(abs(low), abs(high)), dtype=dtype)
            edges[name] = (-threshold, threshold)
        histograms[name] = (low, high)
    counts: Dict[str, Any] = {}
    bin_edges: Dict[str, Any] = {}
    for x in _one_by_one(tensors):  # pass 2: counts in the fixed bins
        for name, y in _outputs(session, names, wanted, input_name, x):
            flat = np.absolute(y.ravel()) if absolute else y.ravel()
            hist, bin_edges[name] = np.histogram(flat, calibrator.num_bins, range=edges[name])
            counts[name] = hist if name not in counts else counts[name] + hist
    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    for name in wanted:
        low, high = histograms[name]
        if name not in counts:  # empty outputs on every image
            counts[name], bin_edges[name] = np.histogram(np.zeros(0, dtypes[name]), calibrator.num_bins,
                                                         range=edges[name])
        if absolute:  # the layout of HistogramCollector.collect_absolute_value
            collector.histogram_dict[name] = (counts[name], bin_edges[name].astype(dtypes[name]), low, high)
        else:  # of collect_value
            collector.histogram_dict[name] = (counts[name], bin_edges[name], low, high, edges[name][1])
    return collector


def _one_by_one(tensors: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The tensors, each burst read before any of it is run (calibration.BURST)."""
    for chunk in bursts(tensors):
        yield from chunk


def _outputs(session: Any, names: List[str], wanted: List[str], input_name: str,
             x: np.ndarray) -> Iterator[Tuple[str, np.ndarray]]:
    """The calibrated tensors of one image (the augmented model's outputs)."""
    keep = set(wanted)
    for name, y in zip(names, session.run(None, {input_name: x})):
        if name in keep:
            yield name, np.asarray(y)


def _fold(lo: Dict[str, Any], hi: Dict[str, Any], name: str, low: Any, high: Any) -> None:
    """Running min and max in the arrays' own dtype, NaN ignored (as np.nanmin over all the data)."""
    lo[name] = low if name not in lo else np.fmin(lo[name], low)
    hi[name] = high if name not in hi else np.fmax(hi[name], high)


def _method_enum() -> Dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}


# Where the TensorRT file's Q/DQ pairs go: on the inputs of convolutions and matrix products only, as NVIDIA's
# ModelOpt ONNX PTQ and pytorch-quantization place them. TensorRT fuses each pair into the layer that reads it and
# runs what lies between (activations, residual adds, concats, resizes) in FP16; onnxruntime's default also puts a
# pair on the output of every op, around every add and concat, which TensorRT must honour with a reformat. It
# was as accurate on the shipped models (detection F1 0.977 against 0.981, mask IoU 0.986 against 0.984 on 64
# held-out scenes) and more accurate on a real YOLOv8n (F1 0.944 against 0.928, mean score difference 0.018
# against 0.032, on 20 held-out pages), with 59 pairs instead of 227 (benchmarks/int8_fidelity.py, README).
TRT_PLACEMENT = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _quantize_files(fp32_path: Path, ranges: Path, trt_out: Path, cpu_out: Optional[Path], method: str,
                    kept: Dict[str, str], keep_activations: bool = False) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    common: Dict[str, Any] = dict(quant_format=QuantFormat.QDQ, per_channel=True,
                                  calibrate_method=_method_enum()[method], nodes_to_exclude=sorted(kept),
                                  calibration_cache_path=str(ranges))
    # TensorRT: int8 activations and weights, zero point 0 everywhere, biases left in float; pairs on the inputs
    # of the weighted layers only (TRT_PLACEMENT).
    quantize_static(str(fp32_path), str(trt_out), None, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=list(TRT_PLACEMENT),
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "OpTypesToExcludeOutputQuantization": list(TRT_PLACEMENT)},
                    **common)
    if cpu_out is not None:
        # ONNX Runtime CPU: uint8 asymmetric activations with int8 per-channel weights (U8S8).
        quantize_static(str(fp32_path), str(cpu_out), None, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options={"QDQKeepRemovableActivations": keep_activations},
                        **common)
