"""The pruning record: a pruned checkpoint's architecture as the output channels of every conv, kept in
the card (`pruning.channels`) and replayed onto a freshly built model before its state dict loads, so a
pruned checkpoint stays tensors + YAML (Torch-Pruning's replay idea; never a pickled module)."""

import warnings
from typing import Any, Dict

import torch
from torch import nn

from edgekit.errors import EdgekitError, MissingDependency
from edgekit.runtime.card import ModelCard


def torch_pruning() -> Any:
    try:
        import torch_pruning as tp
    except ImportError:
        raise MissingDependency("torch-pruning", "build") from None
    # Its shape inference gives up on deep index chains (torchvision's detectors) with a warning per graph; the
    # channel dependencies it builds are complete without it, and a pruned model is checked by reloading it.
    warnings.filterwarnings("ignore", message="Maximum recursive depth reached", module="torch_pruning")
    return tp


def example_input(card: ModelCard) -> torch.Tensor:
    h, w = card.input_size
    return torch.zeros(1, 3, h, w)


def prunable(model: nn.Module, card: ModelCard) -> None:
    """Rewrite, in place and without changing what it computes, what Torch-Pruning cannot follow in a source's
    architecture (Ultralytics' C2f chunk); the same rewrite comes before pruning and before a replay."""
    if card.arch.startswith("ultralytics:"):
        from edgekit.build.models.ultralytics import split_c2f

        split_c2f(model)


def replay(model: nn.Module, card: ModelCard) -> None:
    """Give a freshly built model the pruned shapes recorded in the card (which channels is irrelevant:
    the state dict loaded next fills them)."""
    record = card.extra.get("pruning") or {}
    channels: Dict[str, int] = record.get("channels", {})
    if not channels:
        return
    tp = torch_pruning()
    prunable(model, card)
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(card))
    modules = dict(model.named_modules())
    unknown = [n for n in channels if not isinstance(modules.get(n), nn.Conv2d)]
    if unknown:
        raise EdgekitError(f"model card: pruning record names layers this architecture lacks: {', '.join(unknown[:3])}")
    for name, target in channels.items():
        conv = modules[name]
        if conv.out_channels > target:
            surplus = list(range(target, conv.out_channels))
            graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=surplus).prune()
    wrong = [f"{n} ({modules[n].out_channels} != {t})" for n, t in channels.items() if modules[n].out_channels != t]
    if wrong:
        raise EdgekitError(f"model card: the pruning record does not replay onto '{card.arch}': {wrong[0]}")
