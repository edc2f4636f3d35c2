"""ONNX files: reading and writing the model card in metadata_props, loading with one-line errors."""

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import CARD_KEY, ModelCard


def load_model(path: "str | Path") -> Any:
    """onnx.ModelProto of a file, checked; a missing, truncated or non-ONNX file is a one-line error."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise EdgekitError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise EdgekitError(f"{p}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # protobuf raises DecodeError and friends for truncated or foreign files
        raise EdgekitError(f"{p}: not an ONNX model or truncated ({type(e).__name__})") from None
    if not model.graph.node:
        raise EdgekitError(f"{p}: not an ONNX model or truncated (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise EdgekitError(f"{p}: ONNX checker failed: {str(e).splitlines()[0]}") from None
    return model


def embedded_card(model: Any, source: str) -> Optional[ModelCard]:
    for prop in model.metadata_props:
        if prop.key == CARD_KEY:
            return ModelCard.from_json(prop.value, f"{source} (metadata {CARD_KEY})")
    return None


def metadata(model: Any) -> Dict[str, str]:
    """The ONNX file's metadata_props (exporters such as Ultralytics describe the model there)."""
    return {p.key: p.value for p in model.metadata_props}


def set_card(model: Any, card: ModelCard) -> None:
    for prop in list(model.metadata_props):
        if prop.key == CARD_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()


def io_names(model: Any) -> Tuple[List[Any], List[Any]]:
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    return inputs, list(model.graph.output)


def static_shape(value_info: Any) -> list:
    """[dims] of a graph input/output; symbolic dims come back as their name (str)."""
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def tensor_spec(value_info: Any) -> TensorSpec:
    import onnx

    dtype = onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type).name
    return TensorSpec(value_info.name, tuple(static_shape(value_info)), dtype)


def io_specs(model: Any) -> Tuple[List[TensorSpec], List[TensorSpec]]:
    """The graph's inputs and outputs as the runtime side describes tensors."""
    inputs, outputs = io_names(model)
    return [tensor_spec(v) for v in inputs], [tensor_spec(v) for v in outputs]


def run_onnxruntime(path: Path, inputs: List[np.ndarray]) -> Dict[str, List[np.ndarray]]:
    """Each output of the ONNX file for each input (ONNX Runtime's CPU provider), by output name."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    results: Dict[str, List[np.ndarray]] = {n: [] for n in names}
    for x in inputs:
        for n, y in zip(names, sess.run(names, {in_name: x})):
            results[n].append(y)
    return results
