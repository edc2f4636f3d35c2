"""`edgekit data synth`: write a synthetic dataset folder (images, YOLO + COCO labels, masks, videos)."""

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.artifacts import atomic_dir
from edgekit.runtime.data.datasets import rle_encode
from edgekit.runtime.data.synth import (
    CLASSES,
    GENERATOR_VERSION,
    Frame,
    VideoScene,
    draw_clutter,
    place_shapes,
    render_background,
    render_image,
)

SPLITS = ("train", "val", "test")
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}  # disjoint image indices per split


def _yolo_lines(frame: Frame) -> List[str]:
    h, w = frame.mask.shape
    lines = []
    for (x1, y1, x2, y2), c in zip(frame.boxes, frame.classes):
        lines.append(f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return lines


def instance_masks(frame: Frame, seed: int, index: int, size: Tuple[int, int]) -> np.ndarray:
    """The visible pixels of each labelled object of render_image(seed, index, size), [N, H, W] bool, in the
    order of frame.boxes.

    The renderer returns only the class map, so the objects are replayed from the image's seed: its shapes come
    from the first draws of its generator, before anything is composed. Drawn in order (later ones cover earlier
    ones) and cut by the class map, which is background where clutter covers an object and for an object left
    with too few pixels to be labelled, they are the objects as labelled. Checked against the frame's boxes and
    classes, so a change to the renderer cannot write wrong masks silently."""
    w, h = size
    rng = np.random.default_rng([seed, 0, index])  # render_image's draws, in its order
    background = render_background(rng, h, w).clip(0, 255).astype(np.uint8)
    draw_clutter(rng, background, int(rng.integers(0, 8)), min(h, w) * 0.2)
    shapes = place_shapes(rng, h, w, int(rng.integers(1, 7)))
    owner = np.zeros((h, w), np.int32)
    for i, shape in enumerate(shapes):
        drawn = np.zeros((h, w), np.uint8)
        shape.draw_mask(drawn)
        owner[drawn.astype(bool)] = i + 1
    owner[frame.mask == 0] = 0
    masks, classes = [], []
    for i, shape in enumerate(shapes):
        m = owner == i + 1
        if m.any():
            masks.append(m)
            classes.append(shape.cls)
    out = np.array(masks, bool).reshape(-1, h, w)
    boxes = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] for ys, xs in (np.nonzero(m) for m in out)]
    if classes != frame.classes.tolist() or not np.array_equal(np.array(boxes, np.float32).reshape(-1, 4),
                                                              frame.boxes):
        raise RuntimeError(f"synth image {index} (seed {seed}): the replayed objects differ from the rendered "
                           "ones; edgekit/runtime/data/synth.py render_image changed its draws")
    return out


def _coco(split_records: List[Tuple[str, Frame, np.ndarray]]) -> Dict:
    images, annotations = [], []
    for image_id, (file_name, frame, masks) in enumerate(split_records, start=1):
        h, w = frame.mask.shape
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for (x1, y1, x2, y2), c, m in zip(frame.boxes.tolist(), frame.classes.tolist(), masks):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(c) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": int(m.sum()),  # COCO's area is the mask's: it sorts objects into small/medium/large
                "iscrowd": 0,
                "segmentation": rle_encode(m),  # RLE, exact: occlusion and clutter leave holes polygons lose
            })
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_dataset(
    out: Path,
    seed: int = 0,
    counts: Optional[Dict[str, int]] = None,
    size: Tuple[int, int] = (320, 240),
    videos: int = 1,
    video_frames: int = 150,
    video_size: Tuple[int, int] = (640, 480),
    fps: float = 15.0,
    overwrite: bool = False,
    progress: bool = True,
    jpeg_quality: int = 92,
) -> Dict:
    """Generate the dataset into `out` atomically; returns the class-balance summary."""
    counts = counts or {"train": 1200, "val": 200, "test": 200}
    if any(n < 0 for n in counts.values()) or sum(counts.values()) == 0:
        raise EdgekitError("image counts must be non-negative and not all zero")
    summary: Dict = {"classes": list(CLASSES), "splits": {}}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for split in SPLITS:
            n = counts.get(split, 0)
            for sub in ("images", "labels", "masks"):
                (tmp / sub / split).mkdir(parents=True)
            records: List[Tuple[str, Frame, np.ndarray]] = []
            inst = np.zeros(len(CLASSES), np.int64)
            pix = np.zeros(len(CLASSES) + 1, np.int64)
            for i in _progress(range(n), f"synth {split}", progress):
                frame = render_image(seed, SPLIT_OFFSETS[split] + i, size)
                masks = instance_masks(frame, seed, SPLIT_OFFSETS[split] + i, size)
                stem = f"{i:06d}"
                jpeg = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]
                cv2.imwrite(str(tmp / "images" / split / f"{stem}.jpg"), frame.image, jpeg)
                cv2.imwrite(str(tmp / "masks" / split / f"{stem}.png"), frame.mask)
                (tmp / "labels" / split / f"{stem}.txt").write_text("".join(x + "\n" for x in _yolo_lines(frame)))
                records.append((f"{stem}.jpg", frame, masks))
                inst += np.bincount(frame.classes, minlength=len(CLASSES))
                pix += np.bincount(frame.mask.ravel(), minlength=len(CLASSES) + 1)
            (tmp / "annotations").mkdir(exist_ok=True)
            (tmp / "annotations" / f"{split}.json").write_text(json.dumps(_coco(records)))
            summary["splits"][split] = {
                "images": n,
                "instances": {c: int(k) for c, k in zip(CLASSES, inst)},
                "pixel_share": {
                    c: round(float(p) / max(1, int(pix.sum())), 4) for c, p in zip(("background", *CLASSES), pix)
                },
            }
        if videos:
            (tmp / "videos").mkdir()
        for v in range(videos):
            _write_video(tmp / "videos", f"stream_{v:02d}", seed * 1000 + v, video_frames, video_size, fps, progress)
        meta = {
            "name": "edgekit-synth",
            "generator": {"version": GENERATOR_VERSION, "seed": seed, "image_size": list(size)},
            "names": list(CLASSES),
            "seg_classes": ["background", *CLASSES],
            "splits": {s: counts.get(s, 0) for s in SPLITS},
            "videos": videos,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "class_balance.json").write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / "class_balance.md").write_text(balance_markdown(summary))
    return summary


def _write_video(
    folder: Path, stem: str, seed: int, frames: int, size: Tuple[int, int], fps: float, progress: bool
) -> None:
    """An MP4 of moving shapes, its per-frame boxes (JSON Lines) and class masks (compressed npz)."""
    scene = VideoScene(seed, size)
    writer = cv2.VideoWriter(str(folder / f"{stem}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise EdgekitError(f"{folder / stem}.mp4: OpenCV cannot write MP4 video here")
    masks = []
    with open(folder / f"{stem}.gt.jsonl", "w") as gt:
        for i in _progress(range(frames), f"video {stem}", progress):
            frame = scene.next()
            writer.write(frame.image)
            masks.append(frame.mask)
            gt.write(json.dumps({
                "frame": i,
                "boxes": np.round(frame.boxes, 1).tolist(),
                "classes": frame.classes.tolist(),
                "visible": np.round(frame.visible, 3).tolist(),
            }) + "\n")
    writer.release()
    np.savez_compressed(folder / f"{stem}.masks.npz", masks=np.stack(masks))


def balance_markdown(summary: Dict) -> str:
    classes = summary["classes"]
    lines = ["| split | images | " + " | ".join(classes) + " |", "|---|---:|" + "---:|" * len(classes)]
    for split, s in summary["splits"].items():
        lines.append(f"| {split} | {s['images']} | " + " | ".join(str(s["instances"][c]) for c in classes) + " |")
    return "Instances per class\n\n" + "\n".join(lines) + "\n"


def _progress(it, desc: str, enabled: bool):
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, leave=False)
