#!/bin/bash
# Set up edgekit's runtime side on a Jetson (JetPack 5.1.x or 6.x): TensorRT's Python bindings from
# JetPack, cuda-python, OpenCV with GStreamer (JetPack's own build) and edgekit with ONNX Runtime and
# COCO mAP, in a virtual environment that sees the system's TensorRT and OpenCV. Safe to run again.
#
#   jetson/setup.sh [--venv DIR] [--yes] [--detect-only]
#
# --detect-only prints the detected release and whether it is supported, then exits (0 supported, 3 not).
# EDGEKIT_NV_TEGRA_RELEASE names another release file (tests use recorded ones).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv-jetson"
assume_yes=0
detect_only=0
release_file=${EDGEKIT_NV_TEGRA_RELEASE:-/etc/nv_tegra_release}

die() { echo "setup.sh: error: $*" >&2; exit "${2:-1}"; }
say() { echo "setup.sh: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --venv) [ $# -ge 2 ] || die "--venv needs a folder"; venv=$2; shift 2 ;;
        --yes|-y) assume_yes=1; shift ;;
        --detect-only) detect_only=1; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see --help)" 2 ;;
    esac
done

# --- which release is this? (one parser: edgekit/runtime/jetson/tegra.py, standard library only) ---------------------
[ -f "$release_file" ] || die "$release_file not found: this is not a Jetson (or L4T is not installed)" 3
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3) || die "python3 not found"
release=$(PYTHONPATH="$repo" "$python" - "$release_file" <<'PY'
import sys
from edgekit.runtime.jetson.tegra import parse_nv_tegra_release
try:
    r = parse_nv_tegra_release(open(sys.argv[1], encoding="utf-8", errors="replace").read())
except ValueError as e:
    print(f"unreadable: {e}")
    sys.exit(0)
print(f"{r.major} {r.minor} {r.patch} {r.jetpack or '?'}")
PY
)
case "$release" in
    unreadable:*) die "$release_file: ${release#unreadable: }" 3 ;;
esac
read -r major minor patch jetpack <<<"$release"
version="R$major.$minor.$patch"

# JetPack 5.1 (L4T R35.2.1 and later R35) and JetPack 6 (R36): what TensorRT 8.5 and 10.3 ship with.
supported=0
if [ "$major" = 35 ] && { [ "$minor" -ge 3 ] || { [ "$minor" = 2 ] && [ "$patch" -ge 1 ]; }; }; then
    supported=1; family=5
elif [ "$major" = 36 ]; then
    supported=1; family=6
fi
if [ "$supported" = 1 ]; then
    say "L4T $version (JetPack $jetpack): supported"
else
    say "L4T $version (JetPack $jetpack): not supported"
fi
[ "$detect_only" = 1 ] && { [ "$supported" = 1 ] && exit 0 || exit 3; }
[ "$supported" = 1 ] || die "edgekit needs JetPack 5.1.x (L4T R35.2.1+) or 6.x (L4T R36); this is L4T $version. Flash a supported JetPack with SDK Manager." 3

# --- system packages from JetPack's apt repository -----------------------------------------------------
# TensorRT's Python bindings (8.5 for the system Python 3.8 on JetPack 5, 10.3 for 3.10 on JetPack 6),
# JetPack's OpenCV (libopencv-python: NVIDIA's build, with GStreamer, which csi:// needs), GStreamer's
# plugins and venv support.
packages="python3-libnvinfer libopencv-python python3-venv python3-pip gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing from JetPack's apt repository:$missing"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    yes_flag=""
    [ "$assume_yes" = 1 ] && yes_flag="-y"
    $sudo apt-get update
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    $sudo apt-get install $yes_flag --no-install-recommends $missing
else
    say "system packages already installed"
fi

# --- the virtual environment: sees the system's TensorRT and OpenCV ------------------------------------
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv (with --system-site-packages, to see TensorRT and OpenCV from JetPack)"
    "$python" -m venv --system-site-packages "$venv"
else
    say "reusing $venv"
fi
pip="$venv/bin/python -m pip"
# edgekit without its pip dependencies: opencv-python-headless from PyPI has no GStreamer and would hide
# JetPack's OpenCV. NumPy comes with JetPack's OpenCV; the rest of the runtime side is added explicitly.
$pip install -q --no-deps -e "$repo"
$pip install -q "onnxruntime>=1.16" "faster-coco-eval>=1.6" "pytest>=7"  # pytest: jetson/selftest.sh
# cuda-python for device memory (pycuda works too, but needs a source build): the 12.x line on JetPack 6
# (CUDA 12.6); JetPack 5 has CUDA 11.4, whose last cuda-python is 11.8.x.
if [ "$family" = 6 ]; then
    $pip install -q "cuda-python>=12.6,<13"
else
    $pip install -q "cuda-python>=11.4,<12"
fi

# --- what works now -------------------------------------------------------------------------------------
"$venv/bin/python" -c 'from edgekit.runtime.jetson.doctor import opencv_video_backends as v; import sys; sys.exit(not v().get("GStreamer"))' ||
    die "this OpenCV has no GStreamer: a pip opencv-python probably shadows JetPack's libopencv-python; pip uninstall it"
"$venv/bin/edgekit" doctor
say "done: activate with 'source $venv/bin/activate', then run jetson/selftest.sh"
