#!/bin/bash
# Set up edgekit's runtime side on a Jetson (JetPack 5.1.x or 6.x): TensorRT's Python bindings from
# JetPack, cuda-python, OpenCV with GStreamer (JetPack's own build) and edgekit with ONNX Runtime and
# COCO mAP, in a virtual environment that sees the system's TensorRT and OpenCV. Safe to run again.
#
#   jetson/setup.sh [--venv DIR] [--yes] [--l4t RELEASE] [--detect-only] [--dry-run]
#
# --l4t RELEASE    the L4T release (r36.4.0, R35.4.1, 36.4) instead of /etc/nv_tegra_release, which is empty
#                  inside NVIDIA's l4t containers (jetson/Dockerfile passes its base image's tag)
# --detect-only    print the release and whether it is supported, then exit (0 supported, 3 not)
# --dry-run        print every command that would change this machine (apt, venv, pip) and run none of them
# EDGEKIT_NV_TEGRA_RELEASE names another release file (tests use recorded ones).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv-jetson"
assume_yes=0
detect_only=0
dry_run=0
l4t=""
l4t_given=0
release_file=${EDGEKIT_NV_TEGRA_RELEASE:-/etc/nv_tegra_release}

die() { echo "setup.sh: error: $1" >&2; exit "${2:-1}"; }
say() { echo "setup.sh: $*"; }
# quote WORD: the word as a shell reads it back, in single quotes where it needs quoting.
quote() {
    case "$1" in
        "") printf "''" ;;
        *[!A-Za-z0-9_./:=,+@%-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
        *) printf '%s' "$1" ;;
    esac
}
# run COMMAND...: runs it; with --dry-run prints it instead, quoted so that it can be pasted into a shell.
run() {
    if [ "$dry_run" = 1 ]; then
        local line="setup.sh: would run:" word
        for word in "$@"; do line="$line $(quote "$word")"; done
        printf '%s\n' "$line"
    else
        "$@"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --venv) [ $# -ge 2 ] && [ -n "$2" ] || die "--venv needs a folder" 2; venv=$2; shift 2 ;;
        --l4t) [ $# -ge 2 ] && [ -n "$2" ] || die "--l4t needs a release, e.g. --l4t r36.4.0" 2
               l4t=$2; l4t_given=1; shift 2 ;;
        --yes|-y) assume_yes=1; shift ;;
        --detect-only) detect_only=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" 2 ;;
    esac
done

# --- which release is this? (one parser: edgekit/runtime/jetson/tegra.py, standard library only) ---------------------
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3) || die "python3 not found"
if [ "$l4t_given" = 1 ]; then
    source_kind="tag"; source_value=$l4t
else
    [ -f "$release_file" ] || die "$release_file not found: this is not a Jetson (or L4T is not installed); in a container, give the release with --l4t" 3
    source_kind="file"; source_value=$release_file
fi
release=$(PYTHONPATH="$repo" "$python" - "$source_kind" "$source_value" <<'PY'
import re
import sys

from edgekit.runtime.jetson.tegra import L4TRelease, parse_nv_tegra_release

kind, value = sys.argv[1], sys.argv[2]
if kind == "tag":
    m = re.match(r"^[rR]?(\d+)\.(\d+)(?:\.(\d+))?$", value.strip())
    if not m:
        print(f"badtag: --l4t '{value}' is not an L4T release like r36.4.0 (an l4t image tag)")
        sys.exit(0)
    r = L4TRelease(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), "")
else:
    with open(value, encoding="utf-8", errors="replace") as f:
        text = f.read()
    if not text.strip():
        print("empty")
        sys.exit(0)
    try:
        r = parse_nv_tegra_release(text)
    except ValueError as e:
        print(f"unreadable: {e}")
        sys.exit(0)
print(f"ok {r.major} {r.minor} {r.patch} {r.jetpack or '?'}")
PY
)
case "$release" in
    badtag:*) die "${release#badtag: }" 2 ;;
    empty) die "$release_file is empty (as inside NVIDIA's l4t containers): give the release with --l4t, e.g. --l4t r36.4.0" 3 ;;
    unreadable:*) die "$release_file: ${release#unreadable: }" 3 ;;
    ok\ *) ;;
    *) die "could not read the L4T release: $release" 3 ;;
esac
read -r _ major minor patch jetpack <<<"$release"
version="R$major.$minor.$patch"
given=""
[ "$l4t_given" = 1 ] && given=" (given with --l4t)"

# JetPack 5.1 (L4T R35.2.1 and later R35) and JetPack 6 (R36): what TensorRT 8.5 and 8.6/10.3 ship with.
supported=0
family=""
if [ "$major" = 35 ] && { [ "$minor" -ge 3 ] || { [ "$minor" = 2 ] && [ "$patch" -ge 1 ]; }; }; then
    supported=1; family=5
elif [ "$major" = 36 ]; then
    supported=1; family=6
fi
if [ "$supported" = 1 ]; then
    say "L4T $version (JetPack $jetpack): supported$given"
else
    say "L4T $version (JetPack $jetpack): not supported$given"
fi
[ "$detect_only" = 1 ] && { [ "$supported" = 1 ] && exit 0 || exit 3; }
[ "$supported" = 1 ] || die "edgekit needs JetPack 5.1.x (L4T R35.2.1+) or 6.x (L4T R36); this is L4T $version. Flash a supported JetPack with SDK Manager." 3
[ "$dry_run" = 1 ] && say "dry run: printing what would be done, changing nothing"

# --- system packages from JetPack's apt repository -----------------------------------------------------
# TensorRT's Python bindings (8.5 for the system Python 3.8 on JetPack 5, 8.6/10.3 for 3.10 on JetPack 6),
# JetPack's OpenCV (libopencv-python: NVIDIA's build, with GStreamer, which csi:// needs), GStreamer's
# plugins and venv support.
packages="python3-libnvinfer libopencv-python python3-venv python3-pip gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
missing=()
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing from JetPack's apt repository: ${missing[*]}"
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    yes_flag=()
    [ "$assume_yes" = 1 ] && yes_flag=(-y)
    run ${sudo[@]+"${sudo[@]}"} apt-get update
    run ${sudo[@]+"${sudo[@]}"} apt-get install ${yes_flag[@]+"${yes_flag[@]}"} --no-install-recommends "${missing[@]}"
else
    say "system packages already installed"
fi

# --- the virtual environment: sees the system's TensorRT and OpenCV ------------------------------------
vpy="$venv/bin/python"
if [ ! -x "$vpy" ]; then
    say "creating $venv (with --system-site-packages, to see TensorRT and OpenCV from JetPack)"
    run "$python" -m venv --system-site-packages "$venv"
else
    say "reusing $venv"
fi
numpy_pin="numpy<2"
# Ubuntu 20.04's venv (JetPack 5) comes with pip 20.0 and setuptools 44: too old for an editable install of a
# pyproject-only package (pip 21.3 and setuptools 64 do it; from 70.1 setuptools builds wheels without the
# `wheel` package). On JetPack 5's Python 3.8 the last releases that install are pip 25.0.x and setuptools
# 75.3.x: named, because pip 20.0 takes the newest release from an index (a mirror, a wheel folder) that does not
# publish Requires-Python, and then fails.
if [ "$family" = 5 ]; then
    bootstrap=("pip>=21.3,<25.1" "setuptools>=70.1,<76")
else
    bootstrap=("pip>=21.3" "setuptools>=70.1")
fi
run "$vpy" -m pip install -q --upgrade "${bootstrap[@]}"
# JetPack's OpenCV is built against the system's NumPy 1.x (1.17 on JetPack 5, 1.21 on JetPack 6): NumPy 2 in
# the venv (onnxruntime and others allow it) makes `import cv2` fail. The pin is also the venv's pip constraint
# (VENV/pip.conf), so that a later `pip install` in this venv keeps it.
constraints="$venv/edgekit-constraints.txt"
run "$vpy" -c 'import sys; open(sys.argv[1], "w").write("\n".join(sys.argv[2:]) + "\n")' "$constraints" \
    "# jetson/setup.sh: JetPack's OpenCV (cv2) is built against NumPy 1.x" "$numpy_pin"
run "$vpy" -m pip config --site set global.constraint "$constraints"
# edgekit without its pip dependencies: opencv-python-headless from PyPI has no GStreamer and would hide
# JetPack's OpenCV. NumPy comes with JetPack's OpenCV; the rest of the runtime side is added explicitly.
# Built with the setuptools just installed (no isolated build environment to download).
run "$vpy" -m pip install -q --no-deps --no-build-isolation -e "$repo"
# One resolution for all of it, NumPy pinned with it: ONNX Runtime, COCO mAP, pytest (jetson/selftest.sh) and
# cuda-python for device memory (pycuda works too, but needs a source build): on JetPack 6 a release made for
# its CUDA (12.2 on R36.3, 12.6 on R36.4), below 12.9, whose aarch64 wheels carry a server-ARM (SBSA) CUDA
# runtime that fails on a Jetson (cudaErrorInsufficientDriver, NVlabs/FoundationStereo#209; `edgekit doctor`
# says which binding works); JetPack 5 has CUDA 11.4, whose last cuda-python is 11.8.x.
runtime=("$numpy_pin" "onnxruntime>=1.16" "faster-coco-eval>=1.6" "pytest>=7")
if [ "$family" = 6 ] && [ "$minor" -lt 4 ]; then
    runtime+=("cuda-python>=12.2,<12.3")
elif [ "$family" = 6 ]; then
    runtime+=("cuda-python>=12.6,<12.9")
else
    runtime+=("cuda-python>=11.4,<12")
fi
run "$vpy" -m pip install -q "${runtime[@]}"

# --- what works now -------------------------------------------------------------------------------------
if [ "$dry_run" = 1 ]; then
    say "would check that JetPack's OpenCV imports in the venv with GStreamer, then run: $venv/bin/edgekit doctor"
    say "dry run: nothing was changed"
    exit 0
fi
"$vpy" -c 'import cv2' ||
    die "JetPack's OpenCV does not import in $venv (NumPy $("$vpy" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || echo '?') there; it needs $numpy_pin): $vpy -m pip install '$numpy_pin'"
"$vpy" -c 'from edgekit.runtime.jetson.doctor import opencv_video_backends as v; import sys; sys.exit(not v().get("GStreamer"))' ||
    die "this OpenCV has no GStreamer: a pip opencv-python probably shadows JetPack's libopencv-python; pip uninstall it"
"$venv/bin/edgekit" doctor
# ONNX Runtime's CUDA and TensorRT execution providers (build-engine --backend onnxruntime --provider cuda|tensorrt)
# need onnxruntime-gpu, which PyPI has no aarch64 wheel of (TENSORRT.md): NVIDIA's Jetson wheel replaces it.
say "for ONNX Runtime on the GPU (--provider cuda|tensorrt): replace onnxruntime with NVIDIA's onnxruntime-gpu" \
    "wheel for JetPack $family (pip uninstall onnxruntime; pip install the wheel from NVIDIA's Jetson index)"
say "done: activate with 'source $venv/bin/activate', then run jetson/selftest.sh"
