"""`edgekit sweep`: every variant this platform can build (backend x precision x calibration method x
GPU/DLA) of one or more checkpoints, each evaluated on a labelled set and profiled side by side with the
PyTorch FP32 reference; a table, a JSON and a latency-vs-accuracy Pareto plot. Build side."""

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgekit.build.engine_build import BuildOptions, build_engine, unsupported
from edgekit.build.torch_backend import TorchBackend
from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.artifacts import ensure_writable_dir, write_json, write_text
from edgekit.runtime.backends import Backend, availability, backend_class, engine_builders
from edgekit.runtime.backends.base import TENSORRT_QDQ
from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.manifest import host_environment
from edgekit.runtime.measure import profile as prof
from edgekit.runtime.measure.evaluate import accuracy_text, evaluate, primary_metric
from edgekit.runtime.opening import open_engine

SCHEMA = "edgekit.sweep/1"
PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class SweepOptions:
    data: str
    out: str = "runs/sweep"
    precisions: List[str] = field(default_factory=lambda: list(PRECISIONS))
    calib_methods: List[str] = field(default_factory=lambda: ["minmax"])
    backends: List[str] = field(default_factory=list)  # empty: every engine backend available here
    dla: bool = False
    calib: Optional[str] = None  # default: the dataset's val images (train when evaluating on val)
    calib_size: int = 200
    split: str = "test"
    fmt: str = "auto"
    limit: int = 0  # evaluate on the first N images only (0: all)
    accuracy_budget: Optional[float] = None  # points of the primary metric
    device: str = "cpu"  # for the PyTorch reference row
    profile: prof.ProfileOptions = field(default_factory=lambda: prof.ProfileOptions(
        iterations=200, duration_s=6.0, rounds=3, power=False))


@dataclass
class Variant:
    model: str  # the card's name: distinct for an original and its pruned versions
    backend: str
    precision: str
    calib_method: Optional[str] = None
    dla_core: Optional[int] = None

    @property
    def label(self) -> str:
        parts = [self.model, self.backend, self.precision]
        parts += [self.calib_method] if self.calib_method else []
        parts += [f"dla{self.dla_core}"] if self.dla_core is not None else []
        return " ".join(parts)

    def engine_path(self, out: Path) -> Path:
        return out / (_safe(self.label.replace(" ", ".")) + backend_class(self.backend).capabilities.file_suffix)


def _check_choices(values: List[str], allowed: Tuple[str, ...], flag: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise EdgekitError(f"{flag} {','.join(bad) or '(empty)'}: choose from {', '.join(allowed)}")


def _backends(opts: SweepOptions) -> List[str]:
    avail = {name: (ok, why) for name, ok, why in availability(engine_builders())}
    if not opts.backends:
        chosen = [n for n, (ok, _) in avail.items() if ok]
        if not chosen:
            raise EdgekitError("no engine backend is available here: " +
                               "; ".join(f"{n}: {why}" for n, (_, why) in avail.items()))
        return chosen
    _check_choices(opts.backends, tuple(avail), "--backends")
    for n in opts.backends:
        if not avail[n][0]:
            raise EdgekitError(f"--backends {n}: not available here: {avail[n][1]}")
    return list(opts.backends)


def _dla_cores(backends: List[str]) -> List[int]:
    with_dla = [b for b in backends if backend_class(b).capabilities.dla]
    if not with_dla:
        builders = [b for b in engine_builders() if backend_class(b).capabilities.dla]
        raise EdgekitError(f"--dla: there is no DLA here (DLA engines are built by "
                           f"{' or '.join(backend_class(b).label for b in builders)} on a Jetson, and the "
                           f"{' or '.join(builders)} backend is not available)")
    n = max(backend_class(b).dla_cores() for b in with_dla)
    if n == 0:
        raise EdgekitError("--dla: this device has no DLA cores (Orin Nano and desktop GPUs have none)")
    return list(range(n))


def plan(models: List[str], backends: List[str], dla: List[int], opts: SweepOptions) -> List[Variant]:
    out = []
    for model in models:
        for backend in backends:
            for precision in opts.precisions:
                for method in (opts.calib_methods if precision == "int8" else [None]):
                    cores: List[Optional[int]] = [None] + (list(dla) if backend_class(backend).capabilities.dla else [])
                    out += [Variant(model, backend, precision, method, core) for core in cores]
    return out


def _calibration(opts: SweepOptions) -> str:
    if opts.calib:
        return opts.calib
    for split in ("val", "train"):
        folder = Path(opts.data) / "images" / split
        if split != opts.split and folder.is_dir():
            return str(folder)
    raise EdgekitError(f"INT8 needs calibration images: pass --calib (no images/val or images/train in {opts.data} "
                       f"besides the '{opts.split}' split that is evaluated)")


def _load_checkpoints(paths: List[str]) -> List[Tuple[Path, ModelCard]]:
    """(weights file, card) of each checkpoint, all of one task; a name two cards share gets the folder added
    (edgenet-det-s-p50@run2), as rows and engine files are named after it."""
    import dataclasses

    from edgekit.build.models import checkpoint

    found: List[Tuple[Path, ModelCard]] = []
    for p in paths:
        weights, card_path = checkpoint.resolve(p)
        if any(w.resolve() == weights.resolve() for w, _ in found):
            raise EdgekitError(f"{p}: given twice")
        card = ModelCard.load(card_path)
        if any(c.name == card.name for _, c in found):
            card = dataclasses.replace(card, name=f"{card.name}@{weights.parent.name}")
        found.append((weights, card))
    tasks = {c.task for _, c in found}
    if len(tasks) > 1:
        raise EdgekitError("sweep compares models of one task; got " +
                           ", ".join(f"{p} ({c.task})" for p, c in found))
    return found


def _accuracy(backend: Backend, card: ModelCard, ds: datasets.Dataset, limit: int) -> Dict[str, Any]:
    return evaluate(lambda x: backend.infer([x]), card, ds, limit)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _reference(path: Path, card: ModelCard, ds: datasets.Dataset, opts: SweepOptions) -> Tuple[Dict, prof.Subject]:
    """The checkpoint itself on eager PyTorch: the row every other is compared with."""
    b, _, record = TorchBackend.open_checkpoint(path, opts.device)
    label = f"{card.name} torch fp32 ({record.device})"
    row = {"variant": label, "checkpoint": str(path), "backend": "torch", "precision": "fp32", "calib_method": None,
           "device": record.device, "status": "ok", "file": str(path), "bytes": path.stat().st_size,
           "accuracy": _accuracy(b, card, ds, opts.limit)}
    return row, prof.Subject(label, b, card, record, "fp32", str(path))


def _variant(v: Variant, path: Path, onnx_path: Path, card: ModelCard, ds: datasets.Dataset, calib: Optional[str],
             opts: SweepOptions) -> Tuple[Dict, Optional[prof.Subject]]:
    """Build, open and evaluate one variant; a row saying why where it is skipped or fails."""
    caps = backend_class(v.backend).capabilities
    device = f"dla{v.dla_core}" if v.dla_core is not None else caps.device_label
    row: Dict[str, Any] = {"variant": v.label, "checkpoint": str(path), "backend": v.backend,
                           "precision": v.precision, "calib_method": v.calib_method, "device": device}
    why = unsupported(v.backend, v.precision, v.dla_core)
    if why:
        return {**row, "status": "skipped", "reason": why}, None
    try:
        built = build_engine(onnx_path, v.engine_path(Path(opts.out)), BuildOptions(
            backend=v.backend, precision=v.precision, calib=calib, calib_method=v.calib_method or "minmax",
            calib_size=opts.calib_size, dla_core=v.dla_core))
        opened = open_engine(built.engine)
    except EdgekitError as e:
        return {**row, "status": "failed", "reason": str(e)}, None
    row.update(status="ok", file=str(built.engine), bytes=built.bytes, build_seconds=round(built.seconds, 2),
               accuracy=_accuracy(opened.backend, card, ds, opts.limit))
    qdq = opened.manifest.side_file(built.engine, TENSORRT_QDQ) if opened.manifest else None
    if qdq and caps.int8_file != TENSORRT_QDQ:  # what the Jetson's INT8 engine will score, predicted here
        with OnnxRuntimeBackend(qdq) as q:
            row["accuracy_tensorrt_qdq_on_cpu"] = _accuracy(q, card, ds, opts.limit)
    return row, prof.of(opened, v.label)


def sweep(checkpoint_paths: List[str], opts: SweepOptions) -> Dict[str, Any]:
    from edgekit.build.export import export

    t0 = time.perf_counter()
    _check_choices(opts.precisions, PRECISIONS, "--precisions")
    _check_choices(opts.calib_methods, CALIB_METHODS, "--calib-methods")
    ckpts = _load_checkpoints(checkpoint_paths)
    task = ckpts[0][1].task
    backends = _backends(opts)
    dla = _dla_cores(backends) if opts.dla else []
    ds = datasets.load(task, opts.data, opts.split, opts.fmt)
    for path, card in ckpts:
        datasets.check_classes(ds, card.classes, f"{path} model")
    calib = _calibration(opts) if "int8" in opts.precisions else None
    out = ensure_writable_dir(opts.out)
    metric = primary_metric(task)

    rows: List[Dict[str, Any]] = []
    subjects: List[Tuple[Dict[str, Any], prof.Subject]] = []
    try:
        for path, card in ckpts:
            onnx_path = export(path, out / (_safe(card.name) + ".onnx")).path
            for v in [None, *plan([card.name], backends, dla, opts)]:
                row, subject = _reference(path, card, ds, opts) if v is None else \
                    _variant(v, path, onnx_path, card, ds, calib, opts)
                rows.append(row)
                if subject is not None:
                    subjects.append((row, subject))
        for _, s in subjects:
            prof.prepare(s, opts.profile.batch)
        prof.measure([s for _, s in subjects], opts.profile)
        for row, s in subjects:
            r = prof.result(s, opts.profile)
            row.update(latency_ms=r["host_ms"], device_ms=r["device_ms"],
                       throughput_images_per_s=r["throughput_images_per_s"], warnings=r["warnings"])
    finally:
        for _, s in subjects:
            s.backend.close()

    reference = rows[0]["accuracy"][metric]
    for row in rows:
        if row["status"] == "ok":
            row["primary"] = row["accuracy"][metric]
            row["delta_points"] = round(100 * (row["primary"] - reference), 2)
    mark_pareto(rows, opts.accuracy_budget)
    report = {"schema": SCHEMA, "task": task, "metric": metric, "reference": rows[0]["variant"],
              "data": {"root": str(opts.data), "split": opts.split, "images": rows[0]["accuracy"]["images"]},
              "calibration": calib, "accuracy_budget_points": opts.accuracy_budget,
              "profile": {"iterations": opts.profile.iterations, "duration_s": opts.profile.duration_s,
                          "rounds": opts.profile.rounds, "batch": opts.profile.batch},
              "rows": rows, "environment": host_environment().to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "sweep.json", report)
    write_text(out / "sweep.md", markdown(report))
    plot = pareto_plot(report, out / "pareto.png")
    report["plot"] = str(plot) if plot else None
    return report


def mark_pareto(rows: List[Dict[str, Any]], budget: Optional[float]) -> None:
    """Flag the variants no other variant beats on both p90 latency and accuracy; with a budget, flag the
    fastest variant whose accuracy is at most `budget` points below the reference."""
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        r["pareto"] = not any(o is not r and o["latency_ms"]["p90"] <= r["latency_ms"]["p90"]
                              and o["primary"] >= r["primary"]
                              and (o["latency_ms"]["p90"] < r["latency_ms"]["p90"] or o["primary"] > r["primary"])
                              for o in ok)
        r["chosen"] = False
    if budget is not None:
        within = [r for r in ok if r["delta_points"] >= -budget]
        if within:
            min(within, key=lambda r: r["latency_ms"]["p90"])["chosen"] = True


def markdown(r: Dict[str, Any]) -> str:
    task = r["task"]
    what = registry.task(task).metric_label
    lines = [f"# Sweep: {r['reference']} and its variants", "",
             f"- accuracy: {what} on {r['data']['root']} split '{r['data']['split']}' ({r['data']['images']} images);"
             f" difference in points of {r['metric']} from the PyTorch FP32 reference",
             f"- latency: host wall time per call, batch {r['profile']['batch']}, measured side by side in "
             f"{r['profile']['rounds']} interleaved rounds (at least {r['profile']['iterations']} iterations and "
             f"{r['profile']['duration_s']:g} s per variant); INT8 calibrated on {r['calibration']}",
             f"- machine: {r['environment']['cpu']} ({r['environment']['cpu_threads']} threads)", "",
             f"| variant | size | p50 ms | p90 ms | p99 ms | images/s | {what} | Δ points | |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for row in r["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['variant']} | | | | | | | | {row['status']}: {row['reason']} |")
            continue
        lat = row["latency_ms"]
        size = f"{row['bytes'] / 1024:.0f} KB" if row.get("bytes") else ""
        notes = []
        if row.get("chosen"):
            notes.append(f"**fastest within {r['accuracy_budget_points']:g} points**")
        if row.get("pareto"):
            notes.append("Pareto front")
        if "accuracy_tensorrt_qdq_on_cpu" in row:
            qdq = accuracy_text(task, row["accuracy_tensorrt_qdq_on_cpu"], compact=True)
            notes.append(f"TensorRT Q/DQ file on CPU: {qdq}")
        if any(w.startswith("unstable timing") for w in row.get("warnings", [])):
            notes.append(f"unstable timing (CV {100 * lat['cv']:.0f}%)")
        lines.append(f"| {row['variant']} | {size} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | "
                     f"{row['throughput_images_per_s']:.1f} | {accuracy_text(task, row['accuracy'], compact=True)} | "
                     f"{row['delta_points']:+.2f} | {'; '.join(notes)} |")
    if r["accuracy_budget_points"] is not None and not any(row.get("chosen") for row in r["rows"]):
        lines.append(f"\nNo variant stays within {r['accuracy_budget_points']:g} points of the reference.")
    return "\n".join(lines) + "\n"


def pareto_plot(r: Dict[str, Any], path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [row for row in r["rows"] if row["status"] == "ok"]
    one_model = len({row["checkpoint"] for row in ok}) == 1
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in ok:
        x, y = row["latency_ms"]["p90"], row["primary"]
        ax.scatter([x], [y], s=80 if row.get("chosen") else 30, marker="*" if row.get("chosen") else "o",
                   color="tab:red" if row.get("pareto") else "tab:grey", zorder=3)
        name = row["variant"].split(" ", 1)[1] if one_model else row["variant"]
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = sorted((row for row in ok if row.get("pareto")), key=lambda row: row["latency_ms"]["p90"])
    ax.plot([row["latency_ms"]["p90"] for row in front], [row["primary"] for row in front], color="tab:red",
            lw=1, label="Pareto front")
    if r["accuracy_budget_points"] is not None:
        ax.axhline(ok[0]["primary"] - r["accuracy_budget_points"] / 100, ls=":", color="grey",
                   label=f"budget: {r['accuracy_budget_points']:g} points below the reference")
    ax.set_xlabel("p90 latency per call (ms)")
    ax.set_ylabel(r["metric"])
    ax.set_title("Latency vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from edgekit.runtime.artifacts import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
