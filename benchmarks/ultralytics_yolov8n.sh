#!/bin/sh
# The Ultralytics YOLOv8n figures quoted in the README (about an hour on 2 cores; needs the ultralytics extra):
# a YOLOv8n trained by Ultralytics' own trainer (25 epochs from scratch on 600 generated images at imgsz 256),
# then the path a user with a best.pt takes: import-model, prune 30% with 10 epochs of fine-tuning (plainly
# and with --distill), export, INT8 engine, eval of each stage and run-stream on the generated video.
#   sh benchmarks/ultralytics_yolov8n.sh [OUT]
set -eu
out=${1:-runs/yolov8n}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -d "$out/data" ] || "$py" -m edgekit data synth "$out/data" --train 600 --val 100 --test 100 -q
printf 'path: %s\ntrain: images/train\nval: images/val\nnames: {0: disc, 1: square, 2: triangle, 3: star}\n' \
    "$out/data" > "$out/data.yaml"
[ -f "$out/runs/v8n/weights/best.pt" ] || YOLO_OFFLINE=1 "$py" -c "
from ultralytics import YOLO
YOLO('yolov8n.yaml').train(data='$out/data.yaml', epochs=25, imgsz=256, batch=16, workers=0, plots=False,
                           device='cpu', project='$out/runs', name='v8n', exist_ok=True, amp=False,
                           pretrained=False, seed=0)"
ek() { "$py" -m edgekit "$@"; }
[ -f "$out/ckpt/best.safetensors" ] || ek import-model "$out/runs/v8n/weights/best.pt" --trust-pickle -o "$out/ckpt"
for mode in plain distill; do
    set --
    [ "$mode" = distill ] && set -- --distill
    [ -f "$out/p30-$mode/best.safetensors" ] ||
        ek prune "$out/ckpt/best.safetensors" --ratio 0.3 --data "$out/data" --finetune-epochs 10 "$@" -q \
            --report-duration 1 -o "$out/p30-$mode"
done
ek export "$out/p30-distill/best.safetensors" -o "$out/p30.onnx"
ek build-engine "$out/p30.onnx" -o "$out/p30.int8.onnx" --precision int8 --calib "$out/data/images/val"
for artifact in ckpt/best.safetensors p30-plain/best.safetensors p30-distill/best.safetensors p30.int8.onnx \
    p30.int8.onnx.trt-qdq.onnx; do
    ek eval "$out/$artifact" "$out/data" --split val -o "$out/eval/$(echo "$artifact" | tr / _)" | grep "mAP@"
done
ek run-stream "$out/p30.int8.onnx" "$out/data/videos/stream_00.mp4" -o "$out/stream" -q | head -6
