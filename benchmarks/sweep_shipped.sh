#!/bin/sh
# The sweep of both shipped models quoted in the README: every variant this machine builds (here: ONNX
# Runtime FP32 and INT8 with three calibration methods; FP16 is skipped with its reason), evaluated on the
# test split of `edgekit data synth build/synth` and profiled side by side with the PyTorch FP32 row.
#   sh benchmarks/sweep_shipped.sh [DATA] [OUT]
set -eu
data=${1:-build/synth}
out=${2:-runs}
py=${PYTHON:-.venv/bin/python}
for model in detector/edgenet-det-s segmenter/edgenet-seg-s; do
    name=${model#*/}
    "$py" -m edgekit sweep "models/$model.safetensors" --data "$data" \
        --calib-methods minmax,entropy,percentile --accuracy-budget 1 --out "$out/sweep-$name"
done
