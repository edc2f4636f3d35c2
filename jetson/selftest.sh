#!/bin/bash
# On-device self-test: proves the GPU path on this Jetson and writes ONE report file to send back. It
# prints, first, where that file will be and what it answers. It runs the device checks (below), edgekit
# doctor, the GPU/TensorRT/Jetson-marked tests, then for both shipped models: TensorRT FP16 and INT8 engines
# (and on each DLA core where present), edgekit profile, edgekit eval on synthetic test images and a short
# edgekit run-stream, each step's output and status in the report.
#
#   jetson/selftest.sh [--onnx-dir DIR] [--out DIR] [--quick] [--rtsp URL] [--checks-only]
#
# --rtsp URL      the camera stream for the RTSP check (default: a local test stream, where GStreamer's RTSP
#                 server is installed: python3-gi gir1.2-gst-rtsp-server-1.0)
# --checks-only   only the device checks (a minute or two): no export, tests or engine builds
# Exporting needs PyTorch. Where the device has none, export on a PC first and pass the folder:
#   edgekit export models/detector/edgenet-det-s.safetensors -o DIR/edgenet-det-s.onnx
#   edgekit export models/segmenter/edgenet-seg-s.safetensors -o DIR/edgenet-seg-s.onnx
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$repo/.venv-jetson/bin/python" ]; then py="$repo/.venv-jetson/bin/python"; else py=python3; fi
fi
out="$repo/runs/selftest"
onnx_dir=""
rtsp_arg=""
checks_only=0
duration=10
frames=300

die() { echo "selftest.sh: error: $1" >&2; exit "${2:-2}"; }
need_value() { [ "$2" -ge 2 ] && [ -n "$3" ] || die "$1 needs a value (see --help)"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --onnx-dir) need_value "$1" $# "${2:-}"; onnx_dir=$2; shift 2 ;;
        --out) need_value "$1" $# "${2:-}"; out=$2; shift 2 ;;
        --rtsp) need_value "$1" $# "${2:-}"; rtsp_arg=$2; shift 2 ;;
        --quick) duration=2; frames=60; shift ;;
        --checks-only) checks_only=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
case "$rtsp_arg" in ""|rtsp://*|rtsps://*) ;; *) die "--rtsp needs an rtsp:// URL, not '$rtsp_arg'" ;; esac
[ -z "$onnx_dir" ] || [ -d "$onnx_dir" ] || die "--onnx-dir $onnx_dir: no such folder"
command -v "$py" >/dev/null 2>&1 || [ -x "$py" ] || die "python not found: $py (set PYTHON, or run jetson/setup.sh first)" 1
mkdir -p "$out" || die "cannot create $out" 1
out=$(cd "$out" && pwd)
report="$out/selftest-$(hostname)-$(date +%Y%m%d-%H%M%S).md"
work="$out/work"
mkdir -p "$work" || die "cannot create $work" 1

# What the maintainers need back, before anything else runs (a first device run may be cut short: the report is
# written as it goes).
cat <<EOF
selftest: report file: $report
selftest: send back that one file, as it is (attach it to the issue or mail it): nothing else is needed.
selftest: it answers, from this device:
selftest:   1. NumPy < 2 in the venv, with JetPack's cv2 importable
selftest:   2. pip and setuptools versions in the venv
selftest:   3. an rtsp:// stream opened through GStreamer, with nvv4l2decoder where present
selftest:   4. the TensorRT version, and whether INT8 engines are built from the Q/DQ ONNX
selftest:   5. CUDA context use (cuda-python, pycuda) from a worker thread
selftest:   6. DLA layer placement with --dla-core, where the device has DLA
selftest: what cannot be checked here says "not checked: WHY".
EOF

failures=0
not_checked=0
summary=""

# step NAME COMMAND...: runs it, appends its output and status to the report.
step() {
    local name=$1; shift
    local t0 rc log
    t0=$(date +%s)
    log=$("$@" 2>&1)
    rc=$?
    {
        echo "## $name"
        echo
        echo "\`$*\` — exit $rc, $(( $(date +%s) - t0 )) s"
        echo
        echo '```'
        echo "$log" | tail -n 80
        echo '```'
        echo
    } >>"$report"
    if [ $rc = 0 ]; then summary="$summary| $name | ok |"$'\n'; else summary="$summary| $name | FAILED ($rc) |"$'\n'; failures=$((failures + 1)); fi
    echo "selftest: $name: $([ $rc = 0 ] && echo ok || echo "FAILED ($rc)")"
    return $rc
}

# check NAME ITEM [ARGS...]: one device check (the Python below); its last line says "ok: ...", "FAILED: ..." or
# "not checked: WHY". All of its output goes into the report.
check() {
    local name=$1; shift
    local t0 rc log result
    t0=$(date +%s)
    log=$("$py" "$checks" "$@" 2>&1)
    rc=$?
    result=$(printf '%s\n' "$log" | tail -n 1)
    case "$result" in
        "ok: "*|"FAILED: "*|"not checked: "*) ;;
        *) result="FAILED: the check stopped (exit $rc): $result" ;;
    esac
    {
        echo "## check: $name"
        echo
        echo "$(( $(date +%s) - t0 )) s"
        echo
        echo '```'
        printf '%s\n' "$log" | tail -n 60
        echo '```'
        echo
        echo "**$result**"
        echo
    } >>"$report"
    summary="$summary| check: $name | ${result//|//} |"$'\n'
    case "$result" in
        FAILED:*) failures=$((failures + 1)) ;;
        "not checked:"*) not_checked=$((not_checked + 1)) ;;
    esac
    echo "selftest: check $name: $result"
}

ek() { "$py" -m edgekit "$@"; }

checks="$work/device_checks.py"
cat >"$checks" <<'PY'
"""jetson/selftest.sh's device checks: `python device_checks.py ITEM [ARGS]`. The last line printed is the result:
"ok: ...", "FAILED: ..." or "not checked: WHY". Python 3.8 (JetPack 5) and later."""
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time


def result(kind, text):
    print(f"{kind}: {text}", flush=True)
    sys.stdout.flush()
    os._exit(0)  # nothing left to wait for (a hung capture thread must not keep the process)


def first_line(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1]}" if text else type(e).__name__


def on_jetson():
    return os.path.exists("/etc/nv_tegra_release") or os.path.isdir("/usr/lib/aarch64-linux-gnu/tegra")


def version_tuple(v):
    return tuple(int(x) for x in re.findall(r"\d+", v or "")[:2]) or (0,)


def gstreamer_in_cv2(cv2):
    return bool(re.search(r"^\s*GStreamer:\s*YES", cv2.getBuildInformation(), re.MULTILINE))


def import_tensorrt():
    try:
        import tensorrt
    except Exception as e:  # ImportError, or a library TensorRT needs is missing
        result("not checked", f"TensorRT is not importable here ({first_line(e)})")
    if not hasattr(tensorrt, "Builder"):  # e.g. the tensorrt-stubs package: type stubs, no bindings
        result("not checked", f"the `tensorrt` at {list(getattr(tensorrt, '__path__', []))} is not TensorRT's Python "
                              "bindings (no Builder)")
    return tensorrt


def numpy_cv2(args):
    import numpy

    nv = numpy.__version__
    print(f"python {platform.python_version()} at {sys.executable} (venv: {sys.prefix != sys.base_prefix})")
    print(f"numpy {nv} from {os.path.dirname(numpy.__file__)}")
    try:
        import cv2
    except Exception as e:
        if on_jetson():
            result("FAILED", f"cv2 does not import with NumPy {nv} ({first_line(e)}): JetPack's OpenCV needs "
                             "numpy<2: pip install 'numpy<2' in the venv (jetson/setup.sh pins it)")
        result("not checked", f"not a Jetson, and cv2 does not import here ({first_line(e)})")
    where = os.path.dirname(os.path.realpath(cv2.__file__))
    gst = gstreamer_in_cv2(cv2)
    print(f"cv2 {cv2.__version__} from {where}; GStreamer {'built in' if gst else 'not built in'}")
    from_venv = sys.prefix != sys.base_prefix and where.startswith(os.path.realpath(sys.prefix) + os.sep)
    if not on_jetson():
        result("not checked", f"not a Jetson: this checks JetPack's OpenCV (here NumPy {nv}, cv2 {cv2.__version__} "
                              f"from {where})")
    if version_tuple(nv) >= (2,):
        result("FAILED", f"NumPy {nv} here: JetPack's OpenCV is built against NumPy 1.x: pip install 'numpy<2'")
    if from_venv:
        result("FAILED", f"cv2 {cv2.__version__} is a pip OpenCV inside {sys.prefix} and hides JetPack's: "
                         "pip uninstall opencv-python opencv-python-headless")
    if not gst:
        result("FAILED", f"cv2 {cv2.__version__} from {where} has no GStreamer (csi:// and the RTSP pipeline need it)")
    result("ok", f"NumPy {nv} (< 2) with JetPack's cv2 {cv2.__version__} from {where}, GStreamer built in")


def pip_versions(args):
    from importlib import metadata

    def ver(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    pip_v, st_v, wheel_v = ver("pip"), ver("setuptools"), ver("wheel")
    print(f"python {platform.python_version()} at {sys.executable} (venv: {sys.prefix != sys.base_prefix})")
    print(f"pip {pip_v}, setuptools {st_v}, wheel {wheel_v or 'not installed'}")
    try:
        dist = metadata.distribution("edgekit")
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        editable = bool(direct.get("dir_info", {}).get("editable"))
        print(f"edgekit {dist.version} installed{' in editable mode' if editable else ''} ({direct.get('url', '')})")
    except metadata.PackageNotFoundError:
        print("edgekit is not installed in this environment (run from the checkout?)")
    conf = os.path.join(sys.prefix, "pip.conf")
    if os.path.isfile(conf):
        with open(conf, encoding="utf-8") as f:
            print(f"{conf}: " + " | ".join(ln.strip() for ln in f if ln.strip() and not ln.startswith("#")))
    problems = []
    if version_tuple(pip_v) < (21, 3):
        problems.append(f"pip {pip_v} < 21.3")
    if version_tuple(st_v) < (64,):
        problems.append(f"setuptools {st_v} < 64")
    if problems:
        result("FAILED", f"{', '.join(problems)}: too old to install edgekit in editable mode; jetson/setup.sh "
                         "upgrades them")
    result("ok", f"pip {pip_v}, setuptools {st_v} on Python {platform.python_version()}")


def has_gstreamer(args):
    import cv2

    sys.exit(0 if gstreamer_in_cv2(cv2) else 1)


def gst_element(name):
    """True/False where GStreamer can tell whether the element exists, None where it cannot be asked."""
    if shutil.which("gst-inspect-1.0"):
        try:
            return subprocess.run(["gst-inspect-1.0", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  timeout=120).returncode == 0
        except subprocess.TimeoutExpired:
            return None
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst

        Gst.init(None)
        return Gst.ElementFactory.find(name) is not None
    except Exception:
        return None


def grab(pipeline, want=30, timeout=15.0):
    import cv2

    box = {"opened": False, "frames": 0, "first_s": None, "shape": None}

    def work():
        t0 = time.monotonic()
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        box["opened"] = cap.isOpened()
        while box["opened"] and box["frames"] < want:
            ok, frame = cap.read()
            if not ok:
                break
            if box["first_s"] is None:
                box["first_s"], box["shape"] = time.monotonic() - t0, frame.shape
            box["frames"] += 1
        cap.release()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    box["hung"] = t.is_alive()
    return box


def rtsp(args):
    import cv2

    url, why = (args + ["", ""])[:2]
    if not gstreamer_in_cv2(cv2):
        result("not checked", f"cv2 {cv2.__version__} from {os.path.dirname(cv2.__file__)} has no GStreamer")
    if not url:
        result("not checked", why or "no RTSP stream to open")
    hw = gst_element("nvv4l2decoder")
    print(f"nvv4l2decoder: {'present' if hw else 'absent' if hw is False else 'unknown (no gst-inspect-1.0, no gi)'}")
    tails = []
    if hw is not False:
        tails.append(("nvv4l2decoder", "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert"))
    tails.append(("software", "{dec} ! videoconvert"))
    outcome = {}
    for decoder, tail in tails:
        for codec in ("h264", "h265"):
            dec = tail.format(dec=f"avdec_{codec}")
            pipeline = (f'rtspsrc location="{url}" latency=200 protocols=tcp ! rtp{codec}depay ! {codec}parse ! '
                        f"{dec} ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")
            box = grab(pipeline)
            print(f"{decoder} {codec}: opened {box['opened']}, {box['frames']} frames"
                  + (f", first after {box['first_s']:.1f} s, {box['shape']}" if box["frames"] else "")
                  + (" (still waiting after 15 s)" if box["hung"] else "") + f"\n  pipeline: {pipeline}")
            if box["frames"]:
                outcome[decoder] = f"{codec}, {box['frames']} frames of {box['shape'][1]}x{box['shape'][0]}"
                break
        if decoder == "nvv4l2decoder" and decoder in outcome:
            break
    if hw and "nvv4l2decoder" in outcome:
        result("ok", f"{url} through GStreamer with nvv4l2decoder (hardware): {outcome['nvv4l2decoder']}")
    if hw:
        soft = outcome.get("software")
        result("FAILED", f"{url}: no frames through nvv4l2decoder"
                         + (f" (software decode works: {soft})" if soft else " nor through software decode"))
    if "nvv4l2decoder" in outcome:
        result("ok", f"{url} through GStreamer with nvv4l2decoder: {outcome['nvv4l2decoder']}")
    if "software" in outcome:
        result("ok", f"{url} through GStreamer, software decode ({outcome['software']}): nvv4l2decoder "
                     f"{'absent' if hw is False else 'could not be used'}")
    result("FAILED", f"{url}: no frames through GStreamer (h264 or h265)")


def tensorrt_path(args):
    trt = import_tensorrt()
    flags = trt.NetworkDefinitionCreationFlag
    pre9 = not hasattr(flags, "STRONGLY_TYPED")
    print(f"TensorRT {trt.__version__} from {os.path.dirname(trt.__file__)}; strongly typed networks: {not pre9}; "
          f"BuilderFlag.INT8: {hasattr(trt.BuilderFlag, 'INT8')}; implicit calibrator: "
          f"{hasattr(trt, 'IInt8EntropyCalibrator2')}")
    if args[:1] == ["--none"]:
        result("not checked", f"TensorRT {trt.__version__}; the INT8 path: {args[1]}")
    seen, unexpected = [], []
    for m in args:
        if not os.path.isfile(m):
            print(f"{m}: missing (its build failed or did not run)")
            continue
        with open(m, encoding="utf-8") as f:
            d = json.load(f)
        backend = d.get("backend", {})
        flags_used = backend.get("builder_flags") or []
        implicit = "implicit-calibration" in flags_used or bool(backend.get("calibration_cache"))
        name = os.path.basename(m)[: -len(".manifest.json")]
        print(f"{name}: built with TensorRT {backend.get('version')}, builder flags {flags_used}; INT8 from "
              f"{'implicit calibration (calibration cache)' if implicit else 'the Q/DQ ONNX (explicit quantization)'}"
              f"; the manifest says the engine file is: {(d.get('int8') or {}).get('engine_file_is')!r}")
        seen.append((name, implicit))
        if implicit and not pre9 and backend.get("dla_core") is None:
            unexpected.append(name)
    if not seen:
        result("not checked", f"TensorRT {trt.__version__}; no INT8 GPU engine was built (see the build steps)")
    if unexpected:
        result("FAILED", f"TensorRT {trt.__version__} has the Q/DQ path, yet {', '.join(unexpected)} calibrated "
                         "implicitly")
    kinds = {implicit for _, implicit in seen}
    how = "implicit calibration" if kinds == {True} else "the Q/DQ ONNX" if kinds == {False} else "both paths"
    result("ok", f"TensorRT {trt.__version__}: INT8 GPU engines built from {how}"
                 + (" (TensorRT 8.x: edgekit calibrates implicitly there)" if pre9 else ""))


def in_thread(fn, timeout=120.0):
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = first_line(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        box["error"] = f"no answer after {timeout:.0f} s"
    return box


def worker_one(args):
    """One binding, in its own process: the engine opened in one thread and run in another."""
    binding, engine = args
    import numpy as np

    import edgekit.runtime.backends.tensorrt as trt_backend
    from edgekit.runtime.backends import cuda_mem
    from edgekit.runtime.opening import open_engine

    trt_backend.open_cuda = lambda prefer=None: cuda_mem.open_cuda(prefer=binding)

    def sample(opened):
        spec = opened.backend.inputs[0]
        return np.zeros(tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape), dtype=spec.dtype)

    problems = []
    try:
        opened = open_engine(engine, pipelined=True)
        x = sample(opened)
        opened.infer(x)
        used = getattr(getattr(opened.backend, "cuda", None), "name", "?")
        print(f"{binding}: engine opened and run in the main thread (the engine's CUDA binding: {used})")
        if used != binding:
            print(f"RESULT {binding}: could not make edgekit use {binding} (it used {used})", flush=True)
            os._exit(0)
        box = in_thread(lambda: opened.infer(x))
        print(f"{binding}: opened in the main thread, run in a worker thread: {box.get('error') or 'ok'}")
        if "error" in box:
            problems.append(f"main -> worker: {box['error']}")
    except Exception as e:
        print(f"{binding}: opening or running in the main thread failed: {first_line(e)}")
        problems.append(f"main thread: {first_line(e)}")
    holder = {}
    box = in_thread(lambda: holder.setdefault("opened", open_engine(engine, pipelined=True)).infer(
        sample(holder["opened"])))
    print(f"{binding}: opened and run in worker thread A: {box.get('error') or 'ok'}")
    if "error" in box:
        problems.append(f"worker A: {box['error']}")
    elif "opened" in holder:
        box = in_thread(lambda: holder["opened"].infer(sample(holder["opened"])))
        print(f"{binding}: then run in worker thread B: {box.get('error') or 'ok'}")
        if "error" in box:
            problems.append(f"worker A -> worker B: {box['error']}")
    print(f"RESULT {binding}: " + ("; ".join(problems) if problems else "ok"), flush=True)
    os._exit(0)


def worker_thread(args):
    import_tensorrt()
    if args[:1] == ["--none"]:
        result("not checked", args[1])
    from importlib.util import find_spec

    engine = args[0]
    bindings = [name for name, module in (("cuda-python", "cuda"), ("pycuda", "pycuda")) if find_spec(module)]
    if not bindings:
        result("not checked", "neither cuda-python nor pycuda is installed")
    failed = []
    for binding in bindings:
        try:
            done = subprocess.run([sys.executable, __file__, "worker-one", binding, engine], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
            text = done.stdout
        except subprocess.TimeoutExpired:
            text = f"RESULT {binding}: no answer after 600 s"
        print(text.rstrip())
        line = next((ln for ln in text.splitlines() if ln.startswith(f"RESULT {binding}: ")), None)
        if line != f"RESULT {binding}: ok":
            failed.append(f"{binding} ({line[len('RESULT '):] if line else 'crashed'})")
    if failed:
        result("FAILED", "engine use from a worker thread: " + "; ".join(failed))
    result("ok", f"{' and '.join(bindings)}: engines opened in one thread run in another")


def dla(args):
    trt = import_tensorrt()

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines = []

        def log(self, severity, msg):
            self.lines.append(str(msg))

    log = Log()
    builder = trt.Builder(log)
    cores = builder.num_DLA_cores
    print(f"TensorRT {trt.__version__}: {cores} DLA core(s)")
    if cores == 0:
        result("not checked", "this device has no DLA cores (Orin Nano and desktop GPUs have none)")
    if args[:1] == ["--none"]:
        result("not checked", args[1])
    onnx, manifests = args[0], args[1:]
    for m in manifests:
        if os.path.isfile(m):
            with open(m, encoding="utf-8") as f:
                d = json.load(f)
            print(f"{os.path.basename(m)}: dla_core {d.get('backend', {}).get('dla_core')}, builder flags "
                  f"{d.get('backend', {}).get('builder_flags')}, placement recorded: {d.get('placement', 'no')}")
    fp16 = getattr(trt.BuilderFlag, "FP16", None)
    if fp16 is None:
        result("not checked", f"TensorRT {trt.__version__} has no FP16 builder flag, which a DLA build needs")
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(onnx):
        result("FAILED", f"{onnx}: TensorRT cannot parse it: "
                         + " | ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    config.set_flag(fp16)
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = 0
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    not_dla = [layer.name for layer in layers if not config.can_run_on_DLA(layer)]
    print(f"{os.path.basename(onnx)}: {len(layers)} layers, {len(not_dla)} of them cannot run on DLA: {not_dla[:30]}")
    t0 = time.monotonic()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        errors = [ln for ln in log.lines if "error" in ln.lower()][-5:]
        result("FAILED", f"DLA core 0 FP16 build of {os.path.basename(onnx)} failed: {' | '.join(errors)}")
    print(f"built for DLA core 0 (FP16, GPU fallback) in {time.monotonic() - t0:.0f} s")
    on_dla = [ln for ln in log.lines if re.search(r"\[DlaLayer\]", ln)]
    on_gpu = [ln for ln in log.lines if re.search(r"\[GpuLayer\]", ln)]
    print(f"TensorRT's log, on DLA ({len(on_dla)}):\n  " + "\n  ".join(on_dla[:30]))
    print(f"TensorRT's log, on GPU ({len(on_gpu)}):\n  " + "\n  ".join(on_gpu[:30]))
    if not on_dla and not on_gpu:
        around = [ln for ln in log.lines if "DLA" in ln][:20]
        print("log lines naming DLA:\n  " + "\n  ".join(around))
        result("not checked", "TensorRT's build log has no [DlaLayer]/[GpuLayer] lines to read the placement from "
                              f"({len(layers) - len(not_dla)} of {len(layers)} layers can run on DLA)")
    if not on_dla:
        result("FAILED", f"nothing of {os.path.basename(onnx)} runs on DLA core 0: all {len(on_gpu)} layers on GPU")
    result("ok", f"DLA core 0: {len(on_dla)} DLA subgraph(s), {len(on_gpu)} layer(s) on the GPU "
                 f"({len(not_dla)} of {len(layers)} layers cannot run on DLA)")


ITEMS = {"numpy-cv2": numpy_cv2, "pip": pip_versions, "has-gstreamer": has_gstreamer, "rtsp": rtsp,
         "tensorrt": tensorrt_path, "worker-one": worker_one, "worker-thread": worker_thread, "dla": dla}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ITEMS:
        result("FAILED", f"unknown check {sys.argv[1:2]}; one of {', '.join(ITEMS)}")
    ITEMS[sys.argv[1]](sys.argv[2:])
PY

# A local RTSP test stream where GStreamer's RTSP server and an H.264 encoder are installed (system Python's gi).
rtsp_server_pid=""
stop_rtsp_server() { [ -z "$rtsp_server_pid" ] || kill "$rtsp_server_pid" 2>/dev/null; }
trap stop_rtsp_server EXIT
start_rtsp_server() {  # sets rtsp_url, or rtsp_why where no local test stream can be served
    local sys_py=/usr/bin/python3 server="$work/rtsp_test_server.py" log="$work/rtsp_test_server.log" i
    if ! [ -x "$sys_py" ] || ! "$sys_py" -c 'import gi; gi.require_version("GstRtspServer", "1.0")' 2>/dev/null; then
        rtsp_why="no --rtsp URL given, and no local RTSP test server (needs python3-gi gir1.2-gst-rtsp-server-1.0): pass --rtsp rtsp://CAMERA"
        return 1
    fi
    cat >"$server" <<'PY'
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
encoders = (("x264enc", "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15"),
            ("nvv4l2h264enc", "nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc insert-sps-pps=true "
                              "idrinterval=15 ! h264parse"))
chain = next((c for name, c in encoders if Gst.ElementFactory.find(name)), None)
if chain is None:
    print("no H.264 encoder for the local test stream (x264enc: gstreamer1.0-plugins-ugly; or nvv4l2h264enc)")
    sys.exit(3)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service("0")
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width=640,height=480,framerate=30/1 ! "
                   f"{chain} ! rtph264pay name=pay0 pt=96 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/test", factory)
server.attach(None)
print(f"ready rtsp://127.0.0.1:{server.get_bound_port()}/test", flush=True)
GLib.MainLoop().run()
PY
    "$sys_py" "$server" >"$log" 2>&1 &
    rtsp_server_pid=$!
    for i in $(seq 50); do
        rtsp_url=$(sed -n 's/^ready //p' "$log")
        [ -n "$rtsp_url" ] && return 0
        kill -0 "$rtsp_server_pid" 2>/dev/null || break
        [ "$i" = 50 ] || sleep 0.2
    done
    rtsp_why="the local RTSP test server did not start: $(tail -n 1 "$log")"
    return 1
}

release_line=$(head -n1 /etc/nv_tegra_release 2>/dev/null)
{
    echo "# edgekit self-test on $(hostname)"
    echo
    echo "- date: $(date -Iseconds)"
    echo "- release: ${release_line:-$([ -e /etc/nv_tegra_release ] && echo '/etc/nv_tegra_release is empty (a container?)' || echo 'not a Jetson')}"
    echo "- python: $($py --version 2>&1), edgekit at $repo ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
    echo "- arguments: ${*:-none}"
    echo
} >"$report"

# --- device checks that need no engine -----------------------------------------------------------------
check "NumPy and JetPack's cv2" numpy-cv2
check "pip and setuptools" pip
rtsp_url=$rtsp_arg
rtsp_why=""
if [ -z "$rtsp_url" ]; then
    if "$py" "$checks" has-gstreamer >/dev/null 2>&1; then
        start_rtsp_server
    else
        rtsp_why="this OpenCV has no GStreamer"
    fi
fi
check "rtsp:// through GStreamer" rtsp "$rtsp_url" "$rtsp_why"

det_onnx="$work/edgenet-det-s.onnx"
if [ "$checks_only" = 1 ]; then
    check "TensorRT and the INT8 path" tensorrt --none "--checks-only: no engines were built"
    check "CUDA context from a worker thread" worker-thread --none "--checks-only: no engine was built"
    if [ -n "$onnx_dir" ] && [ -f "$onnx_dir/edgenet-det-s.onnx" ]; then
        check "DLA layer placement" dla "$onnx_dir/edgenet-det-s.onnx"
    else
        check "DLA layer placement" dla --none "--checks-only without --onnx-dir: no ONNX to build for DLA"
    fi
else
    step "doctor" ek doctor
    step "power mode" "$repo/jetson/power.sh" show
    step "synthetic test images" ek data synth "$work/data" --train 0 --val 0 --test 100 --videos 0 --overwrite -q
    for model in detector/edgenet-det-s segmenter/edgenet-seg-s; do
        name=${model#*/}
        if [ -n "$onnx_dir" ]; then
            step "$name: ONNX from $onnx_dir" cp "$onnx_dir/$name.onnx" "$work/$name.onnx"
        else
            step "$name: export" ek export "$repo/models/$model.safetensors" -o "$work/$name.onnx"
        fi
    done
    # The tests build engines of the same ONNX files (they export themselves only where PyTorch is installed).
    step "GPU, TensorRT and Jetson tests" env EDGEKIT_ONNX_DIR="$work" "$py" -m pytest -q -rs -m "gpu or tensorrt or jetson" "$repo/tests/gpu"

    dla=$("$py" -c 'from edgekit.runtime.backends.tensorrt import TensorRTBackend as T; print(T.dla_cores())' 2>/dev/null || echo 0)
    for model in detector/edgenet-det-s segmenter/edgenet-seg-s; do
        name=${model#*/}
        onnx="$work/$name.onnx"
        [ -f "$onnx" ] || continue
        variants="fp16:gpu int8:gpu"
        for core in $(seq 0 $((dla - 1))); do variants="$variants fp16:dla$core int8:dla$core"; done
        for v in $variants; do
            precision=${v%%:*}; device=${v#*:}
            engine="$work/$name.$precision.$device.plan"
            rm -f "$engine" "$engine.manifest.json"  # a report speaks of this run's engines only
            args=(build-engine "$onnx" -o "$engine" --backend tensorrt --precision "$precision")
            [ "$precision" = int8 ] && args+=(--calib "$repo/calibration/synth" --calib-size 32)
            [ "$device" != gpu ] && args+=(--dla-core "${device#dla}")
            step "$name $precision $device: build" ek "${args[@]}" || continue
            step "$name $precision $device: profile" ek profile "$engine" --duration "$duration" --out "$work/profile-$name-$precision-$device"
            step "$name $precision $device: eval" ek eval "$engine" "$work/data" --out "$work/eval-$name-$precision-$device"
            step "$name $precision $device: run-stream" ek run-stream "$engine" "synthetic://?size=640x480&fps=30" \
                --max-frames "$frames" --no-video -q --out "$work/stream-$name-$precision-$device"
        done
    done
    det_fp16="$work/edgenet-det-s.fp16.gpu.plan"
    if [ -n "$rtsp_url" ] && [ -f "$det_fp16" ]; then
        # edgekit's own rtsp:// opening (OpenCV's FFmpeg with JetPack's FFmpeg 4.x), beside the GStreamer check.
        step "edgenet-det-s fp16 gpu: run-stream on rtsp://" ek run-stream "$det_fp16" "$rtsp_url" --max-frames 60 \
            --no-video -q --out "$work/stream-rtsp"
    fi

    # --- device checks on this run's engines ------------------------------------------------------------
    int8_manifests=()
    for name in edgenet-det-s edgenet-seg-s; do
        [ -f "$work/$name.int8.gpu.plan.manifest.json" ] && int8_manifests+=("$work/$name.int8.gpu.plan.manifest.json")
    done
    if [ "${#int8_manifests[@]}" -gt 0 ]; then
        check "TensorRT and the INT8 path" tensorrt "${int8_manifests[@]}"
    else
        check "TensorRT and the INT8 path" tensorrt --none "no INT8 GPU engine was built (see the build steps)"
    fi
    if [ -f "$det_fp16" ]; then
        check "CUDA context from a worker thread" worker-thread "$det_fp16"
    else
        check "CUDA context from a worker thread" worker-thread --none "the FP16 GPU engine of edgenet-det-s was not built (see its build step)"
    fi
    if [ -f "$det_onnx" ]; then
        check "DLA layer placement" dla "$det_onnx" "$work"/edgenet-det-s.*.dla*.plan.manifest.json
    else
        check "DLA layer placement" dla --none "no ONNX of edgenet-det-s (see its export step)"
    fi
fi

{
    echo "## Summary"
    echo
    echo "| step | result |"
    echo "|---|---|"
    echo -n "$summary"
} >>"$report"
echo "selftest: report: $report ($failures failed, $not_checked not checked): send this file back"
[ "$failures" = 0 ]
