"""Instance segmentation: a result is detections (boxes, scores, classes in frame pixels) each with a boolean mask
of the frame; accuracy is COCO mask mAP (box mAP beside it), INT8 agreement the F1 of instances matched by mask
IoU, stream accuracy precision/recall at mask IoU 0.5."""

import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime import draw
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.measure.metrics import detection_map, instance_map
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_task
from edgekit.runtime.tasks.base import Accuracy, Fidelity, Task, Truth
from edgekit.runtime.tasks.detection import SERVED_DETECTIONS, Detections, MatchFidelity, detection_tensors, matches

# Ground truth of an image for this task: "boxes" and "classes" as for detection, and the objects' masks,
# boolean [N, H, W] in the order of the boxes, under "instance_masks" or, as an instance dataset's
# datasets.load_sample gives them to measure.evaluate.truth_of, under "mask".


class Instances:
    """Boxes, scores and classes, each with a boolean mask of the frame.

    A layout gives the masks at network-input size, each as the window that holds its pixels (Instances.at_input);
    they are brought to the frame only when something reads them, once, and kept: `windows()`, each mask's window
    in frame pixels, is what drawing and the JSON (RLE) read, and `masks`, the [N, frame h, frame w] stack, is
    made from those for the metrics that compare whole masks."""

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                 masks: Optional[np.ndarray] = None) -> None:
        self.boxes = boxes  # Nx4 float32 xyxy, frame pixels
        self.scores = scores  # N float32
        self.classes = classes  # N int64
        self._masks = masks  # N x frame height x frame width, bool (made on first use where the layout left it)
        self._windows: Optional[List[FrameMask]] = None
        self._source: Optional[Tuple[Sequence[InputMask], Transform, int, int]] = None

    @classmethod
    def at_input(cls, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, masks: Sequence["InputMask"],
                 transform: Transform, in_w: int, in_h: int) -> "Instances":
        """Instances whose masks are still at network-input size, one per box, brought to the frame (as
        masks_to_frame does) when first read."""
        out = cls(boxes, scores, classes)
        out._source = (masks, transform, in_w, in_h)
        return out

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        h, w = self.frame_size
        return f"Instances({len(self)} in a {w}x{h} frame)"

    @classmethod
    def empty(cls, width: int, height: int) -> "Instances":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   np.zeros((0, height, width), bool))

    @property
    def frame_size(self) -> Tuple[int, int]:
        """(height, width) of the frame the masks cover."""
        if self._masks is not None:
            return int(self._masks.shape[1]), int(self._masks.shape[2])
        assert self._source is not None
        transform = self._source[1]
        return int(transform.src_h), int(transform.src_w)

    def windows(self) -> List["FrameMask"]:
        """Each instance's mask in frame pixels as the window that holds its pixels (made once, then kept)."""
        if self._windows is None:
            if self._source is not None:
                self._windows = frame_windows(*self._source)
            else:
                assert self._masks is not None
                self._windows = [FrameMask.around(m) for m in self._masks]
        return self._windows

    @property
    def masks(self) -> np.ndarray:
        """Boolean [N, frame height, frame width] (made once from the windows, then kept)."""
        if self._masks is None:
            h, w = self.frame_size
            self._masks = paint(self.windows(), h, w)
        return self._masks

    @masks.setter
    def masks(self, value: np.ndarray) -> None:
        self._masks, self._windows, self._source = value, None, None

    def mask_rles(self) -> List[Dict[str, Any]]:
        """Each mask as COCO RLE of the frame (datasets.rle_encode of its frame-size mask), from its window."""
        h, w = self.frame_size
        return [m.rle(h, w) for m in self.windows()]

    def detections(self) -> Detections:
        return Detections(self.boxes, self.scores, self.classes)


# --- resampling masks as Ultralytics does (F.interpolate, bilinear, align_corners=False) ----------------------
Taps = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # per output sample: input lo, hi, weight lo, hi


@functools.lru_cache(maxsize=16)
def linear_taps(out_n: int, in_n: int) -> Taps:
    """Which two input samples each of out_n outputs of a bilinear resize reads, and their weights: PyTorch's
    upsample_bilinear2d without align_corners (half-pixel centres, clamped at the edges; OpenCV's INTER_LINEAR
    places them the same), in float32 as its CPU kernel computes them, so values that land on a threshold fall
    the same way."""
    scale = np.float32(in_n) / np.float32(out_n)
    src = np.maximum(scale * (np.arange(out_n, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_n - 1)
    hi = np.minimum(lo + 1, in_n - 1)
    w1 = np.clip(src - lo.astype(np.float32), 0, 1).astype(np.float32)
    taps = (lo, hi, np.float32(1) - w1, w1)
    for a in taps:
        a.flags.writeable = False  # cached: shared by every call
    return taps


def window(taps: Taps, start: int, stop: int) -> Tuple[int, int, Optional[Taps]]:
    """The outputs [o0, o1) that read any input in [start, stop), with their taps re-based to `start`; a tap
    outside [start, stop) gets weight 0, for the input there is zero (a mask cropped to its box)."""
    lo, hi, w0, w1 = taps
    inside_lo, inside_hi = (lo >= start) & (lo < stop), (hi >= start) & (hi < stop)
    touched = np.flatnonzero((inside_lo & (w0 != 0)) | (inside_hi & (w1 != 0)))
    if not len(touched):
        return 0, 0, None
    o0, o1 = int(touched[0]), int(touched[-1]) + 1
    s = slice(o0, o1)
    zero = np.float32(0)
    return o0, o1, (np.clip(lo[s] - start, 0, stop - start - 1), np.clip(hi[s] - start, 0, stop - start - 1),
                    np.where(inside_lo[s], w0[s], zero), np.where(inside_hi[s], w1[s], zero))


def resample(a: np.ndarray, rows: Taps, cols: Taps) -> np.ndarray:
    """A 2-D float32 array read at the given row and column taps: along a row first, then down the columns,
    which is the order PyTorch's kernel sums in."""
    rlo, rhi, rw0, rw1 = rows
    clo, chi, cw0, cw1 = cols
    t = a[:, clo] * cw0 + a[:, chi] * cw1
    return t[rlo] * rw0[:, None] + t[rhi] * rw1[:, None]


class InputMask:
    """One instance's mask at network-input size, kept as the window that holds its pixels: given, or upsampled
    from its logits at prototype resolution (the box's crop) by `rows` and `cols` taps when first read."""

    def __init__(self, y: int, x: int, pixels: Optional[np.ndarray] = None, logits: Optional[np.ndarray] = None,
                 rows: Optional[Taps] = None, cols: Optional[Taps] = None) -> None:
        self.y, self.x = y, x
        self._pixels = pixels
        self._upsample = None if pixels is not None else (logits, rows, cols)

    @property
    def pixels(self) -> np.ndarray:
        """Boolean [h, w]: logits upsampled bilinearly, > 0."""
        if self._pixels is None:
            assert self._upsample is not None
            logits, rows, cols = self._upsample
            self._pixels, self._upsample = resample(logits, rows, cols) > 0, None
        return self._pixels

    @property
    def shape(self) -> Tuple[int, int]:
        if self._pixels is None and self._upsample is not None:
            return len(self._upsample[1][0]), len(self._upsample[2][0])
        return self.pixels.shape[0], self.pixels.shape[1]


def shows(logits: np.ndarray, rows: Taps, cols: Taps) -> bool:
    """Whether resample(logits, rows, cols) > 0 anywhere, computing little of it: nowhere when no logit is above
    zero (the taps' weights are >= 0); else the outputs that read the largest logit, which are computed as the
    whole resample computes them, and the whole window only where none of those is above zero."""
    if not (logits > 0).any():
        return False
    r, c = np.unravel_index(int(np.argmax(logits)), logits.shape)
    near_r = np.flatnonzero((rows[0] == r) | (rows[1] == r))
    near_c = np.flatnonzero((cols[0] == c) | (cols[1] == c))
    near_rows = (rows[0][near_r], rows[1][near_r], rows[2][near_r], rows[3][near_r])
    near_cols = (cols[0][near_c], cols[1][near_c], cols[2][near_c], cols[3][near_c])
    if len(near_r) and len(near_c) and (resample(logits, near_rows, near_cols) > 0).any():
        return True
    return bool((resample(logits, rows, cols) > 0).any())


@dataclass
class FrameMask:
    """One instance's mask in frame pixels, kept as the window that holds its pixels (none outside it)."""

    y: int
    x: int
    pixels: np.ndarray  # bool

    @classmethod
    def around(cls, mask: np.ndarray) -> "FrameMask":
        """The window of a frame-size boolean mask that holds its pixels."""
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not len(rows):
            return cls(0, 0, np.zeros((0, 0), bool))
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        return cls(y0, x0, np.asarray(mask[y0:y1, x0:x1], bool))

    def rle(self, height: int, width: int) -> Dict[str, Any]:
        """datasets.rle_encode of this mask in a height x width frame, made from the window: runs down the
        columns the object spans, with the columns either side joining the first and last background runs."""
        cols = np.flatnonzero(self.pixels.any(0))
        if not len(cols):
            return datasets.rle_of_columns(np.zeros((height, 0), bool), 0, width)
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        strip = np.zeros((height, c1 - c0), bool)  # those columns, frame height
        strip[self.y:self.y + self.pixels.shape[0]] = self.pixels[:, c0:c1]
        return datasets.rle_of_columns(strip, self.x + c0, width)


def frame_windows(masks: Sequence[InputMask], transform: Transform, in_w: int, in_h: int) -> List[FrameMask]:
    """Network-input masks -> their windows in frame pixels, as Ultralytics' scale_masks brings a binary mask to
    the frame: the letterbox padding cut away, the rest resized bilinearly (F.interpolate), then > 0.5 (its
    older scale_image, cv2.INTER_LINEAR on a 0/1 uint8 mask, rounds the same way). Only each mask's window is
    resampled; where the input shows the frame at its own size (a 640x480 frame in a 640x640 letterbox) the
    resize reads each pixel with weight 1 and the window is the mask's, padding cut."""
    x0, y0, x1, y1 = transform.valid_region(in_w, in_h)
    fw, fh = transform.src_w, transform.src_h
    same_size = (x1 - x0, y1 - y0) == (fw, fh)
    taps_x, taps_y = linear_taps(fw, x1 - x0), linear_taps(fh, y1 - y0)
    out = []
    for m in masks:
        h, w = m.shape
        # the window in valid-region coordinates, padding dropped
        a0, a1 = max(m.x, x0) - x0, min(m.x + w, x1) - x0
        b0, b1 = max(m.y, y0) - y0, min(m.y + h, y1) - y0
        if a0 >= a1 or b0 >= b1:
            out.append(FrameMask(0, 0, np.zeros((0, 0), bool)))
            continue
        part = m.pixels[b0 + y0 - m.y:b1 + y0 - m.y, a0 + x0 - m.x:a1 + x0 - m.x]
        if same_size:
            out.append(FrameMask(b0, a0, np.array(part, bool)))
            continue
        c0, c1, cols = window(taps_x, a0, a1)
        r0, r1, rows = window(taps_y, b0, b1)
        if cols is None or rows is None:
            out.append(FrameMask(0, 0, np.zeros((0, 0), bool)))
            continue
        out.append(FrameMask(r0, c0, resample(part.astype(np.float32), rows, cols) > 0.5))
    return out


def paint(windows: Sequence[FrameMask], height: int, width: int) -> np.ndarray:
    """Windows -> boolean [N, height, width]."""
    out = np.zeros((len(windows), height, width), bool)
    for k, m in enumerate(windows):
        h, w = m.pixels.shape
        out[k, m.y:m.y + h, m.x:m.x + w] = m.pixels
    return out


def masks_to_frame(masks: Sequence[InputMask], transform: Transform, in_w: int, in_h: int) -> np.ndarray:
    """Network-input masks -> boolean [N, frame h, frame w] (frame_windows, painted on the frame)."""
    return paint(frame_windows(masks, transform, in_w, in_h), transform.src_h, transform.src_w)


# --- matching, accuracy, agreement ----------------------------------------------------------------------------
def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of two stacks of boolean masks of one size."""
    fa = a.reshape(len(a), -1).astype(np.float32)  # pixel counts stay exact in float32 up to 16.7 M pixels
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1)


def mask_match_pairs(found: Instances, masks: np.ndarray, classes: np.ndarray,
                     iou: float = 0.5) -> List[Tuple[int, int, float]]:
    """(index in found, index in masks, mask IoU) of the instances that match a mask of the same class (mask
    IoU >= iou), greedily from the highest score; each mask matches once."""
    if len(found) == 0 or len(masks) == 0:
        return []
    ious = mask_iou(found.masks, masks)
    ious[found.classes[:, None] != np.asarray(classes)[None, :]] = 0
    pairs = []
    for i in np.argsort(-found.scores, kind="stable"):
        j = int(np.argmax(ious[i]))
        if ious[i, j] >= iou:
            pairs.append((int(i), j, float(ious[i, j])))
            ious[:, j] = 0
    return pairs


def mask_matches(found: Instances, masks: np.ndarray, classes: np.ndarray, iou: float = 0.5) -> int:
    """How many of `found` match a mask of the same class (mask IoU >= iou); see mask_match_pairs."""
    return len(mask_match_pairs(found, masks, classes, iou))


class InstanceFidelity(MatchFidelity):
    """MatchFidelity with instances matched by mask IoU."""

    key, iou_name = "instance_f1", "mean_mask_iou"

    def pairs(self, reference: Any, other: Any) -> List[Tuple[int, int, float]]:
        return mask_match_pairs(other, reference.masks, reference.classes)


def instance_f1(ref: Instances, other: Instances, iou: float = 0.5) -> float:
    """F1 of greedily matching `other` to `ref` (same class, mask IoU >= iou); 1.0 when both are empty."""
    if len(ref) == 0 and len(other) == 0:
        return 1.0
    return 2 * mask_matches(other, ref.masks, ref.classes, iou) / (len(ref) + len(other))


def truth_masks(truth: Truth) -> Optional[np.ndarray]:
    """The ground truth's per-object masks [N, H, W], or None where the source has none (a class map only)."""
    masks = truth.get("instance_masks")
    if masks is None:
        masks = truth.get("mask")
    masks = None if masks is None else np.asarray(masks)
    return masks if masks is not None and masks.ndim == 3 else None


class MaskMeanAveragePrecision(Accuracy):
    """Mask mAP@0.5 and mAP@0.5:0.95 by the COCO protocol (faster-coco-eval, iouType "segm"), box mAP beside.
    Masks are kept as RLE, so a whole dataset's fit in memory."""

    def __init__(self, card: ModelCard) -> None:
        self.num_classes = card.num_classes
        self.preds: List[Dict[str, Any]] = []
        self.gts: List[Dict[str, Any]] = []

    def add(self, result: Instances, truth: Truth) -> None:
        masks = truth_masks(truth)
        if masks is None:
            raise EdgekitError("instance segmentation accuracy needs each object's mask in the ground truth "
                               "(COCO annotations with a 'segmentation' per object)")
        self.preds.append({"boxes": result.boxes, "scores": result.scores, "classes": result.classes,
                           "masks": result.mask_rles()})
        self.gts.append({"boxes": truth["boxes"], "classes": truth["classes"],
                         "masks": [datasets.rle_encode(m) for m in masks]})

    def summary(self) -> Dict[str, Any]:
        boxes = detection_map(self.preds, self.gts, self.num_classes)
        return {**instance_map(self.preds, self.gts, self.num_classes),
                "box_mAP50": boxes["mAP50"], "box_mAP50_95": boxes["mAP50_95"]}


class MaskPrecisionRecall(Accuracy):
    """Precision and recall at mask IoU 0.5 (same class), for every frame of a stream; by box IoU where the
    source gives boxes but no per-object masks (synthetic:// gives a class map)."""

    def __init__(self) -> None:
        self.tp = self.fp = self.fn = 0
        self.by_mask = self.by_box = 0

    def add(self, result: Instances, truth: Truth) -> None:
        if "boxes" not in truth:
            return
        classes = np.asarray(truth["classes"], np.int64)
        masks = truth_masks(truth)
        if masks is not None and masks.shape[1:] == result.frame_size:
            matched, n = mask_matches(result, masks, classes), len(masks)
            self.by_mask += 1
        else:
            boxes = np.asarray(truth["boxes"], np.float32).reshape(-1, 4)
            matched, n = matches(result.detections(), boxes, classes), len(boxes)
            self.by_box += 1
        self.tp += matched
        self.fp += len(result) - matched
        self.fn += n - matched

    def summary(self) -> Dict[str, Any]:
        return {"precision": self.tp / max(1, self.tp + self.fp), "recall": self.tp / max(1, self.tp + self.fn),
                "true_positives": self.tp, "false_positives": self.fp, "false_negatives": self.fn,
                "matched_by": "box" if self.by_box > self.by_mask else "mask"}


@register_task
class InstanceSegmentation(Task):
    name = "instance_segmentation"
    description = "boxes with a class, a score and a mask of the object's pixels"
    metric_label = "mask mAP@0.5 / mAP@0.5:0.95"
    primary_metric = "mask_mAP50_95"
    agreement_key = "instance_f1"
    truth_kind = "boxes"  # streams give boxes per object (synthetic://, synth videos), no masks: scored by box
    eval_score_threshold = 0.001  # COCO practice, as for detection

    def load_dataset(self, root: Any, split: str, fmt: str = "auto") -> datasets.Dataset:
        return datasets.load_instances(root, split)

    def draw(self, image: np.ndarray, result: Instances, card: ModelCard) -> None:
        colours = draw.palette(card.num_classes).astype(np.float32)  # a class's box and mask share its colour
        if image.shape[:2] != result.frame_size:
            raise EdgekitError(f"instance masks of a {result.frame_size[1]}x{result.frame_size[0]} frame drawn on a "
                               f"{image.shape[1]}x{image.shape[0]} image")
        for m, c in zip(result.windows(), result.classes):  # each mask's window alone: the frame outside is untouched
            h, w = m.pixels.shape
            part = image[m.y:m.y + h, m.x:m.x + w]
            part[m.pixels] = (part[m.pixels] * 0.5 + colours[c] * 0.5).astype(np.uint8)
        draw.draw_boxes(image, result.boxes, result.scores, result.classes, card.classes)

    def to_json(self, result: Instances, card: ModelCard) -> Dict[str, Any]:
        return {"detections": [
            {"class": card.classes[int(c)], "class_id": int(c), "score": round(float(s), 4),
             "box": [round(float(v), 1) for v in b], "mask": m}
            for b, s, c, m in zip(result.boxes, result.scores, result.classes, result.mask_rles())
        ]}

    def served_outputs(self, card: ModelCard) -> List[Tuple[str, str, List[int]]]:
        return [*SERVED_DETECTIONS, ("MASKS", "uint8", [-1, -1, -1])]  # and each object's mask of the frame, 0/1

    def to_tensors(self, result: Instances, card: ModelCard) -> Dict[str, np.ndarray]:
        return {**detection_tensors(result.detections()), "MASKS": np.asarray(result.masks, np.uint8)}

    def accuracy(self, card: ModelCard) -> Accuracy:
        return MaskMeanAveragePrecision(card)

    def stream_accuracy(self, card: ModelCard) -> Accuracy:
        return MaskPrecisionRecall()

    def agreement(self, reference: Instances, other: Instances) -> float:
        return instance_f1(reference, other)

    def fidelity(self, card: ModelCard) -> Fidelity:
        return InstanceFidelity(card.score_threshold)

    def accuracy_text(self, metrics: Mapping[str, Any], compact: bool = False) -> str:
        if compact:
            return f"{metrics['mask_mAP50']:.3f} / {metrics['mask_mAP50_95']:.3f}"
        return f"mask mAP@0.5 {metrics['mask_mAP50']:.3f}, mask mAP@0.5:0.95 {metrics['mask_mAP50_95']:.3f}"

    def accuracy_details(self, metrics: Mapping[str, Any]) -> List[str]:
        return ["", f"box mAP@0.5 {metrics['box_mAP50']:.3f}, box mAP@0.5:0.95 {metrics['box_mAP50_95']:.3f}"]

    def stream_accuracy_text(self, metrics: Mapping[str, Any]) -> str:
        by = "box IoU: the source gives no per-object masks" if metrics.get("matched_by") == "box" else "mask IoU"
        return f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f} (>= 0.5 {by}, same class)"
