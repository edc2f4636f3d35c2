"""Opening anything the measuring and streaming commands run, as one `Opened`: a built engine (its manifest
checked against this machine), an edgekit ONNX (FP32 on ONNX Runtime's CPU provider), or a checkpoint
(through whichever backend plugin runs checkpoints: the build side's eager PyTorch)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime import manifest as mf
from edgekit.runtime.backends import Backend, backend_class, checkpoint_runner
from edgekit.runtime.card import CARD_KEY, ModelCard
from edgekit.runtime.manifest import BackendRecord, Manifest


@dataclass
class Opened:
    """A model ready to run: its backend, its card and, for a built engine, its manifest."""

    backend: Backend
    card: ModelCard
    manifest: Optional[Manifest]  # None for a plain ONNX or a checkpoint
    record: BackendRecord  # what runs it (the manifest's record for a built engine)
    precision: str
    path: Path

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
    cls = backend_class(manifest.backend.name)
    mf.check(manifest, path, cls.environment())
    backend = cls.load(path, manifest.backend, pipelined=pipelined, max_batch=manifest.max_batch)
    return Opened(backend, manifest.card, manifest, manifest.backend, manifest.precision, path)


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() or path.name.endswith((".safetensors", ".card.yaml"))


def _open_plain_onnx(path: Path, pipelined: bool) -> Opened:
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(path, pipelined=pipelined)
    meta = backend.session.get_modelmeta().custom_metadata_map
    if CARD_KEY not in meta:
        backend.close()
        raise EdgekitError(f"{path}: no model card in the ONNX and no manifest beside it; build it with "
                           "edgekit build-engine (which takes --card for foreign models)")
    card = ModelCard.from_json(meta[CARD_KEY], str(path))
    record = BackendRecord(name=OnnxRuntimeBackend.name, version=OnnxRuntimeBackend.version(),
                           providers=["CPUExecutionProvider"])
    return Opened(backend, card, None, record, "fp32 (plain ONNX)", path)


def open_model(path: "str | Path", pipelined: bool = False, device: str = "auto",
               task: Optional[str] = None) -> Opened:
    """An engine, a plain edgekit ONNX or a checkpoint, ready to run. `task`, when given, refuses a model
    of another task before anything runs."""
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
    if task and task != opened.card.task:
        opened.close()
        raise EdgekitError(f"{path}: this is a {opened.card.task} model ({opened.card.name}), not {task}")
    return opened
