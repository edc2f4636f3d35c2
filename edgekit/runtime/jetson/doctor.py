"""`edgekit doctor`: what this machine can do (backends and versions, CUDA and GPU, DLA cores,
JetPack/L4T release, OpenCV's video back-ends) and what to install for what is missing. Runtime side:
every probe is lazy and a failing probe becomes a line of the report, never a crash."""

import importlib
import importlib.util
import platform
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

from edgekit import __version__
from edgekit.runtime import backends
from edgekit.runtime.text import printable

SCHEMA = "edgekit.doctor/1"


@dataclass
class Check:
    area: str
    name: str
    ok: bool
    detail: str
    fix: str = ""  # what to install or do where it is missing


def _version(module: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return None


class ProbeFailed(Exception):
    pass


def _probe(fn: Callable[[], Any]) -> Any:
    """fn()'s value, or a ProbeFailed with the first line of whatever it raised."""
    try:
        return fn()
    except Exception as e:  # a probe of optional hardware or software must never stop the report
        return ProbeFailed(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def opencv_video_backends() -> Dict[str, bool]:
    """OpenCV's video I/O back-ends as built (FFMPEG, GStreamer, v4l/v4l2, ...): name -> built in."""
    import cv2

    info = cv2.getBuildInformation()
    section = info.split("Video I/O:", 1)[1] if "Video I/O:" in info else ""
    found: Dict[str, bool] = {}
    for line in section.splitlines()[1:]:
        if line.strip() and not line.startswith("    "):
            break  # the next section
        m = re.match(r"^    (\S[^:]*):\s+(YES|NO)\b", line)
        if m:
            found[m.group(1).strip()] = m.group(2) == "YES"
    return found


def checks() -> List[Check]:
    from edgekit.runtime.jetson import tegra

    out: List[Check] = []
    release = _probe(tegra.read_l4t_release)
    jetson = isinstance(release, tegra.L4TRelease)
    out.append(Check("system", "edgekit", True, f"{__version__} on Python {platform.python_version()} "
                                               f"({platform.machine()}, {platform.system()})"))
    if jetson:
        out.append(Check("system", "Jetson", True, str(release)))
        mode = _probe(tegra.power_mode)
        clocks = _probe(tegra.jetson_clocks_state)
        mode_text = f"{mode['mode']} (id {mode['id']})" if isinstance(mode, dict) else "unknown (needs nvpmodel)"
        out.append(Check("system", "power mode", isinstance(mode, dict),
                         f"nvpmodel {mode_text}, jetson_clocks {clocks if isinstance(clocks, str) else 'unknown'}",
                         "" if isinstance(mode, dict) else "run as a user allowed to call nvpmodel -q"))
        out.append(Check("system", "tegrastats", tegra.TegrastatsSampler.available(),
                         "present: power and temperatures are recorded" if tegra.TegrastatsSampler.available()
                         else "not found", "tegrastats ships with L4T (nvidia-l4t-tools)"))
    else:
        out.append(Check("system", "Jetson", False, "not a Jetson (no /etc/nv_tegra_release)", ""))

    import cv2
    import numpy

    out.append(Check("python", "numpy", True, numpy.__version__))
    video = _probe(opencv_video_backends)
    out.append(Check("python", "opencv", True, cv2.__version__))
    out.append(Check("python", "faster-coco-eval", bool(_version("faster-coco-eval")),
                     _version("faster-coco-eval") or "not installed",
                     "" if _version("faster-coco-eval") else "pip install 'edgekit[eval]' (mAP in edgekit eval)"))
    if isinstance(video, dict):
        gst_fix = ("use the system OpenCV built with GStreamer (JetPack's python3-opencv; jetson/setup.sh sets it up)"
                   if jetson else "pip wheels of OpenCV come without GStreamer; build OpenCV with it for csi:// "
                                  "and GStreamer pipelines")
        for name, fix in (("FFMPEG", "pip install opencv-python-headless (its wheels include FFmpeg)"),
                          ("GStreamer", gst_fix), ("v4l/v4l2", "an OpenCV built with V4L2 (Linux) for /dev/videoN")):
            out.append(Check("video", f"OpenCV {name}", bool(video.get(name)),
                             "built in" if video.get(name) else "not built in", "" if video.get(name) else fix))

    jetpack_major = release.major if jetson else None
    for name, ok, why in _probe(lambda: backends.availability(backends.names())):
        fix = "" if ok else backends.backend_class(name).how_to_install(jetpack_major)
        out.append(Check("backends", name, ok, why, fix))

    out += cuda_binding_checks((release.major, release.minor) if jetson else None)
    out.append(_gpu_check())
    out.append(_dla_check(jetson))
    return out


def cuda_binding_checks(l4t: Optional[Tuple[int, int]], bindings: Optional[Sequence[Type[Any]]] = None,
                        versions: Optional[Dict[str, Optional[str]]] = None) -> List[Check]:
    """One line per CUDA binding the tensorrt backend can use (cuda-python, pycuda): its version and whether it
    works here, tried with a 1 KB copy to the device and back; where none works, what to install on this JetPack
    (`l4t`: (major, minor) of the L4T release, None off a Jetson). `bindings`/`versions`: for tests."""
    from edgekit.runtime.backends import cuda_mem

    tried = []
    for cls in bindings if bindings is not None else cuda_mem.BINDINGS:
        version = versions.get(cls.name) if versions is not None else cuda_mem.binding_version(cls.name)
        if version is None:
            tried.append((cls.name, None, None))
            continue
        result = _probe(lambda cls=cls: cuda_mem.self_test(cls()))
        tried.append((cls.name, version, result))
    working = [name for name, _, result in tried if isinstance(result, str)]
    advice = cuda_mem.install_advice(l4t)
    out = []
    for name, version, result in tried:
        problem = cuda_mem.known_problem(name, version, l4t)
        instead = f"; {working[0]} is used" if working and name not in working else ""
        if version is None:
            out.append(Check("cuda", name, False, f"not installed{instead}", "" if working else advice))
        elif isinstance(result, str):
            out.append(Check("cuda", name, True, f"{version}: works ({result})"))
        else:
            out.append(Check("cuda", name, False, f"{version}: installed, but fails here: {result}"
                             + (f" ({problem})" if problem else "") + instead, advice))
    return out


def _gpu_check() -> Check:
    from edgekit.runtime.backends.cuda_mem import open_cuda

    cuda = _probe(open_cuda)
    if not isinstance(cuda, ProbeFailed):
        name, cc = cuda.device_info()
        return Check("cuda", "GPU", True, f"{name} (compute capability {cc}) via {cuda.name}")
    if importlib.util.find_spec("torch") is not None:
        torch = importlib.import_module("torch")
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            return Check("cuda", "GPU", True, f"{p.name} (compute capability {p.major}.{p.minor}) via torch "
                                              f"(CUDA {torch.version.cuda})")
    smi = shutil.which("nvidia-smi")
    detail = "no GPU visible" + (" to the installed bindings (nvidia-smi is present)" if smi else "")
    return Check("cuda", "GPU", False, detail, "" if smi else "an NVIDIA GPU with its driver (or a Jetson)")


def _dla_check(jetson: bool) -> Check:
    builders = [backends.backend_class(n) for n in backends.names()]
    with_dla = [b for b in builders if b.capabilities.dla]
    usable = [b for b in with_dla if b.available()[0]]
    if not usable:
        needs = " or ".join(b.label for b in with_dla) or "a backend with DLA support"
        return Check("cuda", "DLA", False, f"unknown ({needs} and a GPU are needed to count DLA cores)",
                     "AGX Orin and Orin NX have 2 DLA cores; Orin Nano has none" if jetson else "")
    n = _probe(usable[0].dla_cores)
    if isinstance(n, ProbeFailed):
        return Check("cuda", "DLA", False, f"cannot count DLA cores: {n}")
    return Check("cuda", "DLA", n > 0, f"{n} DLA core{'s' if n != 1 else ''}" + (" (build with --dla-core N)"
                                                                                 if n else ""))


def report() -> Dict[str, Any]:
    from edgekit.runtime.manifest import host_environment

    return {"schema": SCHEMA, "environment": host_environment().to_dict(), "checks": [asdict(c) for c in checks()]}


def text(r: Dict[str, Any]) -> str:
    lines = [f"edgekit doctor: {r['environment']['cpu']}, {r['environment']['cpu_threads']} threads, "
             f"{r['environment']['os']}"]
    area = ""
    for c in r["checks"]:
        if c["area"] != area:
            area = c["area"]
            lines.append(f"\n{area}:")
        mark = "ok  " if c["ok"] else "--  "
        lines.append(f"  {mark}{c['name']:<18} {c['detail']}")
        if c["fix"]:
            lines.append(f"      {'':<18} to get it: {c['fix']}")
    # Probe results quote other programs and plugins (CPU model, GPU name, error text): shown inert.
    return printable("\n".join(lines) + "\n", multiline=True)


def main(as_json: bool = False) -> int:
    r = report()
    if as_json:
        import json

        sys.stdout.write(json.dumps(r, indent=2) + "\n")
    else:
        sys.stdout.write(text(r))
    return 0
