"""`edgekit prune`: dependency-aware channel pruning through Torch-Pruning, then fine-tuning through the
training loop; optional 2:4 sparsity. Build side.

The pruned architecture is a record in the card (`pruning.channels`: output channels of every conv),
replayed onto a freshly built model before its state dict is loaded: a pruned checkpoint is tensors +
YAML like any other, never a pickled module (STYLE.md, Torch-Pruning's replay idea)."""

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from edgekit.build import sparsity
from edgekit.build.models.pruning_record import prunable, torch_pruning
from edgekit.build.pruning.channels import (
    IMPORTANCES,
    channel_counts,
    complexity,
    named_layers,
    prune_channels,
    pruned_card,
)
from edgekit.build.pruning.report import markdown, measure_stages
from edgekit.build.pruning.targets import search_ratio
from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard
from edgekit.runtime.measure.evaluate import primary_metric


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
    lr: Optional[float] = None  # default: the model's recorded training rate (README: pruning needs retraining)
    distill: bool = False  # fine-tune with distillation from the unpruned model
    distill_weight: float = 0.0  # 0: the task's default
    batch_size: int = 16
    sparsity: Optional[str] = None  # "2:4"
    format: str = "auto"
    device: str = "auto"
    max_train_images: int = 0  # tests: small fine-tuning runs
    max_val_images: int = 0
    progress: bool = True
    report_seconds: float = 3.0  # latency of each stage in the report: at least this long
    name: str = ""  # the pruned model's name in its card (default: NAME-pRATIO)
    ignore_layers: List[str] = field(default_factory=list)  # layers to leave unpruned besides the output layers

    def check(self) -> None:
        if self.distill and self.finetune_epochs <= 0:
            raise EdgekitError("--distill teaches the pruned model while it is fine-tuned: give --finetune-epochs > 0")
        if self.lr is not None and not self.lr > 0:
            raise EdgekitError(f"--lr {self.lr:g}: the learning rate must be positive")
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


# --- the command -----------------------------------------------------------------------------------
def prune(checkpoint_path: str, opts: PruneOptions) -> Dict[str, Any]:
    from edgekit.build.models import checkpoint
    from edgekit.runtime.artifacts import ensure_writable_dir

    opts.check()
    t0 = time.perf_counter()
    model, card = checkpoint.load(checkpoint_path)
    named_layers(model, opts.ignore_layers)  # a name the model lacks is refused before anything is written
    if opts.finetune_epochs > 0:  # refused now, not after pruning: fine-tuning must be able to train it
        from edgekit.build.train.objectives import objective

        objective(card.task).check_model(model, card)
    out = Path(opts.out)
    if (out / "best.safetensors").exists() or (out / "pruned.safetensors").exists():
        raise EdgekitError(f"{out}: holds a pruned model already; choose another -o")
    ds_val = None
    if opts.data:
        from edgekit.runtime.data import datasets

        ds_val = datasets.load(card.task, opts.data, "val", opts.format)
        datasets.check_classes(ds_val, card.classes, f"{checkpoint_path} model")
    prunable(model, card)  # the layers the report lists are those pruning sees
    before_channels = channel_counts(model)
    taylor = _taylor_loss(card, opts) if opts.importance == "taylor" else None

    def pruned_copy(r: float) -> nn.Module:
        m, _ = checkpoint.load(checkpoint_path)
        if r > 0:
            prune_channels(m, card, r, opts.importance, opts.round_to, taylor, opts.ignore_layers)
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
        skipped = prune_channels(model, card, ratio, opts.importance, opts.round_to, taylor, opts.ignore_layers)
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
        final = _finetune(pruned_path, new_card, opts, str(checkpoint_path))
    stages = [("before", Path(checkpoint_path)), ("pruned", pruned_path)]
    stages += [("fine-tuned", final)] if final != pruned_path else []
    report = {"schema": "edgekit.prune/1", "task": card.task, "metric": primary_metric(card.task),
              "importance": opts.importance, "round_to": opts.round_to, "sparsity": opts.sparsity,
              "finetune_epochs": opts.finetune_epochs, "data": opts.data,
              "stages": measure_stages(stages, ds_val, opts.report_seconds), "channels_before": before_channels}
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


def _finetune(pruned: Path, card: ModelCard, opts: PruneOptions, teacher: str) -> Path:
    """Fine-tune the pruned model on the schedule it was trained with (its card's record), unless told otherwise."""
    from edgekit.build.train.loop import TrainConfig, recorded_schedule, train

    schedule = recorded_schedule(card)
    lr = opts.lr or schedule.get("lr", 2e-3)
    said = f" (from {schedule['from']})" if schedule and not opts.lr else ""
    print(f"fine-tuning: {opts.finetune_epochs} epochs, {schedule.get('optimizer', 'adamw')} lr {lr:g}{said}"
          + (f", distilled from {teacher}" if opts.distill else ""), flush=True)
    cfg = TrainConfig(task=card.task, data=opts.data or "", out=opts.out, arch=card.arch, format=opts.format,
                      imgsz=card.input_size, resize=card.resize_mode, epochs=opts.finetune_epochs,
                      batch_size=opts.batch_size, optimizer=schedule.get("optimizer", "adamw"), lr=lr,
                      weight_decay=schedule.get("weight_decay", 5e-4), warmup_epochs=0.0,
                      patience=opts.finetune_epochs, init=str(pruned), name=card.name, device=opts.device,
                      distill=teacher if opts.distill else "", distill_weight=opts.distill_weight,
                      max_train_images=opts.max_train_images, max_val_images=opts.max_val_images,
                      progress=opts.progress)
    rep = train(cfg)
    return Path(rep["checkpoint"])
