#!/bin/bash
# On-device self-test: proves the GPU path on this Jetson and writes ONE report file to attach to a bug
# report. It runs edgekit doctor, the GPU/TensorRT/Jetson-marked tests, then for both shipped models:
# TensorRT FP16 and INT8 engines (and on each DLA core where present), edgekit profile, edgekit eval on
# synthetic test images and a short edgekit run-stream, each step's output and status in the report.
#
#   jetson/selftest.sh [--onnx-dir DIR] [--out DIR] [--quick]
#
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
duration=10
frames=300
while [ $# -gt 0 ]; do
    case "$1" in
        --onnx-dir) onnx_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --quick) duration=2; frames=60; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "selftest.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out" || exit 1
report="$out/selftest-$(hostname)-$(date +%Y%m%d-%H%M%S).md"
failures=0
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

ek() { "$py" -m edgekit "$@"; }

{
    echo "# edgekit self-test on $(hostname)"
    echo
    echo "- date: $(date -Iseconds)"
    echo "- release: $(head -n1 /etc/nv_tegra_release 2>/dev/null || echo 'not a Jetson')"
    echo "- python: $($py --version 2>&1), edgekit at $repo ($(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout'))"
    echo
} >"$report"

step "doctor" ek doctor
step "power mode" "$repo/jetson/power.sh" show
work="$out/work"
mkdir -p "$work"
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

{
    echo "## Summary"
    echo
    echo "| step | result |"
    echo "|---|---|"
    echo -n "$summary"
} >>"$report"
echo "selftest: report: $report ($failures failed)"
[ "$failures" = 0 ]
