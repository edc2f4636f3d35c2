"""`edgekit profile`: engine-only latency the way trtexec measures it (warm-up, then at least a number of
iterations and a duration), host latency and, on a GPU, H2D / compute / D2H from CUDA events, with
percentiles, mean, CV and throughput; power and energy per image from tegrastats on a Jetson; with `layers`,
the slowest layers from the backend's own profiler.
Runtime side: NumPy/OpenCV and the engine's own runtime (torch only for a checkpoint)."""

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends import Backend
from edgekit.runtime.backends.base import LayerTime
from edgekit.runtime.card import ModelCard
from edgekit.runtime.jetson import power
from edgekit.runtime.manifest import BackendRecord, host_environment
from edgekit.runtime.measure.stats import summarize
from edgekit.runtime.opening import Opened
from edgekit.runtime.text import printable

SCHEMA = "edgekit.profile/1"
# trtexec calls a GPU unstable when the compute-time CV exceeds 1%; host-only timings on a CPU are noisier.
UNSTABLE_DEVICE_CV = 0.01
UNSTABLE_HOST_CV = 0.10
CLOCKS_HINT = ("on a Jetson fix the clocks first: sudo nvpmodel -m 0 && sudo jetson_clocks "
               "(elsewhere: stop other jobs, set the CPU governor to performance)")


@dataclass
class ProfileOptions:
    warmup_s: float = 1.0  # warm up for at least this long and WARMUP_ITERS iterations
    iterations: int = 200  # measure at least this many iterations ...
    duration_s: float = 10.0  # ... and for at least this long (trtexec's semantics)
    batch: int = 1
    percentiles: Tuple[float, ...] = (90.0, 95.0, 99.0)
    power: bool = True  # sample tegrastats where present
    rounds: int = 1  # several variants: measured in this many interleaved rounds (A B A B ...)
    layers: bool = False  # also time each layer with the backend's profiler (after the measurement)
    top_layers: int = 15  # how many of the slowest layers the report lists


WARMUP_ITERS = 10


@dataclass
class Subject:
    """One thing to profile: an open backend, what it is, and the input it gets."""

    label: str
    backend: Backend
    card: ModelCard
    record: BackendRecord  # what runs it, as reports show it
    precision: Optional[str] = None
    artifact: str = ""
    inputs: List[np.ndarray] = field(default_factory=list)
    host_ms: List[float] = field(default_factory=list)
    device_ms: List[float] = field(default_factory=list)
    h2d_ms: List[float] = field(default_factory=list)
    d2h_ms: List[float] = field(default_factory=list)
    seconds: float = 0.0


def of(opened: Opened, label: str = "") -> Subject:
    """A subject for an opened engine, ONNX or checkpoint."""
    return Subject(label or Path(str(opened.path)).name, opened.backend, opened.card, opened.record, opened.precision,
                   str(opened.path))


def example_input(card: ModelCard, batch: int) -> np.ndarray:
    """A batch of a preprocessed synthetic scene: realistic values, no dataset needed."""
    from edgekit.runtime.data.synth import render_image
    from edgekit.runtime.preprocess import preprocess

    h, w = card.input_size
    x, _ = preprocess(render_image(7, 0, (max(w, 64), max(h, 64))).image, card)
    return np.ascontiguousarray(np.repeat(x, batch, axis=0))


def prepare(subject: Subject, batch: int) -> None:
    limit = subject.backend.batch_limit()
    if limit is not None and batch > limit:
        where = subject.artifact or subject.label
        if limit == 1:
            raise EdgekitError(f"{where}: the engine takes a batch of 1 only; --batch {batch} needs an ONNX "
                               f"exported with --dynamic-batch {batch} and an engine built with --max-batch {batch}")
        raise EdgekitError(f"{where}: the engine takes batches up to {limit}, not {batch}")
    subject.inputs = [example_input(subject.card, batch)]


def _run_once(s: Subject) -> None:
    t0 = time.perf_counter_ns()
    s.backend.infer(s.inputs)
    s.host_ms.append((time.perf_counter_ns() - t0) / 1e6)
    t = s.backend.last_timing
    if t.device_ms is not None:
        s.device_ms.append(t.device_ms)
        s.h2d_ms.append(t.h2d_ms or 0.0)
        s.d2h_ms.append(t.d2h_ms or 0.0)


def _warm_up(s: Subject, seconds: float) -> None:
    end, n = time.perf_counter() + seconds, 0
    while n < WARMUP_ITERS or time.perf_counter() < end:
        s.backend.infer(s.inputs)
        n += 1


def measure(subjects: Sequence[Subject], opts: ProfileOptions) -> None:
    """Warm each subject up, then time them in `rounds` interleaved blocks so that every subject sees the
    same machine state (BENCHMARKS.md); each gets at least `iterations` runs and `duration_s` seconds."""
    rounds = max(1, opts.rounds)
    per_iters = -(-opts.iterations // rounds)
    per_seconds = opts.duration_s / rounds
    for s in subjects:
        _warm_up(s, opts.warmup_s)
    for _ in range(rounds):
        for s in subjects:
            if rounds > 1:
                _warm_up(s, 0.0)  # a few runs to get caches back after the others ran
            start, n = time.perf_counter(), 0
            while n < per_iters or time.perf_counter() - start < per_seconds:
                _run_once(s)
                n += 1
            s.seconds += time.perf_counter() - start


def result(s: Subject, opts: ProfileOptions) -> Dict[str, Any]:
    n = len(s.host_ms)
    r: Dict[str, Any] = {
        "schema": SCHEMA,
        "label": s.label,
        "artifact": s.artifact,
        "model": s.card.name,
        "task": s.card.task,
        "backend": s.record.to_dict(),
        "precision": s.precision,
        "batch": opts.batch,
        "iterations": n,
        "seconds": s.seconds,
        "throughput_images_per_s": opts.batch * n / max(s.seconds, 1e-9),
        "host_ms": summarize(s.host_ms, opts.percentiles),
        "device_ms": summarize(s.device_ms, opts.percentiles) if s.device_ms else None,
        "h2d_ms": summarize(s.h2d_ms, opts.percentiles) if s.h2d_ms else None,
        "d2h_ms": summarize(s.d2h_ms, opts.percentiles) if s.d2h_ms else None,
        "warnings": [],
    }
    cv_of, cv, limit = ("device", r["device_ms"]["cv"], UNSTABLE_DEVICE_CV) if s.device_ms else \
        ("host", r["host_ms"]["cv"], UNSTABLE_HOST_CV)
    if cv > limit:
        r["warnings"].append(f"unstable timing: the {cv_of} latency varies by {100 * cv:.1f}% (CV > "
                             f"{100 * limit:g}%), so clocks or other load changed during the run; {CLOCKS_HINT}")
    return r


def times_layers(backend: Backend) -> bool:
    """Whether the backend has per-layer timing (it overrides Backend.layer_times)."""
    return type(backend).layer_times is not Backend.layer_times


def layer_report(subject: Subject, iterations: int, top: int, latency_ms: float) -> Dict[str, Any]:
    """The slowest `top` layers over `iterations` profiled runs, with each one's share of all layers' time and
    how all layers' time compares with the measured per-inference latency (profilers add some overhead)."""
    times: List[LayerTime] = subject.backend.layer_times(subject.inputs, iterations)
    total = sum(t.ms for t in times)
    return {
        "source": f"{subject.backend.label or subject.backend.name} profiler",
        "iterations": iterations,
        "count": len(times),
        "total_ms": total,
        "latency_ms": latency_ms,
        "top": [{"name": t.name, "kind": t.kind, "device": t.device, "ms": t.ms,
                 "share": t.ms / total if total > 0 else 0.0} for t in times[:max(0, top)]],
    }


def profile(subject: Subject, opts: ProfileOptions) -> Dict[str, Any]:
    """Profile one open backend; the caller closes it."""
    if opts.layers and not times_layers(subject.backend):
        raise EdgekitError(f"{subject.artifact or subject.label}: --layers needs per-layer timing, which the "
                           f"{subject.backend.label or subject.backend.name} backend does not offer")
    prepare(subject, opts.batch)
    _warm_up(subject, opts.warmup_s)
    sampler = power.start_sampler(opts.power)
    try:
        measure([subject], dataclasses.replace(opts, warmup_s=0.0))  # warmed up above, before power sampling
    finally:
        used = power.stop_sampler(sampler, opts.batch * len(subject.host_ms))
    r = result(subject, opts)
    r["power"] = used
    if used and used.get("throttling"):
        r["warnings"].append("throttling during the run: " + "; ".join(used["throttling"]))
    r["jetson"] = power.jetson_state()
    r["environment"] = host_environment().to_dict()
    if opts.layers:  # after the measurement, which the profiler's overhead must not disturb
        per_inference = (r["device_ms"] or r["host_ms"])["mean"]
        r["layers"] = layer_report(subject, max(WARMUP_ITERS, opts.iterations), opts.top_layers, per_inference)
    return r


def layers_markdown(lay: Dict[str, Any]) -> List[str]:
    shown = len(lay["top"])
    ratio = lay["total_ms"] / lay["latency_ms"] if lay["latency_ms"] > 0 else 0.0
    lines = [
        "",
        f"## Slowest layers ({shown} of {lay['count']}; {lay['source']}, mean of {lay['iterations']} runs)",
        "",
        f"All layers: {lay['total_ms']:.3f} ms per inference, {100 * ratio:.0f}% of the measured mean latency "
        f"({lay['latency_ms']:.3f} ms; the profiler adds overhead, and a latency includes more than layers).",
        "",
        "| layer | kind | device | ms | share |",
        "|---|---|---|---:|---:|",
    ]
    for t in lay["top"]:  # node names and kinds come from the model file
        name, kind = (printable(v).replace("|", "\\|") for v in (t["name"], t["kind"] or "-"))
        lines.append(f"| {name} | {kind} | {printable(t['device'])} | {t['ms']:.3f} | {100 * t['share']:.1f}% |")
    return lines


def markdown(r: Dict[str, Any]) -> str:
    """The report as Markdown, also what `edgekit profile` prints. The card's and manifest's strings (model name,
    task, backend, precision, layer names) come from files that may be planted: each is shown `printable`, and the
    whole text once more, so no field can send a terminal control sequence."""
    pkeys = [k for k in r["host_ms"] if k.startswith("p")]
    device = r["backend"].get("device")
    lines = [
        f"# Profile: {printable(r['artifact'] or r['label'])}",
        "",
        f"- model: {printable(r['model'])} ({printable(r['task'])}); backend: {printable(r['backend']['name'])}"
        f"{' ' + printable(device) if device else ''}; precision: {printable(r['precision'])}; batch {r['batch']}",
        f"- {r['iterations']} iterations in {r['seconds']:.1f} s: throughput "
        f"{r['throughput_images_per_s']:.1f} images/s",
        "",
        "| latency (ms) | " + " | ".join(pkeys) + " | max | mean | CV |",
        "|---|" + "---:|" * (len(pkeys) + 3),
    ]
    for name, k in (("host (wall, per call)", "host_ms"), ("H2D copy (CUDA events)", "h2d_ms"),
                    ("compute (CUDA events)", "device_ms"), ("D2H copy (CUDA events)", "d2h_ms")):
        st = r.get(k)
        if st:
            lines.append(f"| {name} | " + " | ".join(f"{st[p]:.3f}" for p in pkeys) +
                         f" | {st['max']:.3f} | {st['mean']:.3f} | {100 * st['cv']:.1f}% |")
    lines += power.markdown_lines(r.get("power"), r.get("jetson"))
    for w in r["warnings"]:
        lines.append(f"- WARNING: {printable(w)}")
    if r.get("layers"):
        lines += layers_markdown(r["layers"])
    return printable("\n".join(lines) + "\n", multiline=True)


def write(r: Dict[str, Any], out: Path) -> None:
    from edgekit.runtime.artifacts import write_json, write_text

    write_json(out / "profile.json", r)
    write_text(out / "profile.md", markdown(r))


