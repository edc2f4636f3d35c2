"""`edgekit import-model`: a model the user brings (a library's architecture or their own nn.Module, plus a
state dict from their training) as an edgekit checkpoint: safetensors + a card whose `arch` is the source, so
export, build-engine, eval, sweep and `train --init` take it like edgekit's own models."""

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from edgekit.build import describe
from edgekit.build.models import checkpoint, sources, ultralytics
from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard

# What an Ultralytics checkpoint tells of the model (its names, imgsz, task and Ultralytics' preprocessing)
ULTRALYTICS_FIELDS = ("task", "classes", "input_size", "color", "mean", "std", "resize_mode", "pad_value",
                      "iou_threshold")


def import_model(source: str, weights: Optional[str], out: str, card_fields: Mapping[str, Any],
                 layout: Optional[str] = None, code_path: str = "", trust_pickle: bool = False) -> Dict[str, Any]:
    """Build the model from `source`, load the state dict, find its output layout, write OUT/NAME.safetensors
    and OUT/NAME.card.yaml; returns what was written and found. A source naming an Ultralytics .pt brings its
    own weights and card fields (names, imgsz, task, preprocessing) and its training settings."""
    state: Optional[Mapping[str, torch.Tensor]] = None
    recorded: Dict[str, Any] = {}
    if sources.is_checkpoint_file(source):
        if weights:
            raise EdgekitError(f"{source}: an Ultralytics checkpoint carries its own weights; drop --weights")
        found = ultralytics.read(Path(source), trust_pickle)
        arch, kwargs, state = f"ultralytics:{found.model_class}", found.kwargs, found.state
        base = describe.ultralytics_card(found.metadata, TensorSpec("images", (1, 3, None, None), "float32"), source)
        assert base is not None  # the metadata is Ultralytics' by construction
        fields = {k: getattr(base, k) for k in ULTRALYTICS_FIELDS}
        fields["extra"] = {"description": base.extra["description"],
                           **({"training": {"ultralytics": found.train_args}} if found.train_args else {})}
        fields.update(card_fields)  # the user's flags win over what the checkpoint says
        recorded = fields.pop("extra")
        layout = layout or base.output_layout or None  # an end-to-end head's [B, 300, 6] says end2end
    else:
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
        state = sources.state_dict(Path(weights))
    if state is not None:
        sources.load_state(model, state, weights or source)
    key = sources.output_key(model, fields["input_size"], arch)
    model = sources.adapt(model, key)
    produced = _run(model, fields["input_size"])  # once: the outputs' count names them, their shapes fit a layout
    names = [f"output{i}" for i in range(len(produced))] if len(produced) > 1 else []
    params = fields.pop("layout_params", None)
    name = fields.pop("name", None) or Path(weights or (source if state is not None else arch.split(":")[-1])).stem
    card = ModelCard(name=name, arch=arch, arch_args=dict(kwargs), output_layout=layout or "",
                     extra={**recorded, "source": {k: v for k, v in (("output", key), ("code_path", code_path),
                                                                     ("outputs", names)) if v}},
                     layout_params=dict(params) if params and layout else {}, **fields)
    card = describe.resolve_layout(describe.Described(card, bool(layout), "import-model", params if not layout
                                                      else None), _specs(produced, card), source)
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


def _specs(produced: Any, card: ModelCard) -> List[TensorSpec]:
    return [TensorSpec(name, tuple(y.shape), str(y.dtype).replace("torch.", ""))
            for name, y in zip(sources.output_names(card), produced)]
