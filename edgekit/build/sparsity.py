"""2:4 structured sparsity (TENSORRT.md): in every group of 4 consecutive input channels of a KCRS conv
weight, at least 2 are zero. Ampere-class tensor cores (Orin's GPU, SM 8.7) and Orin's DLA run such
weights faster when TensorRT's SPARSE_WEIGHTS flag is set. The zeros travel in ordinary dense tensors."""

from typing import Any, Dict, List, Tuple

import numpy as np

PATTERN = "2:4"


def eligible(shape: Tuple[int, ...], groups: int = 1) -> bool:
    """A 4-D conv weight [K, C, R, S] (or 2-D linear [K, C]) whose input channels split into groups of 4."""
    return len(shape) in (2, 4) and groups == 1 and shape[1] % 4 == 0 and shape[1] >= 4


def _groups_of_4(w: np.ndarray) -> np.ndarray:
    """The weight as rows of 4 consecutive input channels: [K*R*S, C/4, 4] flattened to [-1, 4]."""
    if w.ndim == 4:
        w = np.transpose(w, (0, 2, 3, 1))  # K, R, S, C: input channels last
    return w.reshape(-1, 4)


def mask_2_4(w: np.ndarray) -> np.ndarray:
    """1 where a weight is among the two largest magnitudes of its group of 4, else 0 (same shape as w)."""
    g = np.abs(_groups_of_4(w))
    keep = np.zeros_like(g, dtype=bool)
    top2 = np.argsort(-g, axis=1, kind="stable")[:, :2]
    np.put_along_axis(keep, top2, True, axis=1)
    if w.ndim == 4:
        k, c, r, s = w.shape
        return np.transpose(keep.reshape(k, r, s, c), (0, 3, 1, 2)).astype(w.dtype)
    return keep.reshape(w.shape).astype(w.dtype)


def follows_2_4(w: np.ndarray) -> bool:
    return bool(((_groups_of_4(w) == 0).sum(axis=1) >= 2).all())


def check_onnx(model: Any) -> Dict[str, Any]:
    """Which conv weights of an ONNX model follow the 2:4 pattern: {eligible, sparse, dense: [names]}."""
    from onnx import numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    dense: List[str] = []
    count = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        w = numpy_helper.to_array(weights[node.input[1]])
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if not eligible(w.shape, groups):
            continue
        count += 1
        if not follows_2_4(w):
            dense.append(node.name or node.input[1])
    return {"eligible": count, "sparse": count - len(dense), "dense": dense}


def torch_masks(model: Any) -> Dict[str, Any]:
    """2:4 masks of every eligible conv/linear weight of a torch model, from the current magnitudes."""
    import torch

    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and eligible(tuple(m.weight.shape),
                                                                          getattr(m, "groups", 1)):
            w = m.weight.detach().cpu().numpy()
            masks[name] = torch.from_numpy(mask_2_4(w)).to(m.weight.device)
    return masks


def apply_masks(model: Any, masks: Dict[str, Any]) -> None:
    """Zero the masked weights again (after each optimizer step while fine-tuning)."""
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask)
