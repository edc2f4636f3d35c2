"""The stream report: per stage and end to end latency statistics, throughput, frame accounting and
queue waits, as JSON (schema-versioned) + Markdown + PNG plots (DESIGN.md section 6).

Latencies come from the pipeline's histograms (percentiles within 1%, the rest exact), so a report of a
week-long stream costs no more memory than one of a minute; the CDF plot shows the last frames only."""

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from edgekit.runtime import registry
from edgekit.runtime.artifacts import write_json, write_text
from edgekit.runtime.jetson.power import markdown_lines as power_lines
from edgekit.runtime.measure.stats import LatencyHistogram
from edgekit.runtime.stream.pipeline import Counters, Feed, Pipeline
from edgekit.runtime.text import printable

SCHEMA = "edgekit.stream-report/1"


def _source(feed: Feed, wall_s: float) -> Dict[str, Any]:
    src, c = feed.source, feed.counters
    return {"uri": src.info.uri, "kind": src.info.kind, "live": src.info.live, "fps": src.info.fps,
            "reconnects": src.reconnects, "reconnect_attempts": src.reconnect_attempts,
            "skipped_inputs": [dict(x) for x in src.skipped], "decoder": src.info.decoder,
            "notes": list(src.info.notes),
            "frames": _frames(c), "throughput_fps": c.processed / wall_s, "end_to_end_ms": feed.end_to_end.summary(),
            "stop_reason": feed.stop_reason, "error": str(feed.error) if feed.error is not None else None}


def _frames(c: Counters) -> Dict[str, Any]:
    return {"in": c.frames_in, "processed": c.processed, "dropped": c.dropped,
            "accounted": c.frames_in == c.processed + c.dropped}


def _inference(p: Pipeline) -> Dict[str, Any]:
    batches = sum(p.batch_sizes.values())
    return {"workers": len(p.workers), "threads_per_worker": p.threads_per_worker,
            "frames_per_worker": list(p.worker_frames),
            "batch": {"max": p.batch, "wait_ms": p.batch_wait_s * 1e3 if p.live and p.batch > 1 else 0.0,
                      "batches": batches, "sizes": {str(k): v for k, v in sorted(p.batch_sizes.items())},
                      "mean": sum(k * v for k, v in p.batch_sizes.items()) / batches if batches else None}}


def build(p: Pipeline, extra: Dict[str, Any]) -> Dict[str, Any]:
    st = p.stats
    wall_s = max(1e-9, (p.t_end - p.t_start) / 1e9)
    c = p.counters
    sources = [_source(feed, wall_s) for feed in p.feeds]
    report = {
        "schema": SCHEMA,
        # the first source, as a report of one source has always given it; `sources` has every one
        "source": {k: v for k, v in sources[0].items()
                   if k not in ("frames", "throughput_fps", "end_to_end_ms", "stop_reason", "error")},
        "sources": sources,
        "frames": _frames(c),
        "inference": _inference(p),
        "stop_reason": p.stop_reason,
        "error": str(p.error) if p.error is not None else None,
        "wall_seconds": wall_s,
        "throughput_fps": c.processed / wall_s,
        "end_to_end_ms": st.end_to_end.summary(),
        "stages_ms": {s: h.summary() for s, h in st.stages.items()},
        "queue_wait_ms": {q: h.summary() for q, h in st.queue_waits.items()},
        "device_ms": st.device.summary() if st.device.count else None,
        # H2D + compute + D2H of each frame's batch (CUDA events): end to end over this is what the runner adds
        "engine_ms": st.engine.summary() if st.engine.count else None,
        "latency_stats": {"method": "log-bucket histogram", "relative_error": LatencyHistogram.RELATIVE_ERROR,
                          "exact": ["count", "max", "mean", "std", "cv"],
                          "cdf_plot_frames": len(st.recent_end_to_end_ms)},
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
        f"# Stream report: {printable(r['source']['uri'])}" if len(r.get("sources", [])) <= 1 else
        f"# Stream report: {len(r['sources'])} sources",
        "",
        f"- engine: {r.get('engine', {}).get('path', '')} ({r.get('engine', {}).get('backend', '')}, "
        f"{r.get('engine', {}).get('precision', '')})",
        f"- frames: {fr['in']} in, {fr['processed']} processed, {fr['dropped']} dropped"
        f"{'' if fr['accounted'] else ' (ACCOUNTING MISMATCH)'}",
        f"- throughput: {r['throughput_fps']:.1f} FPS over {r['wall_seconds']:.1f} s; stopped: {r['stop_reason']}",
        f"- latency percentiles within {r['latency_stats']['relative_error']:.0%} (log-bucket histogram); "
        "max, mean and CV exact" + (f"; the CDF plot shows the {_cdf_window(r)}" if _cdf_window(r) else ""),
    ]
    if r.get("error"):
        lines.append(f"- error: {printable(r['error'])}")
    engine, e2e = r.get("engine_ms") or {}, r["end_to_end_ms"]
    if engine.get("count") and e2e.get("count") and engine["p50"] > 0:
        lines.append(f"- end to end p50 / engine p50 (H2D + compute + D2H): {e2e['p50']:.2f} / {engine['p50']:.2f} "
                     f"ms = {e2e['p50'] / engine['p50']:.2f}")
    inf = r.get("inference")
    if inf:
        threads = f" x {inf['threads_per_worker']} thread{'s' if inf['threads_per_worker'] != 1 else ''}" \
            if inf.get("threads_per_worker") else ""
        b = inf["batch"]
        sizes = ", ".join(f"{n} x {k}" for k, n in b["sizes"].items())
        batching = (f"; batches of up to {b['max']} frames ({b['batches']} run: {sizes}; mean {b['mean']:.2f})"
                    if b["max"] > 1 and b["batches"] else "")
        workers = (f"{inf['workers']} request{'s' if inf['workers'] != 1 else ''} in flight at the server"
                   if r.get("server") else f"{inf['workers']} worker{'s' if inf['workers'] != 1 else ''}{threads}")
        lines.append(f"- inference: {workers}{batching}")
    lines += _server_lines(r.get("server"), r["stages_ms"].get("infer") or {})
    outputs = r.get("outputs") or {}
    for k, out in enumerate(outputs.get("sources") or [outputs]):
        lines += _video_line(out.get("video_files"), f"source {k}: " if outputs.get("sources") else "")
    acc = r.get("accuracy")
    if acc:
        text = registry.task(r["engine"]["task"]).stream_accuracy_text(acc)
        lines.append(f"- accuracy against the source's ground truth: {text}")
    lines += power_lines(r.get("power"), r.get("jetson"))
    if len(r.get("sources", [])) > 1:
        lines += ["", "| source | frames in | processed | dropped | FPS | end to end p50 | p99 | stopped |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for k, s in enumerate(r["sources"]):
            e2e, f = s["end_to_end_ms"], s["frames"]
            p50, p99 = (f"{e2e['p50']:.2f}", f"{e2e['p99']:.2f}") if e2e.get("count") else ("–", "–")
            lines.append(f"| {k}: {s['uri']} | {f['in']} | {f['processed']} | {f['dropped']} | "
                         f"{s['throughput_fps']:.1f} | {p50} | {p99} | {s['error'] or s['stop_reason']} |")
    lines += ["", "| latency (ms) | p50 | p90 | p99 | max | mean | CV |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines.append(row("**end to end**", r["end_to_end_ms"]))
    for s, st in r["stages_ms"].items():
        lines.append(row(s, st))
    if r.get("device_ms"):
        lines.append(row("infer (device, CUDA events)", r["device_ms"]))
    if r.get("engine_ms"):
        lines.append(row("infer (device: H2D + compute + D2H)", r["engine_ms"]))
    for q, st in r["queue_wait_ms"].items():
        lines.append(row(f"queue wait {q}", st))
    return printable("\n".join(lines) + "\n", multiline=True)  # the URI, error and notes came from outside


def _server_lines(server: Optional[Dict[str, Any]], infer: Dict[str, Any]) -> List[str]:
    """A served model (run-stream triton://): the server, its outages, and its own statistics of the run."""
    if not server:
        return []
    outages = [o for o in server.get("outages") or [] if o.get("seconds") is not None]
    gone = ", ".join(f"{o['seconds']:.1f} s" for o in outages)
    lost = (f"; lost {len(outages)} time{'s' if len(outages) != 1 else ''} and found again ({gone}), "
            f"{server['retried_requests']} requests resent" if outages else "")
    lines = [f"- server: Triton {server.get('server_version') or '?'} at {server['url']}{lost}"]
    st = server.get("statistics")
    if not st:
        return lines + ["- server statistics: not available (the server was gone at the end of the run)"]
    sizes = ", ".join(f"{n} x {k}" for k, n in st["batch_sizes"].items()) or "none"

    def ms(v: Optional[float]) -> str:
        return "–" if v is None else f"{v:.2f}"

    over = "since it restarted during the run" if st.get("restarted") else "over the run"
    lines.append(f"- on the server {over} (every client of the model): {st['requests']} requests in "
                 f"{st['executions']} executions (batch sizes: {sizes}); per request: queue {ms(st['queue_ms'])} ms, "
                 f"compute input {ms(st['compute_input_ms'])} + infer {ms(st['compute_infer_ms'])} + output "
                 f"{ms(st['compute_output_ms'])} ms, in the server {ms(st['request_ms'])} ms")
    if infer.get("count") and st.get("request_ms") is not None:
        lines.append(f"- round trip from here: mean {infer['mean']:.2f} ms, of which about "
                     f"{max(0.0, infer['mean'] - st['request_ms']):.2f} ms outside the server (network, gRPC, "
                     f"serialisation{', waiting out the outages' if outages else ''})")
    return lines


def _video_line(video: Optional[Dict[str, Any]], which: str) -> List[str]:
    if not video:
        return []
    rotated = (f"; {video['segments_written']} segments of up to {video['max_bytes'] / 1e6:.0f} MB, "
               f"{video['segments_deleted']} oldest deleted" if video["segments_written"] > 1 else "")
    resized = f", {video['frames_resized']} letterboxed to its size" if video["frames_resized"] else ""
    left = [f"{video[k]} {what}" for k, what in (("frames_skipped", "left out by --video-fps"),
                                                  ("frames_dropped", "dropped: the encoder was behind"))
            if video.get(k)]
    return [f"- {which}annotated video: {', '.join(f['name'] for f in video['files'])} "
            f"({video['bytes_on_disk'] / 1e6:.1f} MB on disk, {video['frames_written']} frames{resized}"
            f"{rotated}{''.join('; ' + x for x in left)})"]


def _cdf_window(r: Dict[str, Any]) -> str:
    """'last N of M frames' where the CDF plot leaves out the earlier frames, else ''."""
    shown, processed = r["latency_stats"]["cdf_plot_frames"], r["frames"]["processed"]
    return f"last {shown} of {processed} frames" if shown < processed else ""


def plots(recent_end_to_end_ms: Sequence[float], r: Dict[str, Any], out: Path) -> Optional[List[Path]]:
    """Latency CDF and per-stage breakdown; None where matplotlib is not installed (lean runtime images)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    paths = []
    e2e = np.sort(np.asarray(recent_end_to_end_ms, np.float64))
    if e2e.size:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(e2e, np.arange(1, e2e.size + 1) / e2e.size)
        for q in (50, 90, 99):
            ax.axvline(np.percentile(e2e, q), ls=":", color="grey")
            ax.text(np.percentile(e2e, q), 0.02, f"p{q}", rotation=90, fontsize=8)
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_ylabel("fraction of frames")
        ax.set_title("Latency CDF" + (f" ({_cdf_window(r)})" if _cdf_window(r) else ""))
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
    r["plots"] = [str(x) for x in (plots(p.stats.recent_end_to_end_ms, r, out) or [])]
    return r
