"""Channel pruning through Torch-Pruning's dependency graph: which layers, how many channels, what it costs.
The pruned shapes go into the card as a record (edgekit/build/models/pruning_record.py)."""

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from edgekit.build.models.pruning_record import example_input, prunable, torch_pruning
from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard

IMPORTANCES = ("l1", "l2", "taylor")
# Modules Torch-Pruning reshapes; any other module holding its own parameters is left unpruned and named.
_HANDLED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)


def output_layers(model: nn.Module, card: ModelCard) -> List[nn.Module]:
    """Layers whose channels are the model's output (never pruned): the model's own list where it keeps one
    (edgekit's architectures), else every conv or linear layer whose result reaches an output without passing
    another one, found by walking the autograd graph back from the outputs (a user's model: LRASPP's two
    classifiers, a detector's box and class heads; through a fixed, untrained layer to the layers feeding it)."""
    own = getattr(model, "output_layers", None)
    if own is not None:
        return list(own())
    producers: Dict[Any, nn.Module] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: producers.__setitem__(out.grad_fn, mod))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.enable_grad():
            out = model.eval()(example_input(card).requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    tensors = list(out.values()) if isinstance(out, dict) else (list(out) if isinstance(out, (list, tuple)) else [out])
    found: List[nn.Module] = []
    stack, seen = [t.grad_fn for t in tensors if isinstance(t, torch.Tensor) and t.grad_fn is not None], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in producers:
            layer = producers[fn]
            if layer not in found:
                found.append(layer)
            if any(p.requires_grad for p in layer.parameters()):
                continue  # layers before it feed it, not the output
            # a fixed layer (YOLOv8's DFL integral, weights 0..15) passes its input's channel layout on: the layers
            # feeding it are output layers too
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


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


def named_layers(model: nn.Module, names: List[str]) -> List[nn.Module]:
    """The modules `--ignore-layers` names; a one-line error for a name the model lacks (with close ones)."""
    import difflib

    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            close = difflib.get_close_matches(n, list(modules), n=3)
            raise EdgekitError(f"--ignore-layers {n}: the model has no such layer" +
                               (f" (did you mean {', '.join(close)}?)" if close else ""))
    return [modules[n] for n in names]


def prune_channels(model: nn.Module, card: ModelCard, ratio: float, importance: str, round_to: int,
                   taylor_loss: Optional[Callable[[nn.Module], torch.Tensor]] = None,
                   keep: Sequence[str] = ()) -> List[str]:
    """Remove `ratio` of the channels of every prunable layer group, in place, except the output layers and
    those named in `keep`; returns the layers left alone because the pruner cannot reshape them."""
    tp = torch_pruning()
    prunable(model, card)
    imp = {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
           "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
           "taylor": lambda: tp.importance.GroupTaylorImportance()}[importance]()
    skipped = unhandled_layers(model)
    ignored = output_layers(model, card) + [m for _, m in skipped] + named_layers(model, list(keep))
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
    extra = dict(card.extra)
    extra["pruning"] = {**record, "channels": channel_counts(model)}
    extra.pop("metrics", None)  # the parent's accuracy no longer describes this model
    return dataclasses.replace(card, name=name, extra=extra)
