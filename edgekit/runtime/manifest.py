"""The engine manifest: a sidecar JSON `<engine>.manifest.json` (never glued onto the engine, so stock
trtexec/DeepStream loaders still open it), read into typed records and checked against this machine when
loaded (DESIGN.md section 1). An edited or foreign manifest fails in one line naming the field."""

import hashlib
import json
import os
import platform
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from edgekit.errors import EdgekitError
from edgekit.runtime import records
from edgekit.runtime.card import ModelCard
from edgekit.runtime.text import printable

SCHEMA = "edgekit.manifest/1"
PRECISIONS = ("fp32", "fp16", "int8")  # what an engine is built as (build-engine resolves "best" to one of them)
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
    provider_options: Optional[Dict[str, Any]] = None  # ONNX Runtime: per provider, e.g. the TensorRT provider's FP16
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
    held_out: Optional[CalibrationRecord] = None  # the end of the calibration source, measured on, never calibrated on
    sensitivity: List[Dict[str, Any]] = field(default_factory=list)  # tensors by the noise their Q/DQ pair adds
    budget: Optional[Dict[str, Any]] = None  # --accuracy-budget: the search, step by step


@dataclass
class BuildRecord:
    seconds: float
    time: str
    command: str  # as the user typed it: shown nowhere (a planted manifest could hold any command), see rebuild_command
    flags: Dict[str, Any]  # BuildFlags as JSON; read through Manifest.build_flags()


@dataclass
class BuildFlags:
    """The build-engine flags an engine was built with (build.flags), typed: the rebuild hint is made from them."""

    calib_method: Optional[str] = None
    calib_size: Optional[int] = None
    keep_fp32: List[str] = field(default_factory=list)
    dla_core: Optional[int] = None
    workspace_mb: int = 1024
    sparsity: bool = False
    max_batch: int = 1
    val: Optional[str] = None
    val_size: Optional[int] = None
    accuracy_budget: Optional[float] = None
    fuse_preprocess: bool = False
    nms: str = "host"
    provider: Optional[str] = None  # ONNX Runtime's execution provider (cpu, cuda, tensorrt)

    def problem(self) -> Optional[str]:
        """What is out of range, as 'build.flags.KEY ...', or None."""
        if self.nms not in ("host", "engine"):
            return f"build.flags.nms {self.nms!r} is not host or engine"
        if self.provider is not None and self.provider not in ("cpu", "cuda", "tensorrt"):
            return f"build.flags.provider {self.provider!r} is not cpu, cuda or tensorrt"
        if self.calib_method is not None and not re.fullmatch(r"[a-z0-9_-]{1,32}", self.calib_method):
            return f"build.flags.calib_method {self.calib_method!r} is no calibration method"
        if self.accuracy_budget is not None and not 0 <= self.accuracy_budget < 100:
            return f"build.flags.accuracy_budget {self.accuracy_budget} is not from 0 to below 100"
        for key, low in (("calib_size", 1), ("dla_core", 0), ("workspace_mb", 1), ("max_batch", 1), ("val_size", 1)):
            value = getattr(self, key)
            if value is not None and value < low:
                return f"build.flags.{key} is {value}, below {low}"
        return None


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

    def build_flags(self, source: str = "manifest") -> BuildFlags:
        """build.flags, typed and range-checked (one line naming `source` and the flag otherwise)."""
        flags = records.from_dict(BuildFlags, self.build.flags, source, "build.flags")
        problem = flags.problem()
        if problem:
            raise EdgekitError(f"{source}: {printable(problem)}")
        return flags

    @property
    def max_batch(self) -> int:
        """The largest batch the engine was built for."""
        return self.build_flags().max_batch

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
    """The manifest beside `engine`, every field typed and checked: a missing, mistyped, out-of-range or deeply
    nested field is one line naming the file and the field."""
    engine = Path(engine)
    mpath = path_for(engine)
    if not engine.is_file():
        raise EdgekitError(f"{engine}: engine file not found")
    if not mpath.is_file():
        raise EdgekitError(f"{engine}: no manifest ({mpath.name}) beside it; rebuild it with edgekit build-engine")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except RecursionError:
        raise EdgekitError(f"{mpath}: not a valid manifest (nested too deeply)") from None
    except (OSError, ValueError) as e:  # ValueError: bad JSON, not UTF-8, an integer of thousands of digits
        raise EdgekitError(f"{mpath}: unreadable manifest ({printable(str(e)[:200])})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else "?"
        raise EdgekitError(f"{mpath}: manifest schema {printable(str(schema)[:40])} is not {SCHEMA} (made by another "
                           "edgekit version); rebuild the engine")
    if records.too_deep(data):
        raise EdgekitError(f"{mpath}: not a valid manifest (nested too deeply)")
    manifest = records.from_dict(Manifest, data, f"{mpath}")
    _check_fields(manifest, str(mpath))
    return manifest


def _check_fields(m: Manifest, source: str) -> None:
    """What the types alone do not say: the precision is one edgekit builds, the files named beside the engine
    are plain file names (not paths elsewhere), the build flags are typed and in range."""
    if m.precision not in PRECISIONS:
        raise EdgekitError(f"{source}: field 'precision' must be one of {', '.join(PRECISIONS)}, got "
                           f"{printable(repr(m.precision)[:40])}")
    for where, name in [("engine.file", m.engine.file), *((f"files.{k}", v) for k, v in m.files.items())]:
        if not _plain_name(name):
            raise EdgekitError(f"{source}: field '{printable(where)}' must be a file name beside the engine, got "
                               f"{printable(repr(name)[:60])}")
    m.build_flags(source)


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def write(manifest: Manifest, path: "str | Path") -> None:
    from edgekit.runtime.artifacts import write_text

    write_text(path, json.dumps(manifest.to_dict(), indent=2) + "\n")


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
        raise EdgekitError(f"{engine}: {printable(problems[0])}; rebuild with: {rebuild_command(manifest, engine)}")


# How calibration.load describes its source (Int8Record.calibration.source)
_CALIB_SOURCE = re.compile(r"\d+ (?:images from|frames sampled from) (.+)")


def rebuild_command(manifest: Manifest, engine: Path) -> str:
    """The `edgekit build-engine` line that rebuilds `engine`, made from the manifest's checked fields (the ONNX,
    backend, precision, calibration and build flags), every argument shell-quoted and shown printable. Never
    build.command: a planted manifest can put any command there (`curl ... | sh`) for the user to paste."""
    flags = manifest.build_flags()
    args = ["edgekit", "build-engine", manifest.onnx.file, "-o", str(engine), "--backend", manifest.backend.name,
            "--precision", manifest.precision]
    if manifest.precision == "int8":
        found = _CALIB_SOURCE.fullmatch(manifest.int8.calibration.source) if manifest.int8 else None
        args += ["--calib", found.group(1) if found else "CALIBRATION_IMAGES"]
        if flags.calib_method:
            args += ["--calib-method", flags.calib_method]
        if flags.calib_size:
            args += ["--calib-size", str(flags.calib_size)]
        if flags.accuracy_budget is not None:
            args += ["--accuracy-budget", f"{flags.accuracy_budget:g}"]
    if flags.val:
        args += ["--val", flags.val]
        if flags.val_size:
            args += ["--val-size", str(flags.val_size)]
    for name in flags.keep_fp32:
        args += ["--keep-fp32", name]
    if flags.dla_core is not None:
        args += ["--dla-core", str(flags.dla_core)]
    if flags.workspace_mb != BuildFlags.workspace_mb:
        args += ["--workspace", str(flags.workspace_mb)]
    if flags.sparsity:
        args.append("--sparsity")
    if flags.max_batch != 1:
        args += ["--max-batch", str(flags.max_batch)]
    if flags.fuse_preprocess:
        args.append("--fuse-preprocess")
    if flags.nms != "host":
        args += ["--nms", flags.nms]
    if flags.provider and flags.provider != "cpu":
        args += ["--provider", flags.provider]
    line = printable(" ".join(shlex.quote(a) for a in args))
    if manifest.fingerprint.get("card_given"):
        line += " (with the --card/--classes/--layout flags it was built with)"
    return line


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["edgekit", *sys.argv[1:]])

