"""The pruning report: parameters, MACs, size, measured latency and accuracy before pruning, after pruning
and after fine-tuning, side by side; JSON and Markdown."""

import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

from edgekit.build import sparsity
from edgekit.build.export import export
from edgekit.build.models import checkpoint
from edgekit.build.onnx_io import load_model
from edgekit.build.pruning.channels import channel_counts, complexity
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgekit.runtime.manifest import BackendRecord
from edgekit.runtime.measure import profile as prof
from edgekit.runtime.measure.evaluate import evaluate


def measure_stages(stages: List[Tuple[str, Path]], ds_val: Any, seconds: float) -> List[Dict[str, Any]]:
    """Parameters, MACs, file size, ONNX Runtime CPU latency (measured side by side, at least `seconds` each)
    and val accuracy of each (label, checkpoint): before pruning, after pruning and after fine-tuning."""
    rows: List[Dict[str, Any]] = []
    subjects = []
    work = Path(tempfile.mkdtemp(prefix="edgekit-prune-report-"))
    try:
        for label, path in stages:
            model, card = checkpoint.load(path)
            macs, params = complexity(model, card)
            weights, _ = checkpoint.resolve(path)
            onnx_path = export(path, work / f"{label}.onnx").path
            row: Dict[str, Any] = {"stage": label, "checkpoint": str(path), "params": params, "macs": macs,
                                   "bytes": weights.stat().st_size, "channels": channel_counts(model)}
            if card.extra.get("sparsity"):
                row["sparsity_check"] = sparsity.check_onnx(load_model(onnx_path))
            backend = OnnxRuntimeBackend(onnx_path)
            if ds_val is not None:
                row["accuracy_val"] = evaluate(lambda x, b=backend: b.infer([x]), card, ds_val)
            s = prof.Subject(label, backend, card, BackendRecord(name=backend.name, version=backend.version()))
            prof.prepare(s, 1)
            subjects.append(s)
            rows.append(row)
        popts = prof.ProfileOptions(warmup_s=0.5, iterations=200, duration_s=seconds, rounds=3)
        prof.measure(subjects, popts)
        for row, s in zip(rows, subjects):
            row["latency_ms"] = prof.result(s, popts)["host_ms"]
    finally:
        for s in subjects:
            s.backend.close()
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]["latency_ms"]["p50"]
    for row in rows:
        row["latency_ratio_vs_unpruned"] = round(base / row["latency_ms"]["p50"], 3)
    return rows


def markdown(r: Dict[str, Any]) -> str:
    metric = r["metric"]
    lines = [f"# Pruning report: ratio {r['ratio']:.2f} ({r['importance']} importance, channels rounded to "
             f"{r['round_to']}){', 2:4 sparsity' if r['sparsity'] else ''}", "",
             f"Latency: ONNX Runtime CPU FP32, p50 per call, measured side by side in one run. Accuracy: "
             f"{metric} on the val split of {r['data']}." if r["data"] else "Latency: ONNX Runtime CPU FP32, p50.",
             "", f"| stage | params | MACs | file | ORT CPU p50 ms | speed-up | {metric} |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["stages"]:
        acc = row.get("accuracy_val", {}).get(metric)
        lines.append(f"| {row['stage']} | {row['params']:,} | {row['macs'] / 1e6:.1f} M | "
                     f"{row['bytes'] / 1024:.0f} KB | {row['latency_ms']['p50']:.2f} | "
                     f"{row['latency_ratio_vs_unpruned']:.2f}x | "
                     f"{'–' if acc is None else f'{acc:.3f}'} |")
    checks = [row["sparsity_check"] for row in r["stages"] if "sparsity_check" in row]
    if checks:
        c = checks[-1]
        lines.append(f"\n2:4 pattern in the exported ONNX: {c['sparse']} of {c['eligible']} eligible conv weights"
                     + (f"; dense: {', '.join(c['dense'][:5])}" if c["dense"] else ""))
    if r.get("layers_left_unpruned"):
        lines.append(f"\nLeft unpruned (the pruner cannot reshape them): {', '.join(r['layers_left_unpruned'])}")
    if r.get("search"):
        lines.append("\nTarget search: " + ", ".join(
            f"ratio {t['ratio']:.3f} -> {[v for k, v in t.items() if k != 'ratio'][0]:.3g}" for t in r["search"]))
    after = r["stages"][-1]["channels"]
    lines += ["", "| layer | channels before | after |", "|---|---:|---:|"]
    lines += [f"| {n} | {c} | {after.get(n, c)} |" for n, c in r["channels_before"].items()]
    return "\n".join(lines) + "\n"
