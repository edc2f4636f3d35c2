"""The engine manifest: a sidecar JSON `<engine>.manifest.json` (never glued onto the engine, so stock
trtexec/DeepStream loaders still open it). Loading checks it against this machine (DESIGN.md section 1)."""

import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard

SCHEMA = "edgekit.manifest/1"


def path_for(engine: "str | Path") -> Path:
    return Path(str(engine) + ".manifest.json")


def file_sha256(path: "str | Path") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def preprocess_sha256(card: ModelCard) -> str:
    """Hash of everything the preprocessing function reads from the card."""
    d = card.to_dict()
    keys = {"input": d["input"], "normalize": d["normalize"], "resize": d["resize"]}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()


def host_environment() -> Dict[str, Any]:
    env: Dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_threads": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "jetpack_l4t": _l4t_release(),
    }
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _l4t_release() -> Optional[str]:
    p = Path("/etc/nv_tegra_release")
    try:
        return p.read_text().splitlines()[0].strip() if p.is_file() else None
    except (OSError, IndexError):
        return None


def read(engine: "str | Path") -> Dict[str, Any]:
    engine = Path(engine)
    mpath = path_for(engine)
    if not engine.is_file():
        raise EdgekitError(f"{engine}: engine file not found")
    if not mpath.is_file():
        raise EdgekitError(f"{engine}: no manifest ({mpath.name}) beside it; rebuild it with edgekit build-engine")
    try:
        data = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EdgekitError(f"{mpath}: unreadable manifest ({e})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgekitError(f"{mpath}: manifest schema {data.get('schema') if isinstance(data, dict) else '?'} "
                           f"is not {SCHEMA} (made by another edgekit version); rebuild the engine")
    return data


def mismatches(manifest: Dict[str, Any], engine: Path, backend_env: Dict[str, Any]) -> List[str]:
    """What differs between the manifest and this machine/file; empty when the engine may run here."""
    problems = []
    if manifest["engine"]["sha256"] != file_sha256(engine):
        problems.append("the engine file changed since it was built")
    built = manifest["backend"]
    for key in ("name", "version", "gpu", "compute_capability", "dla_core"):
        if key in built and key in backend_env and built[key] != backend_env[key]:
            problems.append(f"built with {key} {built[key]}, this machine has {backend_env[key]}")
    if manifest["environment"].get("machine") != platform.machine():
        problems.append(f"built on {manifest['environment'].get('machine')}, this is {platform.machine()}")
    return problems


def check(manifest: Dict[str, Any], engine: Path, backend_env: Dict[str, Any]) -> None:
    problems = mismatches(manifest, engine, backend_env)
    if problems:
        cmd = manifest.get("build", {}).get("command", "edgekit build-engine ...")
        raise EdgekitError(f"{engine}: {problems[0]}; rebuild with: {cmd}")


def card_of(manifest: Dict[str, Any], engine: Path) -> ModelCard:
    return ModelCard.from_dict(manifest["card"], f"{path_for(engine)} (card)")


def command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in ["edgekit", *sys.argv[1:]])

