#!/bin/sh
# The pruning figures quoted in the README (about an hour on 2 cores): both shipped models pruned by 30%
# and 50% of their channels (L2 importance, channels rounded to 8) and fine-tuned 20 epochs at lr 1e-3 (the old
# default), plus 50% fine-tuned 40 epochs at the training learning rate (2e-3); then one sweep per
# model that profiles the unpruned and pruned checkpoints side by side (ONNX Runtime CPU, FP32 and INT8)
# and evaluates each on the test split of `edgekit data synth build/synth`.
#   sh benchmarks/prune_shipped.sh [DATA] [OUT]
set -eu
data=${1:-build/synth}
out=${2:-runs/prune}
py=${PYTHON:-.venv/bin/python}
for model in detector/edgenet-det-s segmenter/edgenet-seg-s; do
    name=${model#*/}
    for ratio in 30 50; do
        [ -f "$out/$name-p$ratio/best.safetensors" ] ||
            "$py" -m edgekit prune "models/$model.safetensors" --ratio "0.$ratio" --data "$data" \
                --finetune-epochs 20 --lr 1e-3 -q -o "$out/$name-p$ratio"
    done
    [ -f "$out/$name-p50-long/best.safetensors" ] ||
        "$py" -m edgekit prune "models/$model.safetensors" --ratio 0.5 --data "$data" \
            --finetune-epochs 40 --lr 2e-3 --name "$name-p50-long" -q -o "$out/$name-p50-long"
    "$py" -m edgekit sweep "models/$model.safetensors" "$out/$name-p30/best.safetensors" \
        "$out/$name-p50/best.safetensors" "$out/$name-p50-long/best.safetensors" --data "$data" \
        --precisions fp32,int8 --calib-methods minmax --backends onnxruntime --out "$out/sweep-$name"
done
