#!/bin/sh
# The distillation figures quoted in the README (about an hour on 2 cores): both shipped models pruned by
# 50% of their channels (L2 importance, channels rounded to 8) and fine-tuned 20 epochs on the schedule their
# cards record (AdamW, lr 2e-3), plainly and with --distill (the unpruned model as teacher) at weights 1 and
# 0.3; then one table of the val accuracy before pruning, after pruning, and after each fine-tuning, from the
# runs' prune_report.json files, measured on `edgekit data synth build/synth`.
#   sh benchmarks/distill_shipped.sh [DATA] [OUT] [EPOCHS]
set -eu
data=${1:-build/synth}
out=${2:-runs/distill}
epochs=${3:-20}
py=${PYTHON:-.venv/bin/python}
[ -d "$data" ] || "$py" -m edgekit data synth "$data" -q
for model in detector/edgenet-det-s segmenter/edgenet-seg-s; do
    name=${model#*/}
    for mode in plain distill distill-w03; do
        set --  # the mode's flags
        [ "$mode" = distill ] && set -- --distill
        [ "$mode" = distill-w03 ] && set -- --distill --distill-weight 0.3
        [ -f "$out/$name-p50-$mode/best.safetensors" ] ||
            "$py" -m edgekit prune "models/$model.safetensors" --ratio 0.5 --data "$data" --finetune-epochs "$epochs" \
                "$@" --report-duration 1 -q -o "$out/$name-p50-$mode" > "$out-$name-$mode.log" 2>&1
    done
done
"$py" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| model, 50% of channels pruned | metric | before | pruned | fine-tuned | + distillation (weight 1) | "
      "+ distillation (weight 0.3) |")
print("|---|---|---:|---:|---:|---:|---:|")
for name in ("edgenet-det-s", "edgenet-seg-s"):
    runs = {m: json.loads((out / f"{name}-p50-{m}" / "prune_report.json").read_text())
            for m in ("plain", "distill", "distill-w03")}
    metric = runs["plain"]["metric"]
    acc = {m: {s["stage"]: s["accuracy_val"][metric] for s in r["stages"]} for m, r in runs.items()}
    p, d, w = acc["plain"], acc["distill"], acc["distill-w03"]
    gain = lambda r: f"{r['fine-tuned']:.3f} ({100 * (r['fine-tuned'] - p['fine-tuned']):+.1f})"  # noqa: E731
    print(f"| {name} | {metric} | {p['before']:.3f} | {p['pruned']:.3f} | {p['fine-tuned']:.3f} | {gain(d)} | "
          f"{gain(w)} |")
PY
