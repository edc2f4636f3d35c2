#!/bin/sh
# The pruning figures quoted in the README: both shipped models pruned by 30% and 50% of their channels
# (L2 importance, channels rounded to 8), fine-tuned 20 epochs on `edgekit data synth build/synth`, then one
# sweep per model that profiles the unpruned and pruned checkpoints side by side (ONNX Runtime CPU FP32
# and INT8) and evaluates each on the test split.
#   sh benchmarks/prune_shipped.sh [DATA] [OUT]
set -eu
data=${1:-build/synth}
out=${2:-runs/prune}
py=${PYTHON:-.venv/bin/python}
for model in detector/edgenet-det-s segmenter/edgenet-seg-s; do
    name=${model#*/}
    for ratio in 30 50; do
        "$py" -m edgekit prune "models/$model.safetensors" --ratio "0.$ratio" --data "$data" \
            --finetune-epochs 20 -q -o "$out/$name-p$ratio"
    done
    "$py" -m edgekit sweep "models/$model.safetensors" "$out/$name-p30/best.safetensors" \
        "$out/$name-p50/best.safetensors" --data "$data" --precisions fp32,int8 --calib-methods minmax \
        --backends onnxruntime --out "$out/sweep-$name"
done
