"""`edgekit prune`: dependency-aware channel pruning through Torch-Pruning, then fine-tuning through the
training loop; optional 2:4 sparsity. Build side.

The pruned architecture is a record in the card (`pruning.channels`: output channels of every conv),
replayed onto a freshly built model before its state dict is loaded: a pruned checkpoint is tensors +
YAML like any other, never a pickled module (STYLE.md, Torch-Pruning's replay idea)."""

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from edgekit.build import sparsity
from edgekit.build.models.pruning_record import example_input, torch_pruning
from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard

IMPORTANCES = ("l1", "l2", "taylor")
MAX_RATIO = 0.9  # the search for a MACs or latency target stops here
# Modules Torch-Pruning reshapes; any other module holding its own parameters is left unpruned and named.
_HANDLED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)


@dataclass
class PruneOptions:
    out: str
    data: Optional[str] = None
    ratio: Optional[float] = None
    target_macs: Optional[float] = None
    target_latency_ms: Optional[float] = None
    backend: str = "onnxruntime"
    importance: str = "l2"
    round_to: int = 8
    finetune_epochs: int = 10
    lr: float = 1e-3  # half the training default: the pruned network needs real retraining, see README
    batch_size: int = 16
    sparsity: Optional[str] = None  # "2:4"
    format: str = "auto"
    device: str = "auto"
    max_train_images: int = 0  # tests: small fine-tuning runs
    max_val_images: int = 0
    progress: bool = True
    report_seconds: float = 3.0  # latency of each stage in the report: at least this long
    name: str = ""  # the pruned model's name in its card (default: NAME-pRATIO)

    def check(self) -> None:
        targets = [t for t in (self.ratio, self.target_macs, self.target_latency_ms) if t is not None]
        if len(targets) > 1:
            raise EdgekitError("give one of --ratio, --target-macs, --target-latency")
        if not targets and not self.sparsity:
            raise EdgekitError("nothing to do: give --ratio R, --target-macs M or --target-latency MS "
                               "(and/or --sparsity 2:4)")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise EdgekitError(f"--ratio {self.ratio:g}: the share of channels to remove lies strictly between 0 "
                               "and 1 (0.3 removes 30%)")
        if self.importance not in IMPORTANCES:
            raise EdgekitError(f"--importance {self.importance}: choose one of {', '.join(IMPORTANCES)}")
        if self.sparsity not in (None, sparsity.PATTERN):
            raise EdgekitError(f"--sparsity {self.sparsity}: only {sparsity.PATTERN} is supported")
        if self.round_to < 1:
            raise EdgekitError("--round-to must be 1 or more")
        for name, v in (("--target-macs", self.target_macs), ("--target-latency", self.target_latency_ms)):
            if v is not None and v <= 0:
                raise EdgekitError(f"{name} must be positive")
        if self.data is None and (self.finetune_epochs > 0 or self.importance == "taylor"):
            need = "fine-tuning" if self.finetune_epochs > 0 else "taylor importance"
            raise EdgekitError(f"{need} needs a dataset: pass --data DATASET (or --finetune-epochs 0 with l1/l2)")


# --- the model side --------------------------------------------------------------------------------
def output_layers(model: nn.Module) -> List[nn.Module]:
    """Layers whose channels are the model's output (never pruned)."""
    own = getattr(model, "output_layers", None)
    if own is not None:
        return list(own())
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1:]
    return last


def unhandled_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Modules holding parameters of their own that the pruner does not know how to reshape."""
    return [(name, m) for name, m in model.named_modules()
            if not isinstance(m, _HANDLED) and any(True for _ in m.parameters(recurse=False))]


def channel_counts(model: nn.Module) -> Dict[str, int]:
    return {name: int(m.out_channels) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def complexity(model: nn.Module, card: ModelCard) -> Tuple[int, int]:
    """(MACs, parameters) for one input of the card's size."""
    macs, params = torch_pruning().utils.count_ops_and_params(model, example_input(card))
    return int(macs), int(params)


def prune_channels(model: nn.Module, card: ModelCard, ratio: float, importance: str, round_to: int,
                   taylor_loss: Optional[Callable[[nn.Module], torch.Tensor]] = None) -> List[str]:
    """Remove `ratio` of the channels of every prunable layer group, in place; returns the layers left alone."""
    tp = torch_pruning()
    imp = {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
           "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
           "taylor": lambda: tp.importance.GroupTaylorImportance()}[importance]()
    skipped = unhandled_layers(model)
    ignored = output_layers(model) + [m for _, m in skipped]
    model.eval()
    pruner = tp.pruner.MetaPruner(model, example_input(card), importance=imp, pruning_ratio=ratio,
                                  ignored_layers=ignored, round_to=round_to)
    if importance == "taylor":
        assert taylor_loss is not None
        model.zero_grad()
        taylor_loss(model).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return [name for name, _ in skipped]


def pruned_card(card: ModelCard, model: nn.Module, record: Dict[str, Any], name: str) -> ModelCard:
    import dataclasses

    extra = dict(card.extra)
    extra["pruning"] = {**record, "channels": channel_counts(model)}
    extra.pop("metrics", None)  # the parent's accuracy no longer describes this model
    return dataclasses.replace(card, name=name, extra=extra)


# --- targets ---------------------------------------------------------------------------------------
def search_ratio(measure: Callable[[float], float], target: float, what: str, unit: str,
                 step: float) -> Tuple[float, List[Dict]]:
    """The smallest ratio on a grid of `step` whose measure is at or below target. A grid, not bisection: with
    channel counts rounded to 8 the measure is not monotonic in the ratio (a layer rounded to zero channels
    is skipped by the pruner, so a higher ratio can leave a larger model)."""
    tried: List[Dict[str, float]] = []

    def at(r: float) -> float:
        v = measure(r)
        tried.append({"ratio": round(r, 4), what: v})
        return v

    base = at(0.0)
    if base <= target:
        raise EdgekitError(f"the unpruned model already meets the target: {what} {base:.4g}{unit} <= "
                           f"{target:.4g}{unit}")
    for k in range(1, int(round(MAX_RATIO / step)) + 1):
        if at(k * step) <= target:
            return round(k * step, 4), tried
    best = min(tried, key=lambda t: t[what])
    raise EdgekitError(f"target {what} {target:.4g}{unit} is not reachable: the closest reached is "
                       f"{best[what]:.4g}{unit} at ratio {best['ratio']:g} (unpruned: {base:.4g}{unit})")


# --- the command -----------------------------------------------------------------------------------
def prune(checkpoint_path: str, opts: PruneOptions) -> Dict[str, Any]:
    from edgekit.build.models import checkpoint
    from edgekit.runtime.artifacts import ensure_writable_dir

    opts.check()
    t0 = time.perf_counter()
    model, card = checkpoint.load(checkpoint_path)
    out = Path(opts.out)
    if (out / "best.safetensors").exists() or (out / "pruned.safetensors").exists():
        raise EdgekitError(f"{out}: holds a pruned model already; choose another -o")
    ds_val = None
    if opts.data:
        from edgekit.runtime.data import datasets

        ds_val = datasets.load(card.task, opts.data, "val", opts.format)
        datasets.check_classes(ds_val, card.classes, f"{checkpoint_path} model")
    before_channels = channel_counts(model)
    taylor = _taylor_loss(card, opts) if opts.importance == "taylor" else None

    def pruned_copy(r: float) -> nn.Module:
        m, _ = checkpoint.load(checkpoint_path)
        if r > 0:
            prune_channels(m, card, r, opts.importance, opts.round_to, taylor)
        return m

    ratio, tried, skipped = opts.ratio or 0.0, [], []
    if opts.target_macs is not None:
        ratio, tried = search_ratio(lambda r: complexity(pruned_copy(r), card)[0] / 1e6, opts.target_macs / 1e6,
                                    "MACs", "M", step=0.05)
    elif opts.target_latency_ms is not None:
        ratio, tried = search_ratio(lambda r: _latency_ms(pruned_copy(r), card, opts.backend),
                                    opts.target_latency_ms, "latency_ms", " ms", step=0.1)
    ensure_writable_dir(out)  # only now: a refused target leaves nothing behind
    if ratio > 0:
        skipped = prune_channels(model, card, ratio, opts.importance, opts.round_to, taylor)
    record = {"tool": f"torch-pruning {torch_pruning().__version__}", "ratio": round(ratio, 4),
              "importance": opts.importance, "round_to": opts.round_to, "from": str(checkpoint_path),
              "layers_left_unpruned": skipped}
    name = opts.name or f"{card.name}-p{round(100 * ratio)}" + ("-sparse24" if opts.sparsity else "")
    new_card = pruned_card(card, model, record, name)
    if opts.sparsity:
        masks = sparsity.torch_masks(model)
        sparsity.apply_masks(model, masks)
        new_card.extra["sparsity"] = {"pattern": sparsity.PATTERN, "layers": len(masks)}
    pruned_path = checkpoint.save(model, new_card, out / "pruned")
    final = pruned_path
    if opts.finetune_epochs > 0:
        final = _finetune(pruned_path, new_card, opts)
    report = _report(Path(checkpoint_path), pruned_path, final, before_channels, ds_val, opts, out)
    report.update(ratio=ratio, search=tried, layers_left_unpruned=skipped, checkpoint=str(final),
                  seconds=round(time.perf_counter() - t0, 1))
    from edgekit.runtime.artifacts import write_json, write_text

    write_json(out / "prune_report.json", report)
    write_text(out / "prune_report.md", markdown(report))
    return report


def _taylor_loss(card: ModelCard, opts: PruneOptions) -> Callable[[nn.Module], torch.Tensor]:
    """The training loss on a batch of training images: Taylor importance needs gradients."""
    from edgekit.build.train.loop import Batches
    from edgekit.build.train.objectives import objective
    from edgekit.runtime.data import datasets

    ds = datasets.load(card.task, opts.data or "", "train", opts.format)
    batch = next(Batches(ds, card, limit=32).iterate(32, None))

    def loss(model: nn.Module) -> torch.Tensor:
        return objective(card.task).loss(model, batch[0], batch[1], "cpu")[0]

    return loss


def _latency_ms(model: nn.Module, card: ModelCard, backend: str) -> float:
    """p50 latency of this candidate on the chosen backend, measured (not estimated from MACs)."""
    from edgekit.build.engine_build import BuildOptions, build_engine
    from edgekit.build.export import export
    from edgekit.build.models import checkpoint
    from edgekit.runtime.measure import profile as prof
    from edgekit.runtime.opening import open_engine

    with tempfile.TemporaryDirectory(prefix="edgekit-prune-") as tmp:
        c = pruned_card(card, model, {}, card.name)
        checkpoint.save(model, c, Path(tmp) / "candidate")
        onnx_path = export(Path(tmp) / "candidate.safetensors", Path(tmp) / "candidate.onnx").path
        built = build_engine(onnx_path, Path(tmp) / "candidate.engine", BuildOptions(backend=backend))
        with open_engine(built.engine) as opened:
            s = prof.of(opened, "candidate")
            prof.prepare(s, 1)
            prof.measure([s], prof.ProfileOptions(warmup_s=0.3, iterations=100, duration_s=1.0))
    return prof.result(s, prof.ProfileOptions())["host_ms"]["p50"]


def _finetune(pruned: Path, card: ModelCard, opts: PruneOptions) -> Path:
    from edgekit.build.train.loop import TrainConfig, train

    cfg = TrainConfig(task=card.task, data=opts.data or "", out=opts.out, arch=card.arch, format=opts.format,
                      imgsz=card.input_size, resize=card.resize_mode, epochs=opts.finetune_epochs,
                      batch_size=opts.batch_size, lr=opts.lr, warmup_epochs=0.0, patience=opts.finetune_epochs,
                      init=str(pruned), name=card.name, device=opts.device, max_train_images=opts.max_train_images,
                      max_val_images=opts.max_val_images, progress=opts.progress)
    rep = train(cfg)
    return Path(rep["checkpoint"])


# --- the report ------------------------------------------------------------------------------------
def _report(original: Path, pruned: Path, final: Path, before_channels: Dict[str, int], ds_val: Any,
            opts: PruneOptions, out: Path) -> Dict[str, Any]:
    """Parameters, MACs, file size, ONNX Runtime CPU latency (measured side by side) and val accuracy of
    the model before pruning, after pruning and after fine-tuning."""
    from edgekit.build.export import export
    from edgekit.build.models import checkpoint
    from edgekit.build.onnx_io import load_model
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgekit.runtime.manifest import BackendRecord
    from edgekit.runtime.measure import profile as prof
    from edgekit.runtime.measure.evaluate import evaluate

    stages = [("before", original), ("pruned", pruned)] + ([("fine-tuned", final)] if final != pruned else [])
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
        popts = prof.ProfileOptions(warmup_s=0.5, iterations=200, duration_s=opts.report_seconds, rounds=3)
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
    from edgekit.runtime.measure.evaluate import primary_metric

    return {"schema": "edgekit.prune/1", "task": card.task, "metric": primary_metric(card.task),
            "importance": opts.importance, "round_to": opts.round_to, "sparsity": opts.sparsity,
            "finetune_epochs": opts.finetune_epochs, "data": opts.data, "stages": rows,
            "channels_before": before_channels}


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


def parse_macs(text: str) -> float:
    """'40M' -> 4e7, '1.2G' -> 1.2e9, '5e7' -> 5e7."""
    t = text.strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(t[-1:], 1.0)
    try:
        v = float(t[:-1] if t[-1:] in "KMG" else t) * scale
    except ValueError:
        raise EdgekitError(f"--target-macs {text}: expected a number like 40M or 4e7") from None
    if not math.isfinite(v):
        raise EdgekitError(f"--target-macs {text}: expected a finite number")
    return v
