"""The training loop behind `edgekit train`: both tasks, resumable, early-stopped on the val metric."""

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from edgekit import __version__
from edgekit.build import sparsity
from edgekit.build.models import checkpoint, model_task, sources
from edgekit.build.train.augment import augment
from edgekit.build.train.logs import EpochLog, diagnose, plot_curves
from edgekit.build.train.objectives import objective
from edgekit.errors import EdgekitError
from edgekit.runtime.artifacts import atomic_path, ensure_writable_dir, write_json, write_text
from edgekit.runtime.card import ModelCard, _yaml
from edgekit.runtime.data import datasets
from edgekit.runtime.measure.evaluate import Scorer, primary_metric, truth_of
from edgekit.runtime.preprocess import resize, to_tensor

# Normalization of the shipped models (ImageNet statistics, as most pretrained backbones expect).
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


@dataclass
class TrainConfig:
    task: str
    data: str
    out: str
    arch: str = ""
    format: str = "auto"
    imgsz: Tuple[int, int] = (256, 256)
    resize: str = ""  # letterbox | stretch; default letterbox for detection, stretch for segmentation
    epochs: int = 30
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    patience: int = 8
    seed: int = 0
    init: str = ""
    init_backbone: str = ""  # a checkpoint of any task whose backbone fits (e.g. detector -> segmenter)
    distill: str = ""  # teacher checkpoint (e.g. the unpruned model): the student also learns its predictions
    distill_weight: float = 0.0  # 0: the task's default (Objective.distill_weight)
    freeze: str = ""  # "" or "backbone"
    name: str = ""
    device: str = "auto"
    max_train_images: int = 0  # 0 = all
    max_val_images: int = 0
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        c = dataclasses.replace(self)
        obj = objective(c.task)
        if not c.arch and c.init:  # fine-tuning: the architecture of the checkpoint it starts from
            card_path = checkpoint.resolve(c.init)[1]
            init_card = ModelCard.load(card_path)
            if init_card.task != c.task:
                raise EdgekitError(f"{card_path}: this is a {init_card.task} model, a {c.task} model is needed")
            c.arch = init_card.arch
        c.arch = c.arch or obj.default_arch
        if sources.is_source(c.arch):  # a user's model: fine-tuned from its imported checkpoint
            if not c.init:
                raise EdgekitError(f"--arch {c.arch}: a model you bring trains from its checkpoint: pass --init CKPT "
                                   "(from edgekit import-model)")
        elif model_task(c.arch) != c.task:
            raise EdgekitError(f"--arch {c.arch} is a {model_task(c.arch)} model, not {c.task}")
        c.resize = c.resize or obj.default_resize
        c.imgsz = (int(c.imgsz[0]), int(c.imgsz[1]))
        if c.imgsz[0] % 32 or c.imgsz[1] % 32 or min(c.imgsz) < 32:
            raise EdgekitError(f"--imgsz must be multiples of 32, got {c.imgsz[0]}x{c.imgsz[1]}")
        if c.optimizer not in ("adamw", "sgd"):
            raise EdgekitError(f"--optimizer must be adamw or sgd, not '{c.optimizer}'")
        if c.init and c.init_backbone:
            raise EdgekitError("--init and --init-backbone exclude each other")
        if c.freeze not in ("", "backbone"):
            raise EdgekitError(f"--freeze takes 'backbone', not '{c.freeze}'")
        if c.epochs < 1 or c.batch_size < 1 or not c.lr > 0:
            raise EdgekitError("--epochs, --batch-size and --lr must be positive")
        if c.distill_weight < 0:
            raise EdgekitError("--distill-weight must be positive")
        c.distill_weight = c.distill_weight or obj.distill_weight
        c.name = c.name or Path(c.out).name
        if c.device == "auto":
            c.device = "cuda" if torch.cuda.is_available() else "cpu"
        return c


class Batches:
    """Shuffled, augmented batches of one split, preprocessed through the card's function."""

    def __init__(self, ds: datasets.Dataset, card: ModelCard, limit: int = 0) -> None:
        self.ds, self.card = ds, card
        self.objective = objective(card.task)
        n = len(ds) if not limit else min(limit, len(ds))
        # Decode everything once up front: a corrupt image fails before any output is written.
        self.items = [datasets.load_sample(ds, i) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def iterate(self, batch_size: int, rng: Optional[np.random.Generator]):
        """Yields (images [B,3,H,W], targets, transforms, indices); augmented and shuffled when rng is given."""
        order = rng.permutation(len(self.items)) if rng is not None else np.arange(len(self.items))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            tensors, targets, transforms = [], [], []
            for i in idx:
                img, boxes, classes, mask = self.items[i]
                if rng is not None:
                    img, boxes, classes, mask = augment(rng, img, boxes, classes, mask, self.card.pad_value)
                resized, tf = resize(img, self.card)
                tensors.append(to_tensor(resized, self.card))
                transforms.append(tf)
                targets.append(self.objective.target(tf, boxes, classes, mask, self.card))
            yield torch.from_numpy(np.concatenate(tensors)), targets, transforms, idx


def make_card(cfg: TrainConfig, classes: List[str]) -> ModelCard:
    return ModelCard(
        name=cfg.name,
        task=cfg.task,
        arch=cfg.arch,
        classes=list(classes),
        input_size=cfg.imgsz,
        mean=DEFAULT_MEAN,
        std=DEFAULT_STD,
        resize_mode=cfg.resize,
        score_threshold=0.25,
        iou_threshold=0.5,
        max_detections=100,
        extra={"edgekit_version": __version__},
    )


@torch.no_grad()
def evaluate(model, batches: Batches, card: ModelCard, device: str, batch_size: int = 16) -> Dict[str, Any]:
    """Validation loss and task metric of a torch model, post-processed as at run time."""
    model.eval()
    losses = []
    scorer = Scorer(card)
    for images, targets, transforms, idx in batches.iterate(batch_size, None):
        images = images.to(device)
        loss, _ = batches.objective.loss(model, images, targets, device)
        losses.append(float(loss) * len(idx))
        outputs = {card.output_name: model(images).float().cpu().numpy()}
        for k, (tf, i) in enumerate(zip(transforms, idx)):
            scorer.add(outputs, tf, truth_of(batches.items[i]), index=k)
    result: Dict[str, Any] = {"loss": sum(losses) / max(1, len(batches))}
    result.update(scorer.result())
    result.pop("images")
    return result


def train(cfg: TrainConfig, resume: bool = False) -> Dict[str, Any]:
    """Train per `cfg` into cfg.out; returns the final report (also written as report.json)."""
    cfg = cfg.resolved()
    run_dir = Path(cfg.out)
    state_path = run_dir / "last.pt"
    if resume and not state_path.is_file():
        raise EdgekitError(f"{state_path}: nothing to resume (no last.pt in the run folder)")
    state = load_resume_state(state_path, cfg.device) if resume else {}  # refused before any other work
    if not resume and (run_dir / "best.safetensors").exists():
        raise EdgekitError(f"{run_dir}: holds a finished run; choose another --out or --resume it")
    torch.manual_seed(cfg.seed)

    train_ds = datasets.load(cfg.task, cfg.data, "train", cfg.format)
    val_ds = datasets.load(cfg.task, cfg.data, "val", cfg.format)
    datasets.check_classes(val_ds, train_ds.classes, "train split")
    card = make_card(cfg, train_ds.classes)
    if cfg.init:
        init_model, init_card = checkpoint.load(cfg.init, task=cfg.task)
        if init_card.arch != cfg.arch:
            raise EdgekitError(f"--init {cfg.init}: architecture '{init_card.arch}' differs from --arch {cfg.arch}")
        objective(cfg.task).check_model(init_model, init_card)
        del init_model
        if sources.is_source(cfg.arch):  # a user's model keeps its source and its own preprocessing and outputs
            card = dataclasses.replace(init_card, name=card.name, classes=card.classes, input_size=card.input_size,
                                       extra={**card.extra, "source": init_card.extra.get("source", {})})
            card.extra.pop("metrics", None)
        for key in ("pruning", "sparsity"):  # fine-tuning a pruned or sparse model keeps it so
            if key in init_card.extra:
                card.extra[key] = init_card.extra[key]
    teacher = _teacher(cfg, card) if cfg.distill else None
    card.extra["training"] = schedule_record(cfg)
    model = checkpoint.build(card)
    if cfg.init:
        checkpoint.load_weights_into(model, cfg.init, cfg.arch)
    if cfg.init_backbone:
        checkpoint.resolve(cfg.init_backbone)
        checkpoint.load_weights_into(model, cfg.init_backbone, cfg.arch, prefix="backbone.")
    if teacher is not None:  # refused before anything is written
        _check_teacher(teacher, model, card, cfg.distill)
    train_b = Batches(train_ds, card, cfg.max_train_images)
    val_b = Batches(val_ds, card, cfg.max_val_images)

    ensure_writable_dir(run_dir)
    if not resume:
        write_text(run_dir / "config.yaml", _yaml().safe_dump(_config_dict(cfg), sort_keys=False))
    device = cfg.device
    if teacher is not None:
        teacher.to(device)
    model.to(device)
    if cfg.freeze == "backbone":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    masks = sparsity.torch_masks(model) if card.extra.get("sparsity") else {}  # 2:4 zeros stay zero
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    steps_per_epoch = math.ceil(len(train_b) / cfg.batch_size)
    total, warm = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_epochs * steps_per_epoch))

    def lr_lambda(step: int) -> float:  # linear warm-up, then cosine decay to 1% of the peak
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    metric = primary_metric(cfg.task)
    start_epoch, best, best_epoch, train_seconds = 1, -1.0, 0, 0.0
    if resume:
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # torch's size/key mismatch messages
            raise EdgekitError(f"{state_path}: does not fit this run's model and optimizer "
                               f"({_printable(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)})"
                               ) from None
        start_epoch, best, best_epoch = int(state["epoch"]) + 1, float(state["best"]), int(state["best_epoch"])
        train_seconds = float(state.get("train_seconds", 0.0))
    log = EpochLog(run_dir, resume)
    rng = np.random.default_rng([cfg.seed, start_epoch])
    stopped_early = False
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            if cfg.freeze == "backbone":
                model.backbone.eval()  # frozen BatchNorm statistics too
            running, seen = 0.0, 0
            bar = _bar(steps_per_epoch, f"epoch {epoch}/{cfg.epochs}", cfg.progress)
            for images, targets, _tf, idx in train_b.iterate(cfg.batch_size, rng):
                images = images.to(device)
                obj = train_b.objective
                predicted = obj.predict(model, images)
                loss, parts = obj.loss(model, images, targets, device, predicted)
                if teacher is not None:
                    with torch.no_grad():
                        taught = obj.predict(teacher, images)
                    kd = obj.distill(predicted, taught)
                    loss = loss + cfg.distill_weight * kd
                    parts["distill"] = float(kd.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                opt.step()
                sched.step()
                if masks:
                    sparsity.apply_masks(model, masks)
                running += float(loss.detach()) * len(idx)
                seen += len(idx)
                if bar is not None:
                    bar.set_postfix(loss=f"{running / seen:.3f}", **{k: f"{v:.3f}" for k, v in parts.items()})
                    bar.update(1)
            if bar is not None:
                bar.close()
            train_seconds += time.perf_counter() - t0
            val = evaluate(model, val_b, card, device, cfg.batch_size)
            row = {"epoch": epoch, "train_loss": running / max(1, seen), "val_loss": val["loss"],
                   f"val_{metric}": val[metric], "lr": opt.param_groups[0]["lr"]}
            row.update({f"val_{m}": val[m] for m in objective(cfg.task).logged_metrics})
            log.add(row)
            improved = val[metric] > best
            if improved:
                best, best_epoch = val[metric], epoch
                card.extra["metrics"] = {"split": "val", "epoch": epoch, **_rounded(val)}
                checkpoint.save(model, card, run_dir / "best")
            _say(f"epoch {epoch}: train loss {row['train_loss']:.4f}  val loss {val['loss']:.4f}  "
                 f"val {metric} {val[metric]:.4f}{'  (best)' if improved else ''}")
            with atomic_path(state_path) as tmp:  # an interrupted save leaves the previous last.pt, never half of one
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
                            "train_seconds": train_seconds}, tmp)
            if epoch - best_epoch >= cfg.patience:
                stopped_early = True
                _say(f"early stop: val {metric} has not improved for {cfg.patience} epochs")
                break
    finally:
        log.close()
    plot_curves(log.rows, metric, run_dir / "loss_curve.png")
    warnings = diagnose(log.rows, metric)
    for w in warnings:
        _say("warning: " + w)
    report = {
        "task": cfg.task, "arch": cfg.arch, "best_epoch": best_epoch, f"best_val_{metric}": best,
        "epochs_run": int(log.rows[-1]["epoch"]) if log.rows else 0, "stopped_early": stopped_early,
        "train_seconds": round(train_seconds, 1), "warnings": warnings,
        "checkpoint": str(run_dir / "best.safetensors"),
    }
    write_json(run_dir / "report.json", report)
    return report


def _teacher(cfg: TrainConfig, card: ModelCard) -> torch.nn.Module:
    """The model to distil from: same task, classes and outputs as the student (its unpruned self)."""
    teacher, t_card = checkpoint.load(cfg.distill, task=cfg.task)
    what = [f for f, a, b in (("classes", t_card.classes, card.classes),
                              ("input size", t_card.input_size, card.input_size)) if a != b]
    if what:
        raise EdgekitError(f"--distill {cfg.distill}: the teacher's {' and '.join(what)} differ from the model "
                           "trained; distil from the same model before pruning")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _check_teacher(teacher: torch.nn.Module, model: torch.nn.Module, card: ModelCard, source: str) -> None:
    """The teacher must predict what the student predicts, shape for shape."""
    h, w = card.input_size
    x = torch.zeros(1, 3, h, w)
    obj = objective(card.task)

    def shapes(m: torch.nn.Module) -> List[Tuple[int, ...]]:
        was = m.training
        with torch.no_grad():
            out = obj.predict(m.eval(), x)
        m.train(was)
        items = out.values() if isinstance(out, dict) else (out if isinstance(out, (list, tuple)) else [out])
        return [tuple(t.shape) for t in items if isinstance(t, torch.Tensor)]

    if shapes(teacher) != shapes(model):
        raise EdgekitError(f"--distill {source}: the teacher's predictions have shapes {shapes(teacher)}, the model's "
                           f"{shapes(model)}; distil from the same model before pruning")


def schedule_record(cfg: TrainConfig) -> Dict[str, Any]:
    """The schedule this training ran, kept in the card: fine-tuning the model later starts from it."""
    return {"optimizer": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size,
            **({"distilled_from": cfg.distill, "distill_weight": cfg.distill_weight} if cfg.distill else {})}


def recorded_schedule(card: ModelCard) -> Dict[str, Any]:
    """Optimizer, lr and weight decay of the training that made the model, where its card records one
    (edgekit's training, or an Ultralytics run's train_args); {} where none is."""
    training = card.extra.get("training") or {}
    ultra = training.get("ultralytics") or {}
    if ultra:
        optimizer = str(ultra.get("optimizer", "")).lower()
        if optimizer not in ("adamw", "sgd") or not ultra.get("lr0"):
            return {}  # Adam, RMSProp, ...: edgekit's loop runs AdamW or SGD
        return {"optimizer": optimizer, "lr": float(ultra["lr0"]),
                "weight_decay": float(ultra.get("weight_decay", 5e-4)), "from": "the Ultralytics run's train_args"}
    if training.get("lr") and training.get("optimizer") in ("adamw", "sgd"):
        return {"optimizer": training["optimizer"], "lr": float(training["lr"]),
                "weight_decay": float(training.get("weight_decay", 5e-4)), "from": "the model's training record"}
    return {}


def _rounded(d: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if k == "loss":
            continue
        out[k] = round(v, 4) if isinstance(v, float) else v
    return out


def _config_dict(cfg: TrainConfig) -> Dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["imgsz"] = list(cfg.imgsz)
    d.pop("progress")
    return d


def config_from_file(path: Path) -> TrainConfig:
    """A run's config.yaml as train wrote it: plain YAML (no tags: `!!python/object` and friends are refused,
    never constructed), a mapping of TrainConfig's keys, each value of its field's type; anything else is one
    line saying the file is not a valid edgekit resume config."""
    if not path.is_file():
        raise EdgekitError(f"{path.parent}: nothing to resume (no config.yaml in the run folder)")
    yaml = _yaml()
    invalid = f"{path}: not a valid edgekit resume config"
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError as e:
        raise EdgekitError(f"{invalid} (it holds a YAML tag edgekit does not load: {_printable(str(e.problem))})"
                           ) from None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EdgekitError(f"{invalid} (not valid YAML: {_printable(str(problem))})") from None
    except (UnicodeDecodeError, RecursionError):
        raise EdgekitError(f"{invalid} (not UTF-8 text, or nested too deeply)") from None
    except OSError as e:
        raise EdgekitError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(d, dict):
        raise EdgekitError(f"{invalid} (expected a mapping of training settings, got {type(d).__name__})")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(str(k) for k in d if k not in fields)
    if unknown:
        raise EdgekitError(f"{invalid} (unknown key(s) {_printable(', '.join(unknown))})")
    missing = [k for k, f in fields.items() if f.default is dataclasses.MISSING and k not in d]
    if missing:
        raise EdgekitError(f"{invalid} (missing {', '.join(missing)})")
    for key, value in d.items():
        if not _fits(fields[key], value):
            raise EdgekitError(f"{invalid} ({key}: {_printable(repr(value))} is not a {_kind(fields[key])})")
    d["imgsz"] = tuple(d.get("imgsz", TrainConfig.imgsz))
    return TrainConfig(**d)


def _kind(f: "dataclasses.Field[Any]") -> str:
    default = f.default
    if isinstance(default, bool):
        return "true/false"
    if isinstance(default, (int, float)):
        return "number"
    if isinstance(default, tuple):
        return "[height, width] pair of whole numbers"
    return "string"


def _fits(f: "dataclasses.Field[Any]", value: Any) -> bool:
    """Whether a config value has the type its TrainConfig field takes (fields without a default are strings)."""
    default = f.default
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(default, tuple):
        return (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    return isinstance(value, str)


def load_resume_state(path: Path, device: str) -> Dict[str, Any]:
    """last.pt as train writes it: tensors, numbers and dicts only (torch.load weights_only). A file holding
    pickled objects is refused without advice to load it unsafely (torch's own message suggests
    weights_only=False, which would run whatever the file contains)."""
    import pickle

    not_ours = f"{path}: not an edgekit resume file"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise EdgekitError(f"{not_ours} (it holds pickled objects that edgekit does not load)") from None
        raise EdgekitError(f"{not_ours} (unreadable: not a PyTorch file)") from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, ImportError):
        raise EdgekitError(f"{not_ours} (unreadable: truncated or not a PyTorch file)") from None
    wanted = ("model", "optimizer", "scheduler", "epoch", "best", "best_epoch")
    if not isinstance(state, dict) or any(k not in state for k in wanted):
        raise EdgekitError(f"{not_ours} (expected the saved {', '.join(wanted)})")
    if not all(isinstance(state[k], dict) for k in wanted[:3]) or not all(
            isinstance(state[k], (int, float)) and not isinstance(state[k], bool) for k in wanted[3:]):
        raise EdgekitError(f"{not_ours} (its model, optimizer or epoch entries have the wrong types)")
    return state


def _printable(text: str, limit: int = 120) -> str:
    """Text from a file, safe to show on one terminal line."""
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False)


def _say(msg: str) -> None:
    print(msg, flush=True)


def evaluate_checkpoint(
    path: "str | Path", data: "str | Path", split: str = "test", fmt: str = "auto"
) -> Dict[str, Any]:
    """Accuracy of a checkpoint on a dataset split, through the runtime preprocessing and post-processing."""
    model, card = checkpoint.load(path)
    ds = datasets.load(card.task, data, split, fmt)
    datasets.check_classes(ds, card.classes, "model")
    result = evaluate(model, Batches(ds, card), card, "cpu")
    result.pop("loss")
    result["images"] = len(ds)
    return result

