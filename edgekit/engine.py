"""Opening a built engine (runtime side): read and check its manifest, then load it on its backend."""

from pathlib import Path
from typing import Any, Dict, Tuple

from . import manifest as mf
from .backends import Backend, backend_class
from .card import ModelCard


def backend_environment(name: str) -> Dict[str, Any]:
    """What the manifest's backend section is compared with on this machine."""
    cls = backend_class(name)
    env = getattr(cls, "environment", None)
    if env is not None:
        return env()
    return {"name": name, "version": cls.version()}  # type: ignore[attr-defined]


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
