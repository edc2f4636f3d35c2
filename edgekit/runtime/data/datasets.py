"""Reading labelled datasets for training and evaluation, with one-line errors for broken ones.

Layouts (the synth writer produces all three at once):
  detection, COCO:  ROOT/annotations/SPLIT.json  + ROOT/images/SPLIT/<file_name>
  detection, YOLO:  ROOT/labels/SPLIT/<stem>.txt + ROOT/images/SPLIT/<stem>.<ext>, class names from
                    ROOT/dataset.json ("names"), ROOT/data.yaml ("names") or ROOT/classes.txt
  segmentation:     ROOT/masks/SPLIT/<stem>.png (class index per pixel, 255 = ignore)
                    + ROOT/images/SPLIT/<stem>.<ext>, class names from ROOT/dataset.json
                    ("seg_classes") or ROOT/seg_classes.txt
  instance masks:   ROOT/annotations/SPLIT.json (COCO, a `segmentation` per annotation: polygons, or RLE
                    compressed or not) + ROOT/images/SPLIT/<file_name>
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, cast

import cv2
import numpy as np

from edgekit.errors import EdgekitError, MissingDependency
from edgekit.runtime import registry

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255


@dataclass
class Sample:
    image: Path
    boxes: np.ndarray  # detection: Nx4 float32 xyxy in image pixels
    classes: np.ndarray  # detection: N int64 class indices
    mask: Optional[Path] = None  # segmentation: class-index PNG
    segmentations: Optional[List[Any]] = None  # instance masks: each box's COCO `segmentation`, as written


@dataclass
class Dataset:
    task: str
    root: Path
    split: str
    classes: List[str]
    samples: List[Sample]
    format: str

    def __len__(self) -> int:
        return len(self.samples)


def _images_dir(root: Path, split: str) -> Path:
    d = root / "images" / split
    if not d.is_dir():
        raise EdgekitError(f"{d}: image folder not found (expected ROOT/images/{split}/)")
    return d


def _list_images(d: Path) -> Dict[str, Path]:
    found = {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    if not found:
        raise EdgekitError(f"{d}: no images ({', '.join(IMAGE_EXTS)})")
    return found


def _check_root(root: Path) -> None:
    if not root.exists():
        raise EdgekitError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise EdgekitError(f"{root}: not a folder")
    if not any(root.iterdir()):
        raise EdgekitError(f"{root}: dataset folder is empty")


def _names_from(root: Path, key: str, txt: str) -> Optional[List[str]]:
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            names = json.loads(meta.read_text()).get(key)
        except json.JSONDecodeError as e:
            raise EdgekitError(f"{meta}: not valid JSON ({e.msg})") from None
        if names:
            return [str(n) for n in names]
    if key == "names" and (root / "data.yaml").is_file():
        from edgekit.runtime.card import _yaml

        names = _yaml().safe_load((root / "data.yaml").read_text()).get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if names:
            return [str(n) for n in names]
    if (root / txt).is_file():
        return [ln.strip() for ln in (root / txt).read_text().splitlines() if ln.strip()]
    return None


def detect_format(root: Path, split: str) -> str:
    if (root / "annotations" / f"{split}.json").is_file():
        return "coco"
    if (root / "labels" / split).is_dir():
        return "yolo"
    raise EdgekitError(
        f"{root}: no detection labels for split '{split}' (expected annotations/{split}.json or labels/{split}/)"
    )


def load_detection(root: "str | Path", split: str, fmt: str = "auto") -> Dataset:
    root = Path(root)
    _check_root(root)
    fmt = detect_format(root, split) if fmt == "auto" else fmt
    if fmt == "coco":
        return _load_coco(root, split)
    if fmt == "yolo":
        return _load_yolo(root, split)
    raise EdgekitError(f"unknown detection dataset format '{fmt}' (use coco or yolo)")


def _load_coco(root: Path, split: str, instances: bool = False) -> Dataset:
    ann_path = root / "annotations" / f"{split}.json"
    images_dir = _images_dir(root, split)
    try:
        coco = json.loads(ann_path.read_text())
        cats = sorted(coco["categories"], key=lambda c: c["id"])
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        images = coco["images"]
        anns = coco.get("annotations", [])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise EdgekitError(f"{ann_path}: not a COCO annotation file ({e})") from None
    if not images:
        raise EdgekitError(f"{ann_path}: lists no images")
    by_image: Dict[int, List[dict]] = {}
    for a in anns:
        if a.get("category_id") not in cat_index:
            raise EdgekitError(
                f"{ann_path}: annotation {a.get('id')} has category id {a.get('category_id')}, "
                f"not among the {len(cats)} categories"
            )
        by_image.setdefault(a["image_id"], []).append(a)
    samples = []
    for im in images:
        path = images_dir / im["file_name"]
        if not path.is_file():
            raise EdgekitError(f"{ann_path}: image '{im['file_name']}' (id {im['id']}) not found in {images_dir}")
        rows = [a for a in by_image.get(im["id"], []) if not a.get("iscrowd", 0)]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in rows)], np.float32).reshape(-1, 4)
        classes = np.array([cat_index[a["category_id"]] for a in rows], np.int64)
        segmentations = None
        if instances:
            bare = [a.get("id") for a in rows if not a.get("segmentation")]
            if bare:
                raise EdgekitError(f"{ann_path}: annotation {bare[0]} has no 'segmentation' (instance masks need "
                                   "a polygon or RLE for every object; this looks like a detection-only file)")
            segmentations = [a["segmentation"] for a in rows]
        samples.append(Sample(path, boxes, classes, segmentations=segmentations))
    task = "instance_segmentation" if instances else "detection"
    return Dataset(task, root, split, [str(c["name"]) for c in cats], samples, "coco")


def _load_yolo(root: Path, split: str) -> Dataset:
    images = _list_images(_images_dir(root, split))
    labels_dir = root / "labels" / split
    names = _names_from(root, "names", "classes.txt")
    if not names:
        raise EdgekitError(f"{root}: YOLO labels need class names (dataset.json or data.yaml 'names', or classes.txt)")
    for txt in sorted(labels_dir.glob("*.txt")):
        if txt.stem not in images:
            raise EdgekitError(f"{txt}: no image named {txt.stem}.* in {root / 'images' / split}")
    samples = []
    for stem, img in images.items():
        txt = labels_dir / f"{stem}.txt"
        boxes, classes = [], []
        if txt.is_file():
            for lineno, line in enumerate(txt.read_text().splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    c = int(parts[0])
                    cx, cy, w, h = (float(v) for v in parts[1:5])
                    if len(parts) < 5:
                        raise ValueError
                except ValueError:
                    msg = f"expected 'class cx cy w h', got '{line.strip()}'"
                    raise EdgekitError(f"{txt} line {lineno}: {msg}") from None
                if not 0 <= c < len(names):
                    raise EdgekitError(f"{txt} line {lineno}: class id {c} out of range ({len(names)} classes)")
                boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                classes.append(c)
        samples.append(Sample(img, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)))
    # YOLO boxes are normalized: scale by each image's size once it is read (see load_image_boxes).
    return Dataset("detection", root, split, names, samples, "yolo")


def load_segmentation(root: "str | Path", split: str) -> Dataset:
    root = Path(root)
    _check_root(root)
    images = _list_images(_images_dir(root, split))
    masks_dir = root / "masks" / split
    if not masks_dir.is_dir():
        raise EdgekitError(f"{masks_dir}: mask folder not found (expected ROOT/masks/{split}/)")
    names = _names_from(root, "seg_classes", "seg_classes.txt")
    if not names:
        raise EdgekitError(f"{root}: masks need class names (dataset.json 'seg_classes' or seg_classes.txt)")
    masks = {p.stem: p for p in masks_dir.glob("*.png")}
    for stem, m in sorted(masks.items()):
        if stem not in images:
            raise EdgekitError(f"{m}: no image named {stem}.* in {root / 'images' / split}")
    samples = []
    empty = np.zeros((0, 4), np.float32)
    for stem, img in images.items():
        if stem not in masks:
            raise EdgekitError(f"{img}: no mask {stem}.png in {masks_dir}")
        samples.append(Sample(img, empty, np.zeros(0, np.int64), masks[stem]))
    return Dataset("segmentation", root, split, names, samples, "masks")


def load_instances(root: "str | Path", split: str) -> Dataset:
    """COCO instance annotations: ROOT/annotations/SPLIT.json with a `segmentation` per object."""
    root = Path(root)
    _check_root(root)
    if not (root / "annotations" / f"{split}.json").is_file():
        raise EdgekitError(f"{root}: no instance labels for split '{split}' (expected annotations/{split}.json with "
                           "a 'segmentation' per annotation)")
    return _load_coco(root, split, instances=True)


def load(task: str, root: "str | Path", split: str, fmt: str = "auto") -> Dataset:
    """The labelled dataset of a task (each task says how its labels are stored)."""
    return registry.task(task).load_dataset(root, split, fmt)


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 image, or a one-line error naming the file."""
    data = np.fromfile(str(path), np.uint8) if path.is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if img is None:
        raise EdgekitError(f"{path}: cannot decode image (corrupt or not an image)")
    return img


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    data = np.fromfile(str(path), np.uint8) if path.is_file() else None
    mask = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if mask is None or mask.ndim != 2:
        raise EdgekitError(f"{path}: cannot decode mask (expected a single-channel PNG of class indices)")
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_INDEX)])
    if bad.size:
        raise EdgekitError(f"{path}: class index {int(bad[0])} out of range ({num_classes} classes)")
    return mask


def load_sample(ds: Dataset, i: int):
    """(image, boxes in pixels, classes, mask or None) for sample i, validated. The mask is the class-index map
    of a segmentation dataset, or, for an instance dataset, one boolean mask per box: [N, H, W]."""
    s = ds.samples[i]
    img = read_image(s.image)
    boxes = s.boxes
    if ds.format == "yolo" and len(boxes):
        h, w = img.shape[:2]
        boxes = boxes * np.array([w, h, w, h], np.float32)
    mask = None
    if s.mask is not None:
        mask = read_mask(s.mask, len(ds.classes))
        if mask.shape != img.shape[:2]:
            (mh, mw), (ih, iw) = mask.shape, img.shape[:2]
            raise EdgekitError(f"{s.mask}: mask is {mw}x{mh}, image is {iw}x{ih}")
    if s.segmentations is not None:
        h, w = img.shape[:2]
        masks = np.zeros((len(s.segmentations), h, w), bool)
        for k, segm in enumerate(s.segmentations):
            masks[k] = segmentation_mask(segm, h, w, f"{ds.root / 'annotations' / ds.split}.json ({s.image.name})")
        mask = masks
    return img, boxes, s.classes, mask


# --- COCO masks: run-length encoding (pycocotools' maskApi.c, rleEncode / rleToString / rleFrString) ---------
def rle_encode(mask: np.ndarray) -> Dict[str, Any]:
    """A binary HxW mask as COCO compressed RLE {"size": [h, w], "counts": str}: runs down the columns, starting
    with background, written as pycocotools' rleToString does (what faster-coco-eval and pycocotools decode)."""
    h, w = mask.shape
    m = np.asarray(mask, bool)
    cols = np.flatnonzero(m.any(0))
    if not len(cols):
        return rle_of_columns(np.zeros((h, 0), bool), 0, w)
    # Only the columns the object spans are scanned (a frame-sized mask of a small object is mostly background).
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    return rle_of_columns(m[:, x0:x1], x0, w)


def rle_of_columns(strip: np.ndarray, x0: int, width: int) -> Dict[str, Any]:
    """rle_encode of a height x `width` mask that is all background outside `strip`, its columns x0.. (the height
    is the strip's): the columns either side join the first and last background runs."""
    h = strip.shape[0]
    if not strip.size:
        return {"size": [int(h), int(width)], "counts": _rle_string([h * width]) if h * width else ""}
    flat = strip.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    if flat[0]:
        runs.insert(0, 0)
    runs[0] += x0 * h
    if flat[-1]:
        runs.append(0)
    runs[-1] += (width - x0 - strip.shape[1]) * h
    if runs[-1] == 0:
        runs.pop()
    return {"size": [int(h), int(width)], "counts": _rle_string(runs)}


def _rle_string(runs: List[int]) -> str:
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run  # a delta against the run of the same value two back
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr((c | 0x20 if more else c) + 48))
    return "".join(out)


def _rle_runs(counts: "str | bytes") -> List[int]:
    s = counts.decode() if isinstance(counts, bytes) else counts
    runs: List[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        runs.append(x + runs[-2] if len(runs) > 2 else x)
    return runs


def rle_decode(rle: Dict[str, Any]) -> np.ndarray:
    """COCO RLE, compressed (a string) or not (a list of runs) -> boolean HxW mask."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = list(counts) if isinstance(counts, list) else _rle_runs(counts)
    if sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, its size {w}x{h} has {h * w}")
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape(w, h).T


def segmentation_mask(segm: Any, h: int, w: int, where: str) -> np.ndarray:
    """A COCO `segmentation` (RLE, or polygons rasterised as pycocotools does, through faster-coco-eval) ->
    boolean HxW mask of an h x w image; a one-line error naming `where` for one that does not fit."""
    if isinstance(segm, dict):
        if [int(v) for v in segm.get("size", [])] != [h, w]:
            raise EdgekitError(f"{where}: an RLE of size {segm.get('size')} on an image of {w}x{h} (size is [h, w])")
        try:
            return rle_decode(segm)
        except (ValueError, TypeError, KeyError) as e:
            raise EdgekitError(f"{where}: not a COCO RLE ({e})") from None
    if not isinstance(segm, list) or not all(isinstance(p, list) and len(p) >= 6 for p in segm):
        raise EdgekitError(f"{where}: a segmentation must be RLE or a list of polygons [x1, y1, x2, y2, ...] of "
                           "3 points or more")
    try:
        from faster_coco_eval.core import mask as coco_mask
    except ImportError:
        raise MissingDependency("faster-coco-eval", "eval") from None
    polygons = cast(List[Dict[str, Any]], coco_mask.frPyObjects(segm, h, w))  # one RLE per polygon
    return coco_mask.decode(coco_mask.merge(polygons)).astype(bool)


def check_classes(ds: Dataset, expected: Sequence[str], what: str) -> None:
    if list(ds.classes) != list(expected):
        raise EdgekitError(
            f"{ds.root}: dataset classes {list(ds.classes)} differ from {what} classes {list(expected)}"
        )
