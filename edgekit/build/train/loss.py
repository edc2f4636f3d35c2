"""Training losses: centre-sampled anchor assignment with IoU-aware scores for the detector; CE for the segmenter."""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from edgekit.runtime.data.datasets import IGNORE_INDEX


def box_iou_giou(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Element-wise IoU and generalized IoU of two [N, 4] xyxy box sets."""
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1) + 1e-7
    return iou, iou - (hull - union) / hull


def assign(points: torch.Tensor, gt: torch.Tensor, stride: int, radius: float = 2.5) -> torch.Tensor:
    """For each anchor point [2, N], the index of its ground-truth box in gt [M, 4], or -1.

    Candidates lie inside the box and within `radius` strides of its centre (FCOS centre sampling);
    an anchor claimed by several boxes goes to the smallest. A box too small to hold any anchor gets
    the one nearest its centre.
    """
    n = points.shape[1]
    if gt.numel() == 0:
        return torch.full((n,), -1, dtype=torch.long, device=points.device)
    px, py = points[0][None], points[1][None]
    x1, y1, x2, y2 = (gt[:, i : i + 1] for i in range(4))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    r = radius * stride
    cand = (px > x1) & (px < x2) & (py > y1) & (py < y2) & ((px - cx).abs() < r) & ((py - cy).abs() < r)
    area = ((x2 - x1) * (y2 - y1)).expand(-1, n)
    cost = torch.where(cand, area, torch.full_like(area, float("inf")))
    best, idx = cost.min(0)
    idx[torch.isinf(best)] = -1
    for m in torch.nonzero(~cand.any(1)).flatten().tolist():
        d = (px[0] - cx[m]) ** 2 + (py[0] - cy[m]) ** 2
        idx[d.argmin()] = m
    return idx


def detection_loss(
    model: torch.nn.Module, raw: Tuple[torch.Tensor, torch.Tensor], targets: List[Tuple[torch.Tensor, torch.Tensor]]
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """edgekit's detector loss on its raw predictions (model.forward_raw: xyxy [B, 4, N], logits [B, C, N])."""
    boxes, logits = raw
    points, stride = model.points, model.stride
    cls_target = torch.zeros_like(logits)
    box_losses, num_pos = [], 0
    for b, (gt_boxes, gt_classes) in enumerate(targets):
        idx = assign(points, gt_boxes, stride)
        pos = idx >= 0
        if not pos.any():
            continue
        pred = boxes[b][:, pos].T
        tgt = gt_boxes[idx[pos]]
        iou, giou = box_iou_giou(pred, tgt)
        box_losses.append((1 - giou).sum())
        # IoU-aware score target: ranks well-localized boxes first, which is what mAP rewards.
        cls_target[b, gt_classes[idx[pos]], torch.nonzero(pos).flatten()] = iou.detach().clamp(min=0.2)
        num_pos += int(pos.sum())
    norm = max(1, num_pos)
    cls_loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / norm
    box_loss = torch.stack(box_losses).sum() / norm if box_losses else boxes.sum() * 0
    total = cls_loss + 2.0 * box_loss
    return total, {"cls": float(cls_loss.detach()), "box": float(box_loss.detach())}


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Cross-entropy plus soft Dice: Dice weighs every class equally, so small objects are not drowned
    by the background's pixel count."""
    ce = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
    valid = (masks != IGNORE_INDEX).unsqueeze(1)
    probs = logits.softmax(1) * valid
    onehot = F.one_hot(masks.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = 1 - ((2 * inter + 1) / (denom + 1)).mean()
    return ce + dice, {"ce": float(ce.detach()), "dice": float(dice.detach())}


# --- distillation from the unpruned model (output-level knowledge distillation) ---------------------
def detection_distill(student: Tuple[torch.Tensor, torch.Tensor],
                      teacher: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The student matches the teacher's class probabilities at every anchor point (soft-label BCE) and its
    boxes where the teacher is confident (GIoU weighted by the teacher's best class probability), both
    normalised like the detection loss: per unit of teacher confidence. Inputs: (xyxy [B, 4, N] in input
    pixels, class logits [B, C, N]) of one architecture, before and after pruning."""
    s_boxes, s_logits = student
    t_boxes, t_logits = teacher
    t_prob = t_logits.sigmoid()
    weight = t_prob.max(1).values  # [B, N]
    norm = weight.sum().clamp(min=1.0)
    cls = F.binary_cross_entropy_with_logits(s_logits, t_prob, reduction="sum") / norm
    _, giou = box_iou_giou(s_boxes.permute(0, 2, 1).reshape(-1, 4), t_boxes.permute(0, 2, 1).reshape(-1, 4))
    box = ((1 - giou) * weight.reshape(-1)).sum() / norm
    return cls + 2.0 * box


def segmentation_distill(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """Hinton's distillation per pixel: KL divergence between the teacher's and the student's class
    distributions softened by `temperature`, times temperature² (gradients of the same scale as at T=1)."""
    t = temperature
    log_s = F.log_softmax(student / t, 1)
    p_t = F.softmax(teacher / t, 1)
    return F.kl_div(log_s, p_t, reduction="none").sum(1).mean() * t * t
