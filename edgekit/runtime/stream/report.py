"""The stream report: per stage and end to end latency statistics, throughput, frame accounting and
queue waits, as JSON (schema-versioned) + Markdown + PNG plots (DESIGN.md section 6)."""

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from edgekit.runtime import registry
from edgekit.runtime.artifacts import write_json, write_text
from edgekit.runtime.jetson.power import markdown_lines as power_lines
from edgekit.runtime.measure.stats import summarize
from edgekit.runtime.stream.pipeline import STAGES, Frame, Pipeline

SCHEMA = "edgekit.stream-report/1"


def build(p: Pipeline, extra: Dict[str, Any]) -> Dict[str, Any]:
    frames: List[Frame] = sorted(p.done, key=lambda f: f.index)
    wall_s = max(1e-9, (p.t_end - p.t_start) / 1e9)
    stages = {}
    for s in STAGES:
        stages[s] = summarize([(f.t[f"{s}_end"] - f.t[f"{s}_start"]) / 1e6 for f in frames if f"{s}_end" in f.t])
    waits = {}
    for prev, s in zip(STAGES, STAGES[1:]):
        waits[f"{prev}->{s}"] = summarize([(f.t[f"{s}_start"] - f.t[f"{prev}_end"]) / 1e6 for f in frames
                                           if f"{s}_start" in f.t and f"{prev}_end" in f.t])
    e2e = [(f.t["sink_end"] - f.t_capture) / 1e6 for f in frames]
    device = [f.device_ms for f in frames if f.device_ms is not None]
    c = p.counters
    report = {
        "schema": SCHEMA,
        "source": {"uri": p.source.info.uri, "kind": p.source.info.kind, "live": p.source.info.live,
                   "fps": p.source.info.fps, "reconnects": p.source.reconnects,
                   "decoder": p.source.info.decoder, "notes": list(p.source.info.notes)},
        "frames": {"in": c.frames_in, "processed": c.processed, "dropped": c.dropped,
                   "accounted": c.frames_in == c.processed + c.dropped},
        "stop_reason": p.stop_reason,
        "error": str(p.error) if p.error is not None else None,
        "wall_seconds": wall_s,
        "throughput_fps": c.processed / wall_s,
        "end_to_end_ms": summarize(e2e),
        "stages_ms": stages,
        "queue_wait_ms": waits,
        "device_ms": summarize(device) if device else None,
    }
    report.update(extra)
    return report


def markdown(r: Dict[str, Any]) -> str:
    def row(name: str, s: Dict[str, float]) -> str:
        if not s or not s.get("count"):
            return f"| {name} | – | – | – | – | – | – |"
        return (f"| {name} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['max']:.2f} | {s['mean']:.2f} "
                f"| {s['cv']:.2f} |")

    fr = r["frames"]
    lines = [
        f"# Stream report: {r['source']['uri']}",
        "",
        f"- engine: {r.get('engine', {}).get('path', '')} ({r.get('engine', {}).get('backend', '')}, "
        f"{r.get('engine', {}).get('precision', '')})",
        f"- frames: {fr['in']} in, {fr['processed']} processed, {fr['dropped']} dropped"
        f"{'' if fr['accounted'] else ' (ACCOUNTING MISMATCH)'}",
        f"- throughput: {r['throughput_fps']:.1f} FPS over {r['wall_seconds']:.1f} s; stopped: {r['stop_reason']}",
    ]
    if r.get("error"):
        lines.append(f"- error: {r['error']}")
    acc = r.get("accuracy")
    if acc:
        text = registry.task(r["engine"]["task"]).stream_accuracy_text(acc)
        lines.append(f"- accuracy against the source's ground truth: {text}")
    lines += power_lines(r.get("power"), r.get("jetson"))
    lines += ["", "| latency (ms) | p50 | p90 | p99 | max | mean | CV |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines.append(row("**end to end**", r["end_to_end_ms"]))
    for s, st in r["stages_ms"].items():
        lines.append(row(s, st))
    if r.get("device_ms"):
        lines.append(row("infer (device, CUDA events)", r["device_ms"]))
    for q, st in r["queue_wait_ms"].items():
        lines.append(row(f"queue wait {q}", st))
    return "\n".join(lines) + "\n"


def plots(frames: List[Frame], r: Dict[str, Any], out: Path) -> Optional[List[Path]]:
    """Latency CDF and per-stage breakdown; None where matplotlib is not installed (lean runtime images)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    paths = []
    e2e = np.sort([(f.t["sink_end"] - f.t_capture) / 1e6 for f in frames])
    if e2e.size:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(e2e, np.arange(1, e2e.size + 1) / e2e.size)
        for q in (50, 90, 99):
            ax.axvline(np.percentile(e2e, q), ls=":", color="grey")
            ax.text(np.percentile(e2e, q), 0.02, f"p{q}", rotation=90, fontsize=8)
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_ylabel("fraction of frames")
        ax.set_title("Latency CDF")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_cdf.png", dpi=100)
        plt.close(fig)
        paths.append(out / "latency_cdf.png")
    names = [s for s, st in r["stages_ms"].items() if st.get("count")]
    if names:
        fig, ax = plt.subplots(figsize=(6, 4))
        p50 = [r["stages_ms"][s]["p50"] for s in names]
        p99 = [r["stages_ms"][s]["p99"] for s in names]
        x = np.arange(len(names))
        ax.bar(x - 0.2, p50, 0.4, label="p50")
        ax.bar(x + 0.2, p99, 0.4, label="p99")
        ax.set_xticks(x, names)
        ax.set_ylabel("ms")
        ax.set_title("Per-stage latency")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "stages.png", dpi=100)
        plt.close(fig)
        paths.append(out / "stages.png")
    return paths


def write(p: Pipeline, out: Path, extra: Dict[str, Any]) -> Dict[str, Any]:
    r = build(p, extra)
    write_json(out / "report.json", r)
    write_text(out / "report.md", markdown(r))
    r["plots"] = [str(x) for x in (plots(sorted(p.done, key=lambda f: f.index), r, out) or [])]
    return r
