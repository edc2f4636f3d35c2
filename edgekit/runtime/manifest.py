"""The engine manifest: a sidecar JSON `<engine>.manifest.json` (never glued onto the engine, so stock
trtexec/DeepStream loaders still open it), read into typed records and checked against this machine when
loaded (DESIGN.md section 1). An edited or foreign manifest fails in one line naming the field."""

import hashlib
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from edgekit.errors import EdgekitError
from edgekit.runtime import records
from edgekit.runtime.card import ModelCard

SCHEMA = "edgekit.manifest/1"
# How an INT8 TensorRT engine was made (BackendRecord.int8_path)
INT8_QDQ = "explicit Q/DQ"  # TensorRT built the symmetric Q/DQ ONNX
INT8_IMPLICIT = "implicit calibration"  # TensorRT calibrated the FP32 ONNX itself (DLA)


@dataclass
class EngineFile:
    file: str
    sha256: str
    bytes: int


@dataclass
class BackendRecord:
    """What ran or built an engine: the backend's name and version, and whatever else it records (GPU and
    compute capability, providers and session options, DLA core, builder flags, ...)."""

    OMIT_NONE = True
    name: str
    version: str
    gpu: Optional[str] = None
    compute_capability: Optional[str] = None
    cuda_binding: Optional[str] = None
    device: Optional[str] = None
    providers: Optional[List[str]] = None
    session_options: Optional[Dict[str, Any]] = None
    strongly_typed: Optional[bool] = None
    dla_core: Optional[int] = None
    builder_flags: Optional[List[str]] = None
    build_seconds: Optional[float] = None
    calibration_cache: Optional[str] = None
    # INT8 engines: which path built it (INT8_QDQ: TensorRT built the symmetric Q/DQ ONNX; INT8_IMPLICIT: TensorRT
    # calibrated the FP32 ONNX itself, with `calibrator`, as DLA needs)
    int8_path: Optional[str] = None
    calibrator: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return records.to_dict(self)

    def mismatches(self, here: "BackendRecord") -> List[str]:
        """What this engine was built for that the backend here differs in."""
        out = []
        for key in ("name", "version", "gpu", "compute_capability", "dla_core"):
            built, now = getattr(self, key), getattr(here, key)
            if built is not None and now is not None and built != now:
                out.append(f"built with {key} {built}, this machine has {now}")
        return out


@dataclass
class HostEnvironment:
    machine: str
    cpu: str
    cpu_threads: Optional[int]
    os: str
    python: str
    jetpack_l4t: Optional[str]

    def to_dict(self) -> Dict[str, Any]:
        return records.to_dict(self)


@dataclass
class OnnxSource:
    file: str
    sha256: str


@dataclass
class TensorDescription:
    name: str
    shape: List[Union[int, str]]
    dtype: str


@dataclass
class IODescription:
    inputs: List[TensorDescription]
    outputs: List[TensorDescription]


@dataclass
class CalibrationRecord:
    source: str
    images: int
    sha256: Optional[str]


@dataclass
class Int8Record:
    method: str
    quantizer: str
    calibration: CalibrationRecord
    kept_fp32: List[str]
    kept_reason: Dict[str, str]
    engine_file_is: str


@dataclass
class BuildRecord:
    seconds: float
    time: str
    command: str
    flags: Dict[str, Any]


@dataclass
class Manifest:
    schema: str
    edgekit_version: str
    engine: EngineFile
    backend: BackendRecord
    environment: HostEnvironment
    precision: str
    onnx: OnnxSource
    preprocess_sha256: str
    io: IODescription
    int8: Optional[Int8Record]
    files: Dict[str, str]  # kind (tensorrt_qdq_onnx, ...) -> file name beside the engine
    agreement: Dict[str, Any]  # with FP32: frames, max_abs_diff and the task's agreement measure
    build: BuildRecord
    fingerprint: Dict[str, Any]  # everything the engine depends on, compared whole by --if-stale
    card: ModelCard
    sparsity: Optional[Dict[str, Any]] = None
    # where the engine's layers run, for a build that places them (TensorRT with a DLA core): device ("DLA",
    # "GPU") -> layer names; written only when there is something to say
    placement: Optional[Dict[str, List[str]]] = None

    def to_dict(self) -> Dict[str, Any]:
        d = records.to_dict(self)
        if not d.get("placement"):
            d.pop("placement", None)
        d["card"] = d.pop("card")  # the card last, as manifests have always had it
        return d

    @property
    def max_batch(self) -> int:
        """The largest batch the engine was built for."""
        return int(self.build.flags.get("max_batch") or 1)

    def side_file(self, engine: Path, kind: str) -> Optional[Path]:
        """A file written beside the engine (e.g. kind 'tensorrt_qdq_onnx'), or None."""
        name = self.files.get(kind)
        return engine.parent / name if name else None


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


def host_environment() -> HostEnvironment:
    return HostEnvironment(machine=platform.machine(), cpu=_cpu_name(), cpu_threads=os.cpu_count(),
                           os=platform.platform(), python=platform.python_version(), jetpack_l4t=_l4t())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _l4t() -> Optional[str]:
    from edgekit.runtime.jetson import tegra

    try:
        release = tegra.read_l4t_release()
    except ValueError:  # a garbled release file: the manifest is still worth writing
        return None
    return str(release) if release else None


def read(engine: "str | Path") -> Manifest:
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
    return records.from_dict(Manifest, data, f"{mpath}")


def write(manifest: Manifest, path: "str | Path") -> None:
    Path(path).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")


def mismatches(manifest: Manifest, engine: Path, here: BackendRecord) -> List[str]:
    """What differs between the manifest and this machine/file; empty when the engine may run here."""
    problems = []
    if manifest.engine.sha256 != file_sha256(engine):
        problems.append("the engine file changed since it was built")
    problems += manifest.backend.mismatches(here)
    if manifest.environment.machine != platform.machine():
        problems.append(f"built on {manifest.environment.machine}, this is {platform.machine()}")
    return problems


def check(manifest: Manifest, engine: Path, here: BackendRecord) -> None:
    problems = mismatches(manifest, engine, here)
    if problems:
        raise EdgekitError(f"{engine}: {problems[0]}; rebuild with: {manifest.build.command}")


def command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in ["edgekit", *sys.argv[1:]])

