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
from typing import Any, Dict, List, Optional, Sequence, Set

import numpy as np

from edgekit.errors import EdgekitError

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
    """onnxruntime.quantization CalibrationDataReader over preprocessed tensors."""

    def __init__(self, input_name: str, tensors: Sequence[np.ndarray]) -> None:
        self.input_name, self.tensors, self.i = input_name, list(tensors), 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.i >= len(self.tensors):
            return None
        self.i += 1
        return {self.input_name: self.tensors[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def quantize(
    fp32_path: Path,
    input_name: str,
    tensors: Sequence[np.ndarray],
    trt_out: Path,
    cpu_out: Optional[Path],
    method: str = "minmax",
    keep: Sequence[str] = (),
) -> Dict[str, str]:
    """Write the TensorRT-style symmetric Q/DQ file and (unless cpu_out is None) the U8S8 CPU file.

    Returns the nodes left in floating point, each with the reason."""
    import onnx

    if method not in METHODS:
        raise EdgekitError(f"--calib-method {method}: choose one of {', '.join(METHODS)}")
    model = onnx.load(str(fp32_path))
    if _opset(model) < MIN_OPSET:
        model = _upgrade_opset(model, fp32_path)
        fp32_path = fp32_path.with_name(fp32_path.stem + f".opset{MIN_OPSET}.onnx")
        onnx.save(model, str(fp32_path))
    kept = resolve_keep(model, keep, str(fp32_path))
    hint_filter = _QuietPreprocessHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        # The histogram calibrators print their progress to stdout; our summary says what matters.
        with contextlib.redirect_stdout(io.StringIO()):
            _quantize_both(fp32_path, input_name, tensors, trt_out, cpu_out, method, kept)
    finally:
        logging.getLogger().removeFilter(hint_filter)
    return kept


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


def calibrate(fp32_path: Path, input_name: str, tensors: Sequence[np.ndarray], method: str, work: Path) -> Path:
    """Activation ranges of every tensor, computed once and saved where quantize_static reads them."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(fp32_path, None, augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=_method_enum()[method], extra_options=CALIBRATOR_OPTIONS[method])
    calibrator.collect_data(_Reader(input_name, tensors))
    ranges = work / "ranges.json"
    save_tensors_data(calibrator.compute_data(), ranges)
    return ranges


def _method_enum() -> Dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}


def _quantize_both(fp32_path: Path, input_name: str, tensors: Sequence[np.ndarray], trt_out: Path,
                   cpu_out: Optional[Path], method: str, kept: Dict[str, str]) -> None:
    """One calibration, then both files quantized from the same activation ranges."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="edgekit-calib-") as tmp:
        ranges = calibrate(fp32_path, input_name, tensors, method, Path(tmp))
        common: Dict[str, Any] = dict(quant_format=QuantFormat.QDQ, per_channel=True,
                                      calibrate_method=_method_enum()[method], nodes_to_exclude=sorted(kept),
                                      calibration_cache_path=str(ranges))
        # TensorRT: int8 activations and weights, zero point 0 everywhere, biases left in float.
        quantize_static(str(fp32_path), str(trt_out), None, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
                        **common)
        if cpu_out is not None:
            # ONNX Runtime CPU: uint8 asymmetric activations with int8 per-channel weights (U8S8).
            quantize_static(str(fp32_path), str(cpu_out), None, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, **common)
