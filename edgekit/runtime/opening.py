"""Opening what the measuring commands run: a built engine (its manifest checked against this machine),
an edgekit ONNX (FP32 on ONNX Runtime's CPU provider), or a checkpoint (eager PyTorch, build side)."""

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from edgekit.errors import EdgekitError
from edgekit.runtime import manifest as mf
from edgekit.runtime.backends import Backend, backend_class
from edgekit.runtime.card import CARD_KEY, ModelCard


def backend_environment(name: str) -> Dict[str, Any]:
    """What the manifest's backend section is compared with on this machine."""
    cls = backend_class(name)
    env = getattr(cls, "environment", None)
    if env is not None:
        return env()
    return {"name": name, "version": cls.version()}


def open_engine(path: "str | Path", pipelined: bool = False) -> Tuple[Backend, Dict[str, Any], ModelCard]:
    """(backend, manifest, card) of an engine built by `edgekit build-engine`, checked against this machine.

    `pipelined`: the engine runs beside other busy threads (run-stream), not alone in a loop (profile)."""
    path = Path(path)
    manifest = mf.read(path)
    name = manifest["backend"]["name"]
    cls = backend_class(name)
    mf.check(manifest, path, backend_environment(name))
    card = mf.card_of(manifest, path)
    backend = cls.load_engine(path, manifest, pipelined=pipelined)  # type: ignore[attr-defined]
    return backend, manifest, card


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() or path.name.endswith((".safetensors", ".card.yaml"))


def open_model(path: "str | Path", pipelined: bool = False, device: str = "auto",
               task: Optional[str] = None) -> Tuple[Backend, Dict[str, Any], ModelCard]:
    """(backend, description, card) of an engine, a plain edgekit ONNX or a checkpoint.

    The description has the manifest's `backend` and `precision` keys. `task`, when given, refuses a model
    of the other task before anything runs."""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path}: not found")
    if is_checkpoint(path):
        from edgekit.build.torch_backend import TorchBackend

        backend: Backend = TorchBackend(path, device)
        card = backend.card  # type: ignore[attr-defined]
        described: Dict[str, Any] = {"backend": {"name": "torch", "version": TorchBackend.version(),
                                                 "device": backend.device},  # type: ignore[attr-defined]
                                     "precision": "fp32 (PyTorch eager)"}
    elif path.suffix != ".onnx" or mf.path_for(path).is_file():
        backend, described, card = open_engine(path, pipelined=pipelined)
    else:
        from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(path, pipelined=pipelined)
        meta = backend.session.get_modelmeta().custom_metadata_map  # type: ignore[attr-defined]
        if CARD_KEY not in meta:
            backend.close()
            raise EdgekitError(f"{path}: no model card in the ONNX and no manifest beside it; build it with "
                               "edgekit build-engine (which takes --card for foreign models)")
        card = ModelCard.from_json(meta[CARD_KEY], str(path))
        described = {"backend": {"name": "onnxruntime", "version": OnnxRuntimeBackend.version(),
                                 "providers": ["CPUExecutionProvider"]}, "precision": "fp32 (plain ONNX)"}
    if task and task != card.task:
        backend.close()
        raise EdgekitError(f"{path}: this is a {card.task} model ({card.name}), not {task}")
    return backend, described, card
