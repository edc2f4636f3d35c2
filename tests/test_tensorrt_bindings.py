"""The TensorRT backend against the real TensorRT Python bindings of three API generations (8.6, 10.3, 11.4).

No GPU and no TensorRT here: the bindings wheels (~1 MB each) are downloaded into the test cache and unzipped,
and tiny stub libraries compiled with gcc stand in for libnvinfer & co. (entry points that return 0), so that
`import tensorrt_bindings` gives each version's real enums, classes, methods and properties
(../shared/TENSORRT.md, last section). Then every `trt.` name the backend's source touches (found with `ast`)
must exist in every version, except names the backend probes with getattr/hasattr (allowed to be absent, and
listed per version as information) and names used only behind such a probe (GUARDED); the same for the
methods and properties the backend uses on TensorRT objects (builder, config, engine, context, ...). The
backend module itself is imported against each version and, where it has `api_features(trt)`, its answer is
checked against the facts of each generation.
"""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest
from conftest import MODEL_CACHE, ROOT, cache_lock

BACKEND = ROOT / "edgekit" / "runtime" / "backends" / "tensorrt.py"
CACHE = MODEL_CACHE / "tensorrt-bindings"
# API generation -> (distribution, version) on PyPI
WHEELS = {
    "8.6": ("tensorrt_bindings", "8.6.1"),  # JetPack 6.0 has 8.6.2
    "10.3": ("tensorrt_cu12_bindings", "10.3.0"),  # JetPack 6.1/6.2
    "11.4": ("tensorrt_cu12_bindings", "11.4.0.106"),  # JetPack 7.x; what an unpinned `tensorrt` resolves to
}
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"

# Every symbol the bindings' tensorrt.so of 8.6/10.3/11.4 leaves undefined in the TensorRT libraries
# (nm -D --undefined-only), plus two that other releases use; 8.x also links libnvparsers (UFF/Caffe, C++ names).
# One source is compiled under every soname the module needs (readelf -d): the loader takes each symbol from
# whichever of them defines it.
STUB_C = """\
void *createInferBuilder_INTERNAL(void) { return 0; }
void *createInferRefitter_INTERNAL(void) { return 0; }
void *createInferRuntime_INTERNAL(void) { return 0; }
void *createNvOnnxParser_INTERNAL(void) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void) { return 0; }
void *getBuilderPluginRegistry(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void) { return 0; }
void *getLogger(void) { return 0; }
int getInferLibVersion(void) { return 0; }
void *_ZN11nvuffparser15createUffParserEv(void) { return 0; }
void _ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi(void) { }
void *_ZN14nvcaffeparser117createCaffeParserEv(void) { return 0; }
void _ZN14nvcaffeparser123shutdownProtobufLibraryEv(void) { }
"""

# Local names in the backend -> the TensorRT class of the object they hold.
RECEIVERS = {
    "builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition", "parser": "OnnxParser",
    "profile": "IOptimizationProfile", "cache_obj": "ITimingCache", "self.trt_runtime": "Runtime",
    "self.engine": "ICudaEngine", "self.context": "IExecutionContext",
}
# Names the backend uses with plain attribute access although some version lacks them, each reviewed to be
# reached only where the probed name (getattr in the backend) exists: name -> probed name. Checked below: in
# every version where the probed name exists, the guarded one exists too.
GUARDED = {
    # config.set_flag(trt.BuilderFlag.INT8) runs only `if not strongly_typed`, i.e. where BuilderFlag.FP16 exists
    "trt.BuilderFlag.INT8": "trt.BuilderFlag.FP16",
    # config.int8_calibrator = _make_calibrator(...): the calibrator is made first, and raises without the base
    "trt.IBuilderConfig.int8_calibrator": "trt.IInt8EntropyCalibrator2",
}
# What api_features(trt) must say per generation (TENSORRT.md): fact -> expected ("present" means a true or non-None
# value). Facts are looked up under any of the names in FEATURE_KEYS (case and punctuation ignored); those in
# REQUIRED_FEATURES must be there, the others are checked where the function gives them.
EXPECTED_FEATURES: Dict[str, Dict[str, bool]] = {
    "8.6": {"explicit_batch": True, "fp16_flag": True, "int8_flag": True, "implicit_calibration": True,
            "strongly_typed": False},
    "10.3": {"fp16_flag": True, "int8_flag": True, "binding_index_api": False},
    "11.4": {"fp16_flag": False, "int8_flag": False, "implicit_calibration": False, "strongly_typed": True,
             "explicit_batch": False, "binding_index_api": False},
}
REQUIRED_FEATURES = {
    "8.6": {"explicit_batch", "fp16_flag", "int8_flag", "implicit_calibration"},
    "10.3": {"fp16_flag", "int8_flag", "binding_index_api"},
    "11.4": {"fp16_flag", "int8_flag", "implicit_calibration", "strongly_typed"},
}
FEATURE_KEYS = {  # fact -> the field of edgekit's ApiFeatures that states it
    "explicit_batch": ("explicit_batch",),
    "fp16_flag": ("fp16_flag",),
    "int8_flag": ("int8_flag",),
    "implicit_calibration": ("implicit_calibration",),
    "strongly_typed": ("strongly_typed_flag",),
    "binding_index_api": ("binding_index_api",),
}


# --- what the backend's source touches ------------------------------------------------------------------------
def _chain(node: ast.AST) -> Optional[List[str]]:
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id] + parts[::-1]
    return None


@dataclass
class Uses:
    plain: Dict[str, int]  # "trt.X.Y" (TensorRT classes for receivers) -> first line it is used on
    probed: Dict[str, int]  # reached through getattr/hasattr(obj, "name"): allowed to be absent


def backend_uses(source: str) -> Uses:
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    plain: Dict[str, int] = {}
    probed: Dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            c = _chain(node.args[0])
            if c and c[0] == "trt" and isinstance(node.args[1].value, str):
                probed.setdefault(".".join(c + [node.args[1].value]), node.lineno)
        if isinstance(node, ast.Attribute):
            parent = parents.get(node)
            if isinstance(parent, ast.Attribute) and parent.value is node:
                continue  # a longer chain contains it
            c = _chain(node)
            if not c:
                continue
            if c[0] == "trt":
                plain.setdefault(".".join(c), node.lineno)
            for receiver, cls in RECEIVERS.items():
                n = receiver.count(".") + 1
                if ".".join(c[:n]) == receiver and len(c) > n:
                    plain.setdefault(f"trt.{cls}.{c[n]}", node.lineno)
    return Uses(plain, probed)


USES = backend_uses(BACKEND.read_text())


def test_the_source_scan_finds_what_the_backend_uses():
    """Guards the scan itself: it must see the calls every TensorRT build and run goes through."""
    for name in ("trt.Builder", "trt.OnnxParser", "trt.Runtime", "trt.IBuilderConfig.set_memory_pool_limit",
                 "trt.Builder.build_serialized_network", "trt.ICudaEngine.num_io_tensors",
                 "trt.IExecutionContext.execute_async_v3"):
        assert name in USES.plain, (name, sorted(USES.plain))
    assert "trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH" in USES.probed, sorted(USES.probed)


# --- the bindings, importable here ----------------------------------------------------------------------------
@dataclass
class Bindings:
    python: str  # an interpreter the wheel was built for
    site: Path  # the unzipped wheel (holds tensorrt_bindings/)
    extra_path: List[Path]  # NumPy, where that interpreter lacks it


def _python_tag(python: str) -> Optional[str]:
    try:
        r = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _interpreters() -> Iterator[Tuple[str, str]]:
    """(python, 'X.Y'): this test's own interpreter first (it has NumPy), then pyenv's 3.8 and later (edgekit's
    runtime side needs 3.8), newest first."""
    seen = {f"{sys.version_info[0]}.{sys.version_info[1]}"}
    yield sys.executable, f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = []
    for p in PYENV.glob("*/bin/python3"):
        m = re.match(r"(\d+)\.(\d+)\.", p.parent.parent.name)
        if m and (int(m.group(1)), int(m.group(2))) >= (3, 8):
            found.append(((int(m.group(1)), int(m.group(2))), p))
    for _, p in sorted(found, reverse=True):
        tag = _python_tag(str(p))  # the interpreter's own word, not its folder name
        if tag and tag not in seen:
            seen.add(tag)
            yield str(p), tag


_UNREACHABLE = re.compile(r"NewConnectionError|ConnectTimeout|Max retries|Temporary failure in name resolution|"
                          r"ProxyError|SSLError|Network is unreachable|Connection refused|Read timed out")


_PIP_SAID: Dict[str, str] = {}  # distribution -> pip's last line where it found no wheel
_UNREACHED: List[str] = []  # why, once a download found the registry unreachable


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args, "--retries", "1", "--timeout", "20",
                           "--disable-pip-version-check"], capture_output=True, text=True, timeout=600)


def _wheel(dist: str, version: str, tag: str) -> Optional[Path]:
    """The wheel for Python `tag`, downloaded into the cache once; None where the registry has none for it."""
    wheels = CACHE / "wheels"
    pattern = f"{dist}-{version}-cp{tag.replace('.', '')}-*.whl"
    found = sorted(wheels.glob(pattern))
    if not found and _UNREACHED:
        pytest.skip(_UNREACHED[0])
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        r = _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", tag, "-d", str(wheels),
                 f"{dist}=={version}")
        hit = _UNREACHABLE.search(r.stderr)
        if r.returncode != 0 and hit:
            why = re.search(r"Failed to establish a new connection: ([^'\"]+)", r.stderr)
            _UNREACHED.append(f"the package registry is unreachable (pip: {why.group(1) if why else hit.group(0)})")
        if _UNREACHED:
            pytest.skip(_UNREACHED[0])
        found = sorted(wheels.glob(pattern))
        if not found:
            _PIP_SAID[dist] = (r.stderr.strip().splitlines() or ["?"])[-1]
    return found[0] if found else None


def _unzipped(wheel: Path) -> Path:
    target = CACHE / "unpacked" / wheel.stem
    if not (target / "tensorrt_bindings" / "__init__.py").is_file():
        part = target.with_name(f"{target.name}.part{os.getpid()}")
        shutil.rmtree(part, ignore_errors=True)
        with zipfile.ZipFile(wheel) as z:
            z.extractall(part)
        shutil.rmtree(target, ignore_errors=True)
        part.replace(target)
    return target


def _numpy_for(python: str, tag: str) -> List[Path]:
    """Nothing where `python` imports NumPy; else a cached `pip install --target` folder of it."""
    if python == sys.executable or subprocess.run([python, "-c", "import numpy"], capture_output=True).returncode == 0:
        return []
    target = CACHE / f"numpy-py{tag}"
    if not (target / "numpy").is_dir():
        part = target.with_name(f"{target.name}.part{os.getpid()}")
        shutil.rmtree(part, ignore_errors=True)
        r = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--retries", "1",
                            "--only-binary=:all:", "--target", str(part), "numpy"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            said = (r.stderr.strip().splitlines() or ["?"])[-1]
            pytest.skip(f"NumPy for Python {tag} could not be installed: {said}")
        part.replace(target)
    return [target]


@pytest.fixture(scope="module")
def stub_libs() -> Path:
    """The folder of stub TensorRT libraries, compiled once (keyed by the stub source)."""
    for tool in ("gcc", "readelf"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the stub TensorRT libraries cannot be built")
    folder = CACHE / f"stubs-{hashlib.sha256(STUB_C.encode()).hexdigest()[:12]}"
    with cache_lock():  # parallel workers: none reads the source while another one writes it
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "nvinfer_stub.c"
        if not source.is_file():
            source.write_text(STUB_C)
    return folder


def _stubs_for(module: Path, folder: Path) -> None:
    """Compile the stub under each TensorRT soname `module` links (readelf -d) that the folder lacks."""
    dynamic = subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True, check=True).stdout
    for soname in re.findall(r"\(NEEDED\)\s+Shared library: \[(libnv[^\]]+)\]", dynamic):
        lib = folder / soname
        if not lib.is_file():
            part = folder / f"{soname}.part{os.getpid()}"
            r = subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(part),
                                str(folder / "nvinfer_stub.c")], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            part.replace(lib)


_BINDINGS: Dict[str, Bindings] = {}


def bindings(generation: str, stubs: Path) -> Bindings:
    """The unzipped wheel of a generation for an interpreter it was built for (skips where there is none)."""
    if generation in _BINDINGS:
        return _BINDINGS[generation]
    dist, version = WHEELS[generation]
    tried = []
    with cache_lock():  # parallel workers fill the cache one at a time (downloads, unpacked wheels, stubs)
        for python, tag in _interpreters():
            wheel = _wheel(dist, version, tag)
            tried.append(tag)
            if wheel is None:
                continue
            site = _unzipped(wheel)
            _stubs_for(site / "tensorrt_bindings" / "tensorrt.so", stubs)
            _BINDINGS[generation] = Bindings(python, site, _numpy_for(python, tag))
            return _BINDINGS[generation]
    pytest.skip(f"{dist}=={version} has no wheel for the Pythons here ({', '.join(tried)}); pip: "
                f"{_PIP_SAID.get(dist, '?')}")


# Run in the bindings' interpreter: argv[1] = JSON list of names to look up. Prints one JSON object.
PROBE = r"""
import dataclasses, json, sys
import tensorrt_bindings as trt
sys.modules["tensorrt"] = trt  # what `import tensorrt` gives where TensorRT is installed
def has(name):
    obj = trt
    for part in name.split(".")[1:]:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True
out = {"version": trt.__version__, "present": {n: has(n) for n in json.loads(sys.argv[1])}}
import edgekit.runtime.backends.tensorrt as backend
out["backend_trt"] = backend._trt() is trt if hasattr(backend, "_trt") else None
features = getattr(backend, "api_features", None)
if features is not None:
    f = features(trt)
    if dataclasses.is_dataclass(f):
        f = dataclasses.asdict(f)
    elif hasattr(f, "_asdict"):
        f = f._asdict()
    elif not isinstance(f, dict):
        f = {k: v for k, v in vars(f).items() if not k.startswith("_")}
    out["api_features"] = {str(k): v if v is None or isinstance(v, (bool, int, float, str)) else repr(v)
                           for k, v in f.items()}
print(json.dumps(out))
"""

_PROBED: Dict[str, dict] = {}


def probe(generation: str, stubs: Path) -> dict:
    if generation not in _PROBED:
        b = bindings(generation, stubs)
        names = sorted(set(USES.plain) | set(USES.probed) | set(GUARDED.values()))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
                   PYTHONPATH=os.pathsep.join(str(p) for p in [b.site, ROOT, *b.extra_path]),
                   LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(stubs), os.environ.get("LD_LIBRARY_PATH")])))
        r = subprocess.run([b.python, "-c", PROBE, json.dumps(names)], capture_output=True, text=True, env=env,
                           cwd=str(b.site), timeout=120)  # cwd: `-c` puts it first on sys.path
        missing = re.search(r"undefined symbol: (\S+)", r.stderr)
        assert not missing, f"the stub libraries lack {missing.group(1)}: add it to STUB_C"
        assert r.returncode == 0, f"TensorRT {generation} ({b.python}): {r.stderr}"
        _PROBED[generation] = json.loads(r.stdout.strip().splitlines()[-1])
    return _PROBED[generation]


GENERATIONS = list(WHEELS)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_every_name_the_backend_uses_exists(generation, stub_libs):
    p = probe(generation, stub_libs)
    assert p["version"] == WHEELS[generation][1]
    assert p["backend_trt"] in (True, None)  # the backend module imports against these bindings and finds them
    present = p["present"]
    missing = {n: line for n, line in USES.plain.items()
               if not present[n] and n not in USES.probed and n not in GUARDED}
    assert not missing, (f"TensorRT {p['version']} lacks names {BACKEND.name} uses without a getattr probe "
                         f"(name: line): {missing}")
    for name, guard in GUARDED.items():
        if name in USES.plain and name not in USES.probed:  # the backend still uses it plainly
            assert guard in USES.probed, f"{name} was reviewed as used behind a probe of {guard}, which is gone"
            assert present[name] or not present[guard], (
                f"TensorRT {p['version']}: {name} is used where {guard} exists, and here it does not")
    absent = sorted(n for n in USES.probed if not present[n])
    print(f"TensorRT {p['version']}: absent, reached through getattr: {absent or 'none'}; "
          f"absent, used behind a probe: {sorted(n for n in GUARDED if n in USES.plain and not present[n]) or 'none'}")


def test_probed_names_are_really_version_specific(stub_libs):
    """A getattr probe for a name that no version has is a typo: the backend would always take the fallback."""
    probes = [probe(g, stub_libs)["present"] for g in GENERATIONS]
    for name, line in USES.probed.items():
        seen = {pr[name] for pr in probes}
        assert seen != {False}, f"{BACKEND.name}:{line}: {name} exists in none of {', '.join(GENERATIONS)} (a typo?)"


def _feature(features: Dict[str, object], fact: str) -> Tuple[Optional[str], object]:
    norm = {re.sub(r"[^a-z0-9]", "", k.lower()): k for k in features}
    for alias in FEATURE_KEYS[fact]:
        key = norm.get(re.sub(r"[^a-z0-9]", "", alias))
        if key is not None:
            return key, features[key]
    return None, None


@pytest.mark.parametrize("generation", GENERATIONS)
def test_api_features_match_the_generation(generation, stub_libs):
    p = probe(generation, stub_libs)
    if "api_features" not in p:
        pytest.skip(f"{BACKEND.name} has no api_features(trt) yet (issue 14)")
    features = p["api_features"]
    wrong: Set[str] = set()
    for fact, expected in EXPECTED_FEATURES[generation].items():
        key, value = _feature(features, fact)
        if key is None and fact not in REQUIRED_FEATURES[generation]:
            continue
        assert key is not None, (f"api_features(trt) says nothing about {fact} (looked for {FEATURE_KEYS[fact]}; "
                                 f"it has {sorted(features)}): align FEATURE_KEYS or the function")
        if (value is not None and value is not False) != expected:
            wrong.add(f"{key}={value!r} (expected {'present' if expected else 'absent'})")
    assert not wrong, f"TensorRT {p['version']}: api_features(trt) says {sorted(wrong)}"
