"""`edgekit import-model`: a model the user brings (a library's architecture or their own nn.Module, plus a
state dict from their training) as an edgekit checkpoint: safetensors + a card whose `arch` is the source, so
export, build-engine, eval, sweep and `train --init` take it like edgekit's own models."""

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from edgekit.build import describe
from edgekit.build.models import checkpoint, sources
from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard


def import_model(source: str, weights: Optional[str], out: str, card_fields: Mapping[str, Any],
                 layout: Optional[str] = None, code_path: str = "") -> Dict[str, Any]:
    """Build the model from `source`, load the state dict, find its output layout, write OUT/NAME.safetensors
    and OUT/NAME.card.yaml; returns what was written and found."""
    arch, kwargs = sources.parse(source)
    fields = dict(card_fields)
    missing = [f for f, k in (("--task", "task"), ("--classes", "classes"), ("--input-size", "input_size"))
               if k not in fields]
    if missing:
        raise EdgekitError(f"import-model needs {', '.join(missing)}: what the model predicts and the input it was "
                           "trained at")
    if code_path:
        code_path = str(Path(code_path).resolve())
    model = sources.create(arch, kwargs, code_path)
    if weights:
        sources.load_state(model, sources.state_dict(Path(weights)), weights)
    key = sources.output_key(model, fields["input_size"], arch)
    model = sources.adapt(model, key)
    params = fields.pop("layout_params", None)
    name = fields.pop("name", None) or Path(weights or arch.split(":")[-1]).stem
    card = ModelCard(name=name, arch=arch, arch_args=dict(kwargs), output_layout=layout or "",
                     extra={"source": {k: v for k, v in (("output", key), ("code_path", code_path),
                                                         ("outputs", _names(model, fields))) if v}},
                     layout_params=dict(params) if params and layout else {}, **fields)
    card = describe.resolve_layout(describe.Described(card, bool(layout), "import-model", params if not layout
                                                      else None), _outputs(model, card), source)
    stem = Path(out) / card.name
    if Path(str(stem) + checkpoint.WEIGHTS_SUFFIX).exists():
        raise EdgekitError(f"{out}: holds a checkpoint named {card.name} already; choose another -o or --name")
    path = checkpoint.save(model, card, stem)
    return {"checkpoint": str(path), "card": card, "output_key": key,
            "params": sum(p.numel() for p in model.parameters())}


def _run(model: torch.nn.Module, input_size: Any) -> Any:
    h, w = input_size
    with torch.no_grad():
        return sources.as_tuple(model.eval()(torch.zeros(1, 3, h, w)))


def _names(model: torch.nn.Module, fields: Mapping[str, Any]) -> List[str]:
    """Output names for a model of several outputs (its own, or output0, output1, ...); [] for one."""
    n = len(_run(model, fields["input_size"]))
    return [f"output{i}" for i in range(n)] if n > 1 else []


def _outputs(model: torch.nn.Module, card: ModelCard) -> List[TensorSpec]:
    return [TensorSpec(name, tuple(y.shape), str(y.dtype).replace("torch.", ""))
            for name, y in zip(sources.output_names(card), _run(model, card.input_size))]

