"""Opening anything the measuring and streaming commands run, as one `Opened`: a built engine (its manifest
checked against this machine), an edgekit ONNX (FP32 on ONNX Runtime's CPU provider), or a checkpoint
(through whichever backend plugin runs checkpoints: the build side's eager PyTorch)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime import manifest as mf
from edgekit.runtime import registry
from edgekit.runtime.backends import Backend, backend_class, checkpoint_runner
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import CARD_KEY, ModelCard
from edgekit.runtime.layouts.shapes import fits, known
from edgekit.runtime.manifest import BackendRecord, Manifest
from edgekit.runtime.text import printable


@dataclass
class Opened:
    """A model ready to run: its backend, its card and, for a built engine, its manifest."""

    backend: Backend
    card: ModelCard
    manifest: Optional[Manifest]  # None for a plain ONNX or a checkpoint
    record: BackendRecord  # what runs it (the manifest's record for a built engine)
    precision: str
    path: "Path | str"  # the engine's file, or a served model's URL (triton://...)

    def infer(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw outputs by name for one preprocessed [N, 3, H, W] tensor."""
        return self.backend.infer([tensor])

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Opened":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_engine(path: "str | Path", pipelined: bool = False) -> Opened:
    """An engine built by `edgekit build-engine`, checked against this machine.

    `pipelined`: the engine runs beside other busy threads (run-stream), not alone in a loop (profile)."""
    path = Path(path)
    manifest = mf.read(path)
    try:
        cls = backend_class(manifest.backend.name)
    except EdgekitError as e:  # (a backend another install registers, or a planted name: quoted inert)
        raise EdgekitError(f"{mf.path_for(path)}: field 'backend.name': {printable(e)}") from None
    mf.check(manifest, path, cls.environment())
    backend = cls.load(path, manifest.backend, pipelined=pipelined, max_batch=manifest.max_batch)
    _checked_against_graph(backend, manifest.card, f"{mf.path_for(path)}")
    return Opened(backend, manifest.card, manifest, manifest.backend, manifest.precision, path)


def check_card_against_graph(card: ModelCard, backend: Backend, source: str) -> None:
    """A one-line error where the card does not describe the graph the backend runs: an input of another size or
    rank, or outputs its layout does not take with the card's classes (the layout's own check, as build-engine
    runs it). Dimensions the graph leaves dynamic pass. An edited card would otherwise run to a wrong result or
    to a huge allocation."""
    if backend.inputs and backend.inputs[0].shape:
        spec = backend.inputs[0]
        shape, want = list(spec.shape), card.input_shape()
        # A graph with preprocessing fused into it takes [N, H, W, 3] uint8 frames, any other [N, 3, H, W] floats.
        fused_graph, fused_card = spec.dtype == "uint8", card.input_format == "nhwc_uint8"
        if len(shape) != 4 or not all(fits(d, n) for d, n in zip(shape[1:], want[1:])) or fused_graph != fused_card:
            given = "x".join(str(n) for n in want) + (" uint8 (preprocessing fused)" if fused_card else "")
            raise EdgekitError(f"{source}: its model card gives a {given} input, but the graph's input "
                               f"'{printable(spec.name)}' is {printable(shape)} {printable(spec.dtype)}; the card "
                               "does not describe this model")
    # A dimension the graph leaves open is None or a name (ONNX Runtime) or -1 (TensorRT): as a name, so that the
    # layouts' checks, which compare only the integers they see, pass it.
    outputs = [TensorSpec(o.name, tuple(d if known(d) or isinstance(d, str) else "?" for d in o.shape), o.dtype)
               for o in backend.outputs if o.shape]
    if outputs and len(outputs) == len(backend.outputs):  # (outputs of a rank the runtime does not know: unchecked)
        registry.layout(card.output_layout).check(outputs, card, f"{source}: its model card does not fit the graph")


def _checked_against_graph(backend: Backend, card: ModelCard, source: str) -> None:
    try:
        check_card_against_graph(card, backend, source)
    except EdgekitError as e:  # the layouts' messages quote the graph's output names: shown inert
        backend.close()
        text = printable(str(e))
        raise EdgekitError(text if text.startswith(source) else f"{source}: {text}") from None
    except BaseException:
        backend.close()
        raise


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() or path.name.endswith((".safetensors", ".card.yaml"))


def engine_file(path: Path, verb: str) -> None:
    """A one-line error where `path` is missing or a checkpoint: `verb` (export-triton, ...) takes an engine file."""
    if not path.exists():
        raise EdgekitError(f"{path}: not found (give an engine from edgekit build-engine or an edgekit ONNX)")
    if is_checkpoint(path) or not path.is_file():
        raise EdgekitError(f"{path}: a checkpoint; {verb} takes an engine from edgekit build-engine or an edgekit ONNX "
                           "(edgekit export, then build-engine)")


def _open_plain_onnx(path: Path, pipelined: bool) -> Opened:
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, pipelined=pipelined)
    meta = backend.session.get_modelmeta().custom_metadata_map
    if CARD_KEY not in meta:
        backend.close()
        raise EdgekitError(f"{path}: no model card in the ONNX and no manifest beside it; build it with "
                           "edgekit build-engine (which takes --card for foreign models)")
    try:
        card = ModelCard.from_json(meta[CARD_KEY], str(path))
    except BaseException:
        backend.close()
        raise
    _checked_against_graph(backend, card, str(path))
    record = BackendRecord(name=OnnxRuntimeBackend.name, version=OnnxRuntimeBackend.version(),
                           providers=["CPUExecutionProvider"])
    return Opened(backend, card, None, record, plain_onnx_precision(backend), path)


def plain_onnx_precision(backend: Backend) -> str:
    """What a plain ONNX (no manifest) runs as, from its graph: an INT8 engine whose manifest was lost is not FP32."""
    quantized = backend.quantized_ops()
    if quantized is None:
        return "unknown (plain ONNX, no manifest)"
    if quantized:
        shown = ", ".join(quantized[:3]) + (", ..." if len(quantized) > 3 else "")
        return f"int8 (quantized graph: {printable(shown)}; plain ONNX, no manifest)"
    return "fp32 (plain ONNX)"


def open_model(path: "str | Path", pipelined: bool = False, device: str = "auto",
               task: Optional[str] = None) -> Opened:
    """An engine, a plain edgekit ONNX or a checkpoint, ready to run. `task`, when given, refuses a model of another
    task before anything runs. (A model served by Triton opens with serving.triton_client.open_triton.)"""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: not found")
    if is_checkpoint(path):
        runner = checkpoint_runner()
        backend, card, record = runner.open_checkpoint(path, device)
        opened = Opened(backend, card, None, record, "fp32 (PyTorch eager)", path)
    elif path.suffix != ".onnx" or mf.path_for(path).is_file():
        opened = open_engine(path, pipelined=pipelined)
    else:
        opened = _open_plain_onnx(path, pipelined)
    return of_task(opened, task, path)


def of_task(opened: Opened, task: Optional[str], path: "str | Path") -> Opened:
    """`opened`, unless `task` is given and it is a model of another task (then closed, and a one-line error)."""
    if task and task != opened.card.task:
        opened.close()
        raise EdgekitError(f"{path}: this is a {opened.card.task} model ({printable(opened.card.name)}), not {task}")
    return opened
