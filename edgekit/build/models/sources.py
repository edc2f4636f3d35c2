"""Models users bring, built again from a source string recorded in the card (timm's create_model idea):
`torchvision:NAME(kwargs)`, `timm:NAME(kwargs)`, `smp:ARCH(kwargs)` (segmentation_models_pytorch) or
`python:package.module:factory(kwargs)` for the user's own code; weights come from a state dict, never from
unpickled objects. The card's `arch` holds the source without its arguments, `arch_args` the keyword
arguments, so a checkpoint reloads from safetensors + YAML like edgekit's own."""

import ast
import importlib
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

from edgekit.errors import EdgekitError, MissingDependency

# prefix -> (module to import, the pip package that brings it)
LIBRARIES = {"torchvision": ("torchvision.models", "torchvision"), "timm": ("timm", "timm"),
             "smp": ("segmentation_models_pytorch", "segmentation-models-pytorch"),
             "ultralytics": ("ultralytics.nn.tasks", "ultralytics-opencv-headless")}


def is_source(arch: str) -> bool:
    """An architecture named by a source string (with a ':'), not by edgekit's registry."""
    return ":" in arch


def is_checkpoint_file(source: str) -> bool:
    """A source naming a .pt/.pth file rather than a library: a whole pickled model (Ultralytics')."""
    return Path(source).suffix in (".pt", ".pth") and source.split(":", 1)[0] not in (*LIBRARIES, "python")


def parse(text: str) -> Tuple[str, Dict[str, Any]]:
    """'torchvision:lraspp_mobilenet_v3_large(num_classes=3)' -> ('torchvision:lraspp_mobilenet_v3_large',
    {'num_classes': 3}); keyword values are Python literals. ultralytics:DetectionModel(cfg='yolov8n.yaml', nc=3)
    builds an Ultralytics model from its YAML (the card records the YAML itself)."""
    text = text.strip()
    head, paren, rest = text.partition("(")
    prefix = head.split(":", 1)[0]
    if ":" not in head or (prefix not in LIBRARIES and prefix != "python"):
        raise EdgekitError(f"model source '{text}': expected torchvision:NAME(...), timm:NAME(...), smp:ARCH(...), "
                           "ultralytics:DetectionModel(...), python:package.module:factory(...) or an Ultralytics "
                           "checkpoint.pt")
    kwargs: Dict[str, Any] = {}
    if paren:
        try:
            call = ast.parse(f"f({rest}" if rest.endswith(")") else "", mode="eval").body
            if not isinstance(call, ast.Call) or call.args:
                raise ValueError("positional arguments")
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        except (ValueError, SyntaxError) as e:
            raise EdgekitError(f"model source '{text}': arguments must be keyword=literal pairs ({e})") from None
    return head, kwargs


def create(arch: str, kwargs: Mapping[str, Any], search_path: str = "") -> nn.Module:
    """The untrained model a source string names."""
    prefix, name = arch.split(":", 1)
    try:
        if prefix == "ultralytics":
            from edgekit.build.models import ultralytics

            factory = lambda **kw: ultralytics.create(name, kw)  # noqa: E731
        elif prefix == "python":
            module_name, _, factory_name = name.rpartition(":")
            if not module_name:
                raise EdgekitError(f"model source '{arch}': expected python:package.module:factory")
            if search_path and search_path not in sys.path:
                sys.path.insert(0, search_path)
            try:
                module = importlib.import_module(module_name)
            except ImportError as e:
                raise EdgekitError(f"model source '{arch}': cannot import {module_name} ({e}); pass the folder that "
                                   "holds it with --code-path") from None
            factory = getattr(module, factory_name, None)
            if factory is None:
                raise EdgekitError(f"model source '{arch}': {module_name} has no '{factory_name}'")
        else:
            module_name, package = LIBRARIES[prefix]
            try:
                library = importlib.import_module(module_name)
            except ImportError:
                raise MissingDependency(package, "", f"pip install {package}") from None
            factory = (lambda **kw: library.get_model(name, **kw)) if prefix == "torchvision" else \
                (lambda **kw: library.create_model(name, pretrained=False, **kw)) if prefix == "timm" else \
                getattr(library, name, None)
            if factory is None:
                raise EdgekitError(f"model source '{arch}': {package} has no '{name}'")
        model = factory(**kwargs)
    except EdgekitError:
        raise
    except Exception as e:  # whatever the user's factory or the library raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgekitError(f"model source '{arch}': building it failed: {type(e).__name__}: {first}") from None
    if not isinstance(model, nn.Module):
        raise EdgekitError(f"model source '{arch}': the factory returned {type(model).__name__}, not a torch nn.Module")
    return model


def as_tuple(out: Any) -> Tuple[torch.Tensor, ...]:
    """A model's output as a tuple of tensors (a model of several outputs returns a tuple)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def output_names(card: Any) -> List[str]:
    """What the exported ONNX calls the model's outputs: those the import recorded, else the card's one."""
    return list((card.extra.get("source") or {}).get("outputs") or [card.output_name])


class OneOutput(nn.Module):
    """A model whose forward returns a dict (torchvision's segmenters: {'out', 'aux'}) as the one tensor the
    runtime's layouts decode; the wrapped model keeps its own state-dict keys under `model.`."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]


DETECTIONS = "detections"  # output_key of a detector returning a list of {boxes, labels, scores} per image


class ImageDetections(nn.Module):
    """A torchvision detector (it takes a list of images and returns a dict per image) as a model of one
    [1, 3, H, W] tensor returning that image's boxes [N, 4], labels [N] and scores [N]: what the torchvision
    layout decodes. The detector normalises, resizes and suppresses inside the graph; the wrapped model keeps
    its own state-dict keys under `model.`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        found = self.model(list(x))[0]
        return found["boxes"], found["labels"], found["scores"]


def output_key(model: nn.Module, input_size: Tuple[int, int], arch: str) -> str:
    """'' where the model returns a tensor or a tuple of tensors; the dict key to export where it returns a dict."""
    h, w = input_size
    with torch.no_grad():
        try:
            out = model.eval()(torch.zeros(1, 3, h, w))
        except Exception as e:  # e.g. torchvision's detectors, which take a list of images
            raise EdgekitError(f"model source '{arch}': it does not run on a [1, 3, {h}, {w}] tensor "
                               f"({type(e).__name__}); edgekit imports models that take a batch of images "
                               "(torchvision's detectors: export them to ONNX with one [1, 3, H, W] input and "
                               "build-engine that)") from None
    if isinstance(out, torch.Tensor) or (isinstance(out, tuple) and all(isinstance(t, torch.Tensor) for t in out)):
        return ""
    if isinstance(out, list) and out and isinstance(out[0], Mapping) and {"boxes", "labels", "scores"} <= set(out[0]):
        return DETECTIONS  # torchvision's detectors: boxes, labels and scores per image, suppressed in the graph
    if isinstance(out, Mapping):
        tensors = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        if "out" in tensors:
            return "out"
        if len(tensors) == 1:
            return tensors[0]
        raise EdgekitError(f"model source '{arch}': the model returns a dict with {', '.join(out)}; edgekit exports "
                           "one output: name it with --output-name")
    raise EdgekitError(f"model source '{arch}': the model returns {type(out).__name__}; edgekit exports a tensor or a "
                       "dict of tensors (wrap other outputs in the module)")


def state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .pt/.pth state dict loaded with weights_only=True: a file that
    needs objects unpickled (a whole model, an optimizer) is refused, since unpickling runs its code."""
    if not path.is_file():
        raise EdgekitError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors' own error types
            raise EdgekitError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError naming the global that weights_only refused, or a broken file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgekitError(f"{path}: not a plain state dict (it needs unpickling, which can run code: {first[:100]}); "
                           "save the weights with torch.save(model.state_dict(), path) or safetensors") from None
    for key in ("state_dict", "model_state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise EdgekitError(f"{path}: holds no state dict of tensors; save one with torch.save(model.state_dict(), "
                           "path)")
    return data


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a user's state dict, naming the first key that does not fit and both shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise EdgekitError(f"{source}: weight '{k}' has shape {tuple(state[k].shape)}, the model's is "
                           f"{tuple(own[k].shape)} ({len(wrong)} such; is num_classes or the architecture right?)")
    if missing or unexpected:
        detail = "; ".join(x for x in (f"{len(missing)} missing (first: {missing[0]})" if missing else "",
                                       f"{len(unexpected)} unexpected (first: {unexpected[0]})" if unexpected else "")
                           if x)
        raise EdgekitError(f"{source}: the state dict does not fit the model: {detail}")
    model.load_state_dict(dict(state))


def adapt(model: nn.Module, key: str) -> nn.Module:
    """The model as edgekit exports it: as it is (key ''), the one tensor of a dict output (the dict's key), or a
    torchvision detector's detections of its one image."""
    if key == DETECTIONS:
        return ImageDetections(model)
    return OneOutput(model, key) if key else model
