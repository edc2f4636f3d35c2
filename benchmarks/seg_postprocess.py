"""The postprocess stage (Model.decode) of two segmenters on 640x480 frames, with what the sink then pays per
frame (Model.to_json, and Model.draw where video is written), eager against lazy, interleaved, medians.

- semantic: the shipped segmenter (models/segmenter, 256x192 logits) exported to ONNX and run by ONNX Runtime
  on `edgekit data synth` stream frames;
- instance: a YOLOv8-seg head at 640x640 (8400 anchors, 32 prototypes at 160x160) whose outputs are made from
  each frame's ground truth (an oracle: boxes of the frame's objects, a prototype per object, near-duplicate
  boxes for NMS and low-scored background anchors), 5-20 instances a frame.

"eager" is what the pipeline paid before the results went lazy: decode, then the frame-size arrays made at once
(ClassMap.classes, Instances.masks), drawn and serialized from those full-frame arrays as the tasks did
(eager_draw, eager_to_json below). "lazy" is decode as it is now, then the task's own draw and to_json.

    python benchmarks/seg_postprocess.py [--reps 300] [--frames 12]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edgekit.runtime import draw as drawing  # noqa: E402
from edgekit.runtime.card import ModelCard  # noqa: E402
from edgekit.runtime.data import datasets  # noqa: E402
from edgekit.runtime.data.synth import CLASSES as SHAPES  # noqa: E402
from edgekit.runtime.data.synth import VideoScene  # noqa: E402
from edgekit.runtime.layouts.base import DecodeParams  # noqa: E402
from edgekit.runtime.preprocess import Transform, preprocess  # noqa: E402

FRAME = (640, 480)  # width, height
INPUT = 640  # the instance segmenter's square input
NM = 32
ANCHORS = 80 * 80 + 40 * 40 + 20 * 20


# --- the two segmenters ---------------------------------------------------------------------------------------
def scene_frames(n: int, seed: int, objects: int) -> List[Any]:
    """n frames (with ground truth) of a synthetic stream at 640x480, a few frames apart."""
    scene = VideoScene(seed, FRAME, objects=objects, speed=0.02)
    out = []
    for i in range(n * 3):
        f = scene.next()
        if i % 3 == 0:
            out.append(f)
    return out


def semantic_case(n: int, folder: Path) -> Tuple[Any, List[Tuple[Dict[str, np.ndarray], Transform, np.ndarray]]]:
    """The shipped segmenter (an ONNX Runtime model) and (outputs, transform, frame) of n frames."""
    import edgekit
    from edgekit.build.demo import SHIPPED
    from edgekit.build.export import export

    onnx = folder / "segmenter.onnx"
    export(SHIPPED["segmentation"], onnx)
    model = edgekit.open(onnx, device="cpu")
    cases = []
    for f in scene_frames(n, seed=5, objects=8):
        tensor, transform = model.preprocess(f.image)
        cases.append((model.infer(tensor), transform, f.image))
    return model, cases


def instance_card() -> ModelCard:
    return ModelCard(name="oracle-yolov8-seg", task="instance_segmentation", arch="external", classes=list(SHAPES),
                     input_size=(INPUT, INPUT), output_layout="yolov8_seg")


def oracle_outputs(frame: Any, transform: Transform, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """What a YOLOv8-seg that sees the frame's objects gives: a scored box per object (and a jittered duplicate
    that NMS removes), its class, a coefficient selecting a prototype that is the object's mask (signed, at
    160x160), background anchors under the score threshold and random coefficients everywhere else."""
    nc = len(SHAPES)
    head = np.zeros((4 + nc + NM, ANCHORS), np.float32)
    head[:2] = rng.uniform(0, INPUT, (2, ANCHORS))
    head[2:4] = rng.uniform(8, 120, (2, ANCHORS))
    head[4:4 + nc] = rng.uniform(0, 0.2, (nc, ANCHORS))
    head[4 + nc:] = rng.normal(0, 1, (NM, ANCHORS))
    protos = cv2.resize(rng.normal(0, 1, (20, 20, NM)).astype(np.float32), (INPUT // 4, INPUT // 4),
                        interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1).copy()
    boxes = transform.boxes_to_input(frame.boxes)
    anchors = rng.choice(ANCHORS, 2 * NM, replace=False)
    for k, (box, cls) in enumerate(zip(boxes[:NM], frame.classes[:NM])):
        x1, y1, x2, y2 = box
        obj = np.zeros((frame.mask.shape[0], frame.mask.shape[1]), np.float32)
        fx1, fy1, fx2, fy2 = frame.boxes[k].astype(int)
        obj[fy1:fy2, fx1:fx2] = frame.mask[fy1:fy2, fx1:fx2] == cls + 1
        placed = np.zeros((INPUT, INPUT), np.float32)
        px, py = int(round(transform.pad_x)), int(round(transform.pad_y))
        nw, nh = int(round(obj.shape[1] * transform.scale_x)), int(round(obj.shape[0] * transform.scale_y))
        placed[py:py + nh, px:px + nw] = cv2.resize(obj, (nw, nh), interpolation=cv2.INTER_AREA)
        small = cv2.resize(placed, (INPUT // 4, INPUT // 4), interpolation=cv2.INTER_AREA)
        protos[k] = np.where(small > 0, (small - 0.5) * 8, protos[k])
        for j, jitter in enumerate((0.0, 3.0)):
            a = anchors[2 * k + j]
            d = rng.uniform(-jitter, jitter, 4)
            head[:4, a] = [(x1 + x2) / 2 + d[0], (y1 + y2) / 2 + d[1], x2 - x1 + d[2], y2 - y1 + d[3]]
            head[4:4 + nc, a] = 0.02
            head[4 + cls, a] = rng.uniform(0.6, 0.95) - 0.1 * j
            coef = np.zeros(NM, np.float32)
            coef[k] = 1.0
            head[4 + nc:, a] = coef
    return {"output0": head, "output1": protos}


def instance_case(n: int) -> Tuple[Any, List[Tuple[Dict[str, np.ndarray], Transform, np.ndarray]]]:
    """A Model-like decoder of the YOLOv8-seg layout and (outputs, transform, frame) of n frames."""
    card = instance_card()
    rng = np.random.default_rng(0)
    cases = []
    for f in scene_frames(n, seed=7, objects=16):
        _, transform = preprocess(f.image, card)
        cases.append((oracle_outputs(f, transform, rng), transform, f.image))
    return Decoder(card), cases


class Decoder:
    """Model's decode, draw and to_json for a card, without a backend (the outputs are given)."""

    def __init__(self, card: ModelCard) -> None:
        from edgekit.runtime import registry

        self.card = card
        self.task = registry.task(card.task)
        self.layout = registry.layout(card.output_layout)
        self.params = DecodeParams.of(card)

    def decode(self, outputs: Dict[str, np.ndarray], transform: Transform) -> Any:
        return self.layout.decode(outputs, transform, self.card, self.params)

    def draw(self, frame: np.ndarray, result: Any) -> None:
        self.task.draw(frame, result, self.card)

    def to_json(self, result: Any) -> Dict[str, Any]:
        return self.task.to_json(result, self.card)


# --- what the tasks did with eager, frame-size results ----------------------------------------------------------
def eager_draw(image: np.ndarray, result: Any, card: ModelCard) -> None:
    if card.task == "segmentation":
        drawing.overlay_mask(image, result.classes, card.num_classes)
        return
    colours = drawing.palette(card.num_classes).astype(np.float32)
    for m, c in zip(result.masks, result.classes):
        image[m] = (image[m] * 0.5 + colours[c] * 0.5).astype(np.uint8)
    drawing.draw_boxes(image, result.boxes, result.scores, result.classes, card.classes)


def eager_to_json(result: Any, card: ModelCard) -> Dict[str, Any]:
    if card.task == "segmentation":
        share = np.bincount(result.classes.ravel(), minlength=card.num_classes) / result.classes.size
        return {"pixel_share": {n: round(float(s), 4) for n, s in zip(card.classes, share)}}
    return {"detections": [
        {"class": card.classes[int(c)], "class_id": int(c), "score": round(float(s), 4),
         "box": [round(float(v), 1) for v in b], "mask": datasets.rle_encode(m)}
        for b, s, c, m in zip(result.boxes, result.scores, result.classes, result.masks)
    ]}


def materialize(result: Any) -> Any:
    """The frame-size arrays an eager decode made."""
    return result.classes if hasattr(result, "pixel_share") else result.masks


# --- timing ---------------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> Tuple[float, Any]:
    t0 = time.perf_counter_ns()
    out = fn()
    return (time.perf_counter_ns() - t0) / 1e6, out


def measure(model: Any, cases: List[Tuple[Dict[str, np.ndarray], Transform, np.ndarray]],
            reps: int) -> Dict[str, Dict[str, List[float]]]:
    """Per variant, per step: the times of `reps` frames, the variants interleaved frame by frame."""
    times: Dict[str, Dict[str, List[float]]] = {v: {"decode": [], "to_json": [], "draw": []}
                                                for v in ("eager", "lazy")}
    for r in range(reps + 10):
        outputs, transform, frame = cases[r % len(cases)]
        for variant in (("eager", "lazy") if r % 2 else ("lazy", "eager")):
            t_dec, t_json, t_draw = one_frame(variant, model, outputs, transform, frame.copy())
            if r >= 10:  # warm-up
                for step, t in (("decode", t_dec), ("to_json", t_json), ("draw", t_draw)):
                    times[variant][step].append(t)
    return times


def one_frame(variant: str, model: Any, outputs: Dict[str, np.ndarray], transform: Transform,
              canvas: np.ndarray) -> Tuple[float, float, float]:
    """ms of decode, to_json and draw of one frame, eager (before) or lazy (now)."""
    if variant == "eager":
        t_dec, result = timed(lambda: _eager_decode(model, outputs, transform))
        t_json, _ = timed(lambda: eager_to_json(result, model.card))
        t_draw, _ = timed(lambda: eager_draw(canvas, result, model.card))
    else:
        t_dec, result = timed(lambda: model.decode(outputs, transform))
        t_json, _ = timed(lambda: model.to_json(result))
        t_draw, _ = timed(lambda: model.draw(canvas, result))
    return t_dec, t_json, t_draw


def _eager_decode(model: Any, outputs: Dict[str, np.ndarray], transform: Transform) -> Any:
    result = model.decode(outputs, transform)
    materialize(result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=300, help="frames timed per variant (default 300)")
    ap.add_argument("--frames", type=int, default=12, help="distinct frames cycled through (default 12)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = [("semantic: shipped edgenet-seg-s, 256x192 logits", *semantic_case(args.frames, Path(tmp))),
                  ("instance: YOLOv8-seg layout, 640x640, 32x160x160 prototypes", *instance_case(args.frames))]
        print(f"640x480 frames; medians of {args.reps} frames per variant, eager and lazy interleaved; "
              f"OpenCV {cv2.__version__}, NumPy {np.__version__}\n")
        print("| model | instances/frame | step | eager (before) ms | lazy (after) ms | speed-up |")
        print("|---|---:|---|---:|---:|---:|")
        for name, model, cases in models:
            counts = [len(model.decode(o, t)) for o, t, _ in cases] if "instance" in name else None
            shown = f"{min(counts)}-{max(counts)}" if counts else "-"
            times = measure(model, cases, args.reps)
            med = {v: {s: float(np.median(t)) for s, t in steps.items()} for v, steps in times.items()}
            for v in med:
                med[v]["decode + to_json"] = float(np.median(np.add(times[v]["decode"], times[v]["to_json"])))
                med[v]["decode + to_json + draw"] = float(np.median(
                    np.add(np.add(times[v]["decode"], times[v]["to_json"]), times[v]["draw"])))
            for step in ("decode", "to_json", "draw", "decode + to_json", "decode + to_json + draw"):
                e, lz = med["eager"][step], med["lazy"][step]
                print(f"| {name} | {shown} | {step} | {e:.3f} | {lz:.3f} | {e / max(lz, 1e-9):.1f}x |")


if __name__ == "__main__":
    main()
