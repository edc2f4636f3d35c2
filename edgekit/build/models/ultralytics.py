"""Ultralytics YOLO checkpoints (YOLOv5u/v8/11 detect and segment `.pt`) as edgekit checkpoints.

An Ultralytics `.pt` is a pickle of the whole model: loading it runs whatever code the file names, so it is
opened only behind `--trust-pickle`. What comes out is pickle-free: the model's YAML definition (its `yaml`
dict) becomes the card's `arch_args`, its weights a state dict, so the checkpoint reloads from safetensors +
card through `ultralytics.nn.tasks` like any other source (`ultralytics:DetectionModel(cfg=..., nc=...)`).
The heads run in Ultralytics' export mode (what its ONNX exporter sets), so the model emits `output0`
[B, 4+nc, N] (and `output1` protos for segment): the yolov8 / yolov8_seg layouts.
"""

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping

import torch
from torch import nn

from edgekit.errors import EdgekitError, MissingDependency

PACKAGE = "ultralytics-opencv-headless"  # Ultralytics without the GUI OpenCV that clashes with ours
# Ultralytics task -> (its model class, edgekit task)
TASKS = {"detect": ("DetectionModel", "detection"), "segment": ("SegmentationModel", "instance_segmentation")}
# Training settings of an Ultralytics run that a fine-tune can start from (its train_args)
SCHEDULE_KEYS = ("lr0", "lrf", "momentum", "weight_decay", "optimizer", "epochs", "batch", "imgsz", "cos_lr")


@dataclass
class Imported:
    """What an Ultralytics checkpoint holds, pickle-free."""

    model_class: str
    kwargs: Dict[str, Any]
    state: Dict[str, torch.Tensor]
    metadata: Dict[str, str]  # as Ultralytics' exporter writes into an ONNX's metadata_props
    train_args: Dict[str, Any] = field(default_factory=dict)


def _library() -> Any:
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks or downloads from a library call
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        import ultralytics.nn.tasks as tasks
    except ImportError:
        raise MissingDependency(PACKAGE, "ultralytics", f"pip install '{PACKAGE}'") from None
    return tasks


def read(path: Path, trust_pickle: bool) -> Imported:
    """The model definition, weights and metadata of an Ultralytics `.pt` (unpickled only when trusted)."""
    if not path.is_file():
        raise EdgekitError(f"{path}: checkpoint not found")
    if not trust_pickle:
        raise EdgekitError(f"{path}: an Ultralytics .pt is a pickle, and loading a pickle runs code stored in the "
                           "file; pass --trust-pickle if you trust where it came from (or give a source and a state "
                           "dict with --weights)")
    tasks = _library()
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:  # a broken file, or a pickle naming classes this Ultralytics lacks
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgekitError(f"{path}: cannot be loaded as an Ultralytics checkpoint ({type(e).__name__}: "
                           f"{first[:120]})") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, tasks.BaseModel) or not isinstance(getattr(model, "yaml", None), dict):
        raise EdgekitError(f"{path}: not an Ultralytics checkpoint (no Ultralytics model under 'model'); for a "
                           "plain state dict give the model's source and --weights")
    kind = tasks.guess_model_task(model)
    if kind not in TASKS:
        known = ", ".join(TASKS)
        raise EdgekitError(f"{path}: an Ultralytics '{kind}' model; edgekit imports {known} models so far")
    model_class, _ = TASKS[kind]
    if type(model).__name__ != model_class:
        raise EdgekitError(f"{path}: an Ultralytics {type(model).__name__}; edgekit imports {model_class} for "
                           f"'{kind}' (RT-DETR and YOLO-World checkpoints: export them with Ultralytics and "
                           "build-engine the ONNX)")
    names = dict(getattr(model, "names", {}) or {})
    train_args = dict(ckpt.get("train_args") or {})
    imgsz = train_args.get("imgsz") or (getattr(model, "args", None) or {}).get("imgsz") or 640
    stride = int(max(model.stride)) if hasattr(model, "stride") else 32
    metadata = {"author": "Ultralytics", "names": repr(names), "task": kind, "stride": str(stride),
                "imgsz": repr(list(imgsz) if isinstance(imgsz, (list, tuple)) else [int(imgsz)] * 2),
                "version": str(ckpt.get("version", "?")),
                "description": f"Ultralytics {Path(str(model.yaml.get('yaml_file', path.name))).stem} model",
                "end2end": repr(bool(getattr(model.model[-1], "end2end", False)))}
    nc = int(getattr(model.model[-1], "nc", len(names)))
    if sorted(names) != list(range(nc)):
        raise EdgekitError(f"{path}: the model predicts {nc} classes but its names are {len(names)}")
    kwargs = {"cfg": _plain(model.yaml), "nc": nc}
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return Imported(model_class, kwargs, state, metadata,
                    {k: train_args[k] for k in SCHEDULE_KEYS if train_args.get(k) is not None})


def _plain(value: Any) -> Any:
    """The YAML definition as plain lists/dicts/scalars (it goes into the card as YAML)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def create(model_class: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """The model an `ultralytics:CLASS(cfg=..., nc=...)` source names, its heads in export mode."""
    tasks = _library()
    if model_class not in {c for c, _ in TASKS.values()}:
        known = ", ".join(c for c, _ in TASKS.values())
        raise EdgekitError(f"model source 'ultralytics:{model_class}': edgekit builds {known}")
    args = dict(kwargs)
    args["cfg"] = copy.deepcopy(args.get("cfg", "yolov8n.yaml"))
    model = getattr(tasks, model_class)(verbose=False, **args)
    export_mode(model)
    return model


def export_mode(model: nn.Module) -> None:
    """What Ultralytics' exporter sets on the heads for a static ONNX export: in eval, a Detect head returns
    the decoded [B, 4+nc, N] alone, a Segment head (that tensor, protos); training is unchanged."""
    tasks = _library()
    from ultralytics.nn.modules.head import Detect

    if not isinstance(model, tasks.BaseModel):
        return
    for m in model.modules():
        if isinstance(m, Detect):
            m.export, m.format, m.dynamic, m.shape = True, "onnx", False, None


def split_c2f(model: nn.Module) -> int:
    """Make an Ultralytics model prunable: every C2f block (C3k2 too) has its first 1x1 conv, whose output the
    block chunks in two, split into two convs of one half each; the block computes the same function. Torch-
    Pruning cannot follow a chunk whose second half also feeds the next layer (its YOLOv8 example rewrites
    C2f the same way). In place; returns how many blocks were rewritten."""
    from ultralytics.nn.modules.block import C2f

    split = _split_class(C2f)
    n = 0
    for m in list(model.modules()):  # collected first: the loop adds modules
        if isinstance(m, C2f) and not isinstance(m, split):
            m.cv0, m.cv1 = _half(m.cv1, 0, m.c), _half(m.cv1, m.c, 2 * m.c)
            m.__class__ = split
            n += 1
    return n


def _half(block: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of an Ultralytics Conv (conv, bn, act) keeping output channels start:stop."""
    part = copy.deepcopy(block)
    conv, bn = part.conv, part.bn
    conv.weight = nn.Parameter(conv.weight.data[start:stop].clone())
    conv.out_channels = stop - start
    for name in ("weight", "bias"):
        setattr(bn, name, nn.Parameter(getattr(bn, name).data[start:stop].clone()))
    bn.running_mean, bn.running_var = bn.running_mean[start:stop].clone(), bn.running_var[start:stop].clone()
    bn.num_features = stop - start
    return part


_SPLIT: Dict[type, type] = {}


def _split_class(c2f: type) -> type:
    if c2f not in _SPLIT:
        def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
            y = [self.cv0(x), self.cv1(x)]
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

        _SPLIT[c2f] = type("SplitC2f", (c2f,), {"forward": forward, "forward_split": forward,
                                                "__doc__": "C2f with its first conv as two (prunable)."})
    return _SPLIT[c2f]


def is_model(model: nn.Module) -> bool:
    """An Ultralytics model (without importing Ultralytics where it is absent)."""
    return type(model).__module__.startswith("ultralytics.")


def raw_predictions(model: nn.Module, images: torch.Tensor) -> Dict[str, Any]:
    """The head's raw predictions (box distributions, class logits, feature maps; an end-to-end head's for both
    branches) and its strides, in eval mode too."""
    head = model.model[-1]
    was = head.training
    head.training = True  # the head alone returns its raw predictions (the layers before keep their mode)
    try:
        preds = model(images)
    finally:
        head.training = was
    return {**preds, "stride": head.stride}


def boxes_and_logits(preds: Mapping[str, Any]) -> "tuple[torch.Tensor, torch.Tensor]":
    """Raw predictions as (xyxy boxes [B, 4, N] in input pixels, class logits [B, C, N]): the DFL integral and
    anchor decoding the head's inference path computes (of the dense branch of an end-to-end head)."""
    from ultralytics.utils.tal import dist2bbox, make_anchors

    dense = preds.get("one2many", preds)
    feats = dense["feats"]
    anchors, stride = make_anchors(feats, preds["stride"], 0.5)  # [N, 2], [N, 1]
    b = feats[0].shape[0]
    dist = dense["boxes"].view(b, 4, -1, anchors.shape[0]).softmax(2)
    proj = torch.arange(dist.shape[2], dtype=dist.dtype, device=dist.device).view(1, 1, -1, 1)
    ltrb = (dist * proj).sum(2)
    xyxy = dist2bbox(ltrb, anchors.T.unsqueeze(0), xywh=False, dim=1) * stride.T
    return xyxy, dense["scores"]


def detection_loss(model: nn.Module, preds: Mapping[str, Any], targets: "list[tuple[torch.Tensor, torch.Tensor]]",
                   input_hw: "tuple[int, int]") -> "tuple[torch.Tensor, dict[str, float]]":
    """Ultralytics' own training loss (task-aligned assignment, box IoU + DFL + BCE, its default gains) for boxes
    [n, 4] xyxy in input pixels and classes [n] per image."""
    if getattr(model, "args", None) is None or not hasattr(model.args, "box"):
        from ultralytics.cfg import get_cfg

        model.args = get_cfg()  # the loss gains (box 7.5, cls 0.5, dfl 1.5) a training run starts from
    h, w = input_hw
    device = preds["scores"].device
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
    xyxy = torch.cat([b.float().reshape(-1, 4) for b, _ in targets]).to(device)
    xywh = torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1) / scale
    batch = {"batch_idx": torch.cat([torch.full((len(b),), i, dtype=torch.float32) for i, (b, _) in
                                     enumerate(targets)]).to(device),
             "cls": torch.cat([c.float().reshape(-1) for _, c in targets]).view(-1, 1).to(device), "bboxes": xywh}
    loss, items = model.loss(batch, {k: v for k, v in preds.items() if k != "stride"})
    parts = {k: float(v) for k, v in (items.items() if isinstance(items, dict) else
                                      zip(("box", "cls", "dfl"), items.tolist()))}
    return loss.sum() / len(targets), parts
