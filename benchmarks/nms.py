"""NMS on 8400 YOLOv8-style candidates (640x640 input): edgekit's NMS (class offsets + cv2.dnn.NMSBoxes,
which JetPack 5's OpenCV 4.5.4 has) against what it replaced, cv2.dnn.NMSBoxesBatched (OpenCV 4.7+),
interleaved, medians; the first one's time includes the score filter in both.

    python benchmarks/nms.py [--reps 200]
"""

import argparse
import time

import cv2
import numpy as np

from edgekit.runtime.tasks.detection import nms


def candidates(seed: int, n: int = 8400, classes: int = 80):
    """Clusters of boxes around a few dozen objects, as a detector's head gives them."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(40, 600, (40, 2))
    sizes = rng.uniform(20, 200, (40, 2))
    which = rng.integers(0, 40, n)
    cxy = centres[which] + rng.normal(0, 6, (n, 2))
    wh = sizes[which] * rng.uniform(0.8, 1.2, (n, 2))
    boxes = np.concatenate([cxy - wh / 2, cxy + wh / 2], 1).astype(np.float32)
    scores = (rng.beta(0.5, 4, n)).astype(np.float32)
    cls = np.where(rng.uniform(size=n) < 0.9, which % classes, rng.integers(0, classes, n))
    return boxes, scores, cls


def opencv(boxes, scores, classes, score_threshold, iou, max_det):
    keep = scores > score_threshold
    b, s, c = boxes[keep], scores[keep], classes[keep]
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
    idx = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), s.tolist(), c.tolist(), score_threshold, iou),
                     np.int64).reshape(-1)
    return idx[np.argsort(-s[idx], kind="stable")][:max_det]


def ours(boxes, scores, classes, score_threshold, iou, max_det):
    keep = scores > score_threshold
    return nms(boxes[keep], scores[keep], classes[keep], iou, max_det)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    print(f"NMS over 8400 candidates, 80 classes, IoU 0.5, max 100 detections; {args.reps} interleaved reps, "
          f"OpenCV {cv2.__version__}")
    print("| score threshold | candidates | NMSBoxesBatched (before) ms | edgekit nms ms | speed-up | same boxes |")
    print("|---:|---:|---:|---:|---:|---|")
    for thr in (0.25, 0.001):  # streaming / COCO mAP evaluation
        times = {"opencv": [], "ours": []}
        same = True
        for r in range(args.reps):
            data = candidates(r)
            for name, fn in (("opencv", opencv), ("ours", ours)):
                t0 = time.perf_counter_ns()
                idx = fn(*data, thr, 0.5, 100)
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
                if name == "opencv":
                    ref = idx
            same = same and ref.tolist() == idx.tolist()
        n = int((candidates(0)[1] > thr).sum())
        a, b = np.median(times["opencv"]), np.median(times["ours"])
        print(f"| {thr:g} | {n} | {a:.3f} | {b:.3f} | {a / b:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
