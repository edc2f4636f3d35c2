#!/bin/bash
# GPU check for a CUDA machine WITHOUT TensorRT (an x86 PC or cloud GPU with PyTorch+CUDA, cuda-python and/or
# pycuda, CuPy, onnxruntime): runs the GPU-marked tests that can run there and prints a summary, in under 5 minutes.
#
#   jetson/gpu-check.sh [--python PYTHON] [--timeout SECONDS]
#
# What it runs (tests/gpu, marked `gpu`; each skips where its part is missing):
#   * the CUDA memory/stream/event wrappers (edgekit/runtime/backends/cuda_mem.py) with every binding installed:
#     copies, CUDA-event timing, release of streams/events/pinned and device buffers, pinned-buffer reuse over
#     1000 infer-like copy calls with flat host and device memory, the primary context from worker threads;
#   * the eager PyTorch backend on CUDA (outputs as on the CPU, CUDA-event timing in profile);
#   * `edgekit doctor`'s CUDA lines: which binding is installed and whether it works (a 1 KB round trip).
# The TensorRT tests (tests/gpu/test_tensorrt.py) and the Jetson tests need TensorRT/a Jetson: jetson/selftest.sh.
# Exit status: 0 when every test that ran passed and at least one GPU test ran; 1 otherwise; 2 on bad arguments.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-}
limit=240
while [ $# -gt 0 ]; do
    case "$1" in
        --python) py=$2; shift 2 ;;
        --timeout) limit=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "gpu-check.sh: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py="$repo/.venv/bin/python"; else py=python3; fi
fi
cd "$repo" || exit 1
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

echo "== gpu-check: $(date -Iseconds) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    | sed 's/^/   GPU: /' || echo "   GPU: nvidia-smi not found"
"$py" - <<'EOF'
import importlib, platform
from importlib import metadata
print(f"   Python {platform.python_version()} ({platform.machine()})")
for dist in ("numpy", "torch", "cupy-cuda12x", "cupy-cuda13x", "cuda-python", "cuda-bindings", "pycuda",
             "onnxruntime", "opencv-python-headless", "opencv-python", "pytest", "tensorrt"):
    try:
        print(f"   {dist} {metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        pass
try:
    torch = importlib.import_module("torch")
    print(f"   torch sees CUDA: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda})" if torch.cuda.is_available() else ""))
except ImportError:
    print("   torch: not installed")
EOF

echo "== CUDA bindings (edgekit doctor's check, without the rest of doctor)"
"$py" - <<'EOF' || echo "   (edgekit's doctor does not import with this Python; the tests below still run)"
from edgekit.runtime.jetson.doctor import cuda_binding_checks
for c in cuda_binding_checks(None):
    print(f"   {'ok' if c.ok else '--'}  {c.name:<12} {c.detail}" + (f"  [to get it: {c.fix}]" if c.fix else ""))
EOF

echo "== GPU tests (limit ${limit} s)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --confcutdir: the GPU tests need NumPy and edgekit only, not what tests/conftest.py imports (OpenCV, ...)
timeout "$limit" "$py" -m pytest -q -rs -p no:cacheprovider --confcutdir=tests/gpu -m gpu \
    tests/gpu/test_cuda.py tests/gpu/test_torch_cuda.py 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

summary=$(grep -E '^[0-9]+ (passed|failed|skipped|error)|^=+ .*(passed|failed|skipped|error)' "$log" | tail -n 1)
passed=$(grep -oE '[0-9]+ passed' "$log" | tail -n 1 | grep -oE '[0-9]+' || true)
echo
echo "== gpu-check summary"
echo "   tests: ${summary:-no result (pytest exit $rc)}"
# each reason for skipping once, with how many tests it skipped
grep -E '^SKIPPED' "$log" | sed -E 's/^SKIPPED \[([0-9]+)\] [^:]+:[0-9]+: /\1 /' \
    | awk '{n = $1; $1 = ""; count[substr($0, 2)] += n} END {for (r in count) printf "   skipped %d: %s\n", count[r], r}'
if [ "$rc" = 124 ]; then
    echo "   FAILED: the tests ran past ${limit} s"
    exit 1
fi
if [ "$rc" != 0 ]; then
    echo "   FAILED (pytest exit $rc)"
    exit 1
fi
if [ -z "$passed" ] || [ "$passed" = 0 ]; then
    echo "   NOTHING RAN: no GPU test passed here (no usable CUDA binding or GPU; see the skips above)"
    exit 1
fi
echo "   ok: $passed GPU tests passed"
