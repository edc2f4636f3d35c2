"""Checkpoints: weights as safetensors (tensors only, nothing unpickled) + the model card as YAML.

A checkpoint named NAME is the pair NAME.safetensors and NAME.card.yaml. Any of the two paths, or a
folder holding exactly one such pair, names it.
"""

from pathlib import Path
from typing import Optional, Tuple

from torch import nn

from edgekit.build.models import sources
from edgekit.build.models.pruning_record import replay
from edgekit.build.models.registry import create, model_task
from edgekit.errors import EdgekitError, MissingDependency
from edgekit.runtime.artifacts import atomic_path
from edgekit.runtime.card import ModelCard

CARD_SUFFIX = ".card.yaml"
WEIGHTS_SUFFIX = ".safetensors"


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError:
        raise MissingDependency("safetensors", "build") from None
    return st


def resolve(path: "str | Path") -> Tuple[Path, Path]:
    """(weights path, card path) for a checkpoint named by either file or its folder."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob(f"*{WEIGHTS_SUFFIX}"))
        if len(found) != 1:
            raise EdgekitError(f"{p}: expected one {WEIGHTS_SUFFIX} checkpoint in the folder, found {len(found)}")
        p = found[0]
    name = str(p)
    if name.endswith(CARD_SUFFIX):
        stem = name[: -len(CARD_SUFFIX)]
    elif name.endswith(WEIGHTS_SUFFIX):
        stem = name[: -len(WEIGHTS_SUFFIX)]
    else:
        raise EdgekitError(f"{p}: not a checkpoint (expected NAME{WEIGHTS_SUFFIX} with NAME{CARD_SUFFIX} beside it)")
    weights, card = Path(stem + WEIGHTS_SUFFIX), Path(stem + CARD_SUFFIX)
    if not weights.is_file():
        raise EdgekitError(f"{weights}: checkpoint weights not found")
    if not card.is_file():
        raise EdgekitError(f"{card}: model card not found beside {weights.name}")
    return weights, card


def save(model: nn.Module, card: ModelCard, stem: "str | Path") -> Path:
    """Write STEM.safetensors and STEM.card.yaml atomically; returns the weights path."""
    st = _safetensors()
    weights = Path(str(stem) + WEIGHTS_SUFFIX)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        st.save_file(state, str(tmp), metadata={"arch": card.arch, "task": card.task, "format": "edgekit-1"})
    card.save(str(stem) + CARD_SUFFIX)
    return weights


def build(card: ModelCard) -> nn.Module:
    """An untrained model of the card's architecture, classes and input size (pruned as the card records)."""
    if sources.is_source(card.arch):  # a model the user brought (edgekit import-model)
        source = card.extra.get("source") or {}
        model = sources.create(card.arch, card.arch_args, source.get("code_path", ""))
        model = sources.adapt(model, source.get("output", ""))
    else:
        arch_task = model_task(card.arch)
        if arch_task != card.task:
            raise EdgekitError(
                f"model card: architecture '{card.arch}' is a {arch_task} model, card says task '{card.task}'"
            )
        model = create(card.arch, card.num_classes, card.input_size, **card.arch_args)
    if card.extra.get("pruning"):
        replay(model, card)  # the pruned shapes, from the record in the card
    return model


def load(path: "str | Path", task: Optional[str] = None) -> Tuple[nn.Module, ModelCard]:
    """Model (eval mode, CPU) and card of a checkpoint; weights must fit the card's architecture exactly."""
    weights, card_path = resolve(path)
    card = ModelCard.load(card_path)
    if task and card.task != task:
        raise EdgekitError(f"{card_path}: this is a {card.task} model, a {task} model is needed")
    model = build(card)
    st = _safetensors()
    try:
        state = st.load_file(str(weights))
        with st.safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise EdgekitError(f"{weights}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if meta.get("arch") and meta["arch"] != card.arch:
        raise EdgekitError(f"{weights}: weights were saved from architecture '{meta['arch']}', card says '{card.arch}'")
    _load_state(model, state, weights, card.arch)
    model.eval()
    return model, card


def _load_state(model: nn.Module, state: dict, weights: Path, arch: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        if wrong:
            k = wrong[0]
            shapes = f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            detail.append(f"{len(wrong)} of another shape (first: {k} {shapes})")
        raise EdgekitError(f"{weights}: weights do not fit architecture '{arch}': " + "; ".join(detail))
    model.load_state_dict(state)


def load_weights_into(model: nn.Module, path: "str | Path", arch: str, prefix: str = "") -> int:
    """Transfer learning: copy every tensor (under `prefix`) whose name and shape match; returns how many.

    With prefix "backbone." this moves a backbone between tasks (a detector's into a segmenter)."""
    weights, _ = resolve(path)
    state = _safetensors().load_file(str(weights))
    own = model.state_dict()
    fitting = {k: v for k, v in state.items()
               if k.startswith(prefix) and k in own and own[k].shape == v.shape}
    wanted = [k for k in own if k.startswith(prefix)]
    if not fitting or (prefix and len(fitting) != len(wanted)):
        what = f"the {prefix.rstrip('.')} of architecture '{arch}'" if prefix else f"architecture '{arch}'"
        raise EdgekitError(f"{weights}: its tensors do not fit {what} ({len(fitting)} of {len(wanted)} match)")
    own.update(fitting)
    model.load_state_dict(own)
    return len(fitting)
