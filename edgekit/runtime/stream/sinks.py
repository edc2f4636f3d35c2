"""Sinks, several at once: annotated video file, JSON Lines of per-frame results, a window, none."""

import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, Optional

import cv2
import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard
from edgekit.runtime.stream import draw


def result_json(frame: Any, card: ModelCard) -> Dict[str, Any]:
    r = frame.result
    row: Dict[str, Any] = {"frame": frame.index, "t_capture_ns": frame.t_capture}
    if card.task == "detection":
        row["detections"] = [
            {"class": card.classes[int(c)], "class_id": int(c), "score": round(float(s), 4),
             "box": [round(float(v), 1) for v in b]}
            for b, s, c in zip(r.boxes, r.scores, r.classes)
        ]
    else:
        row["pixel_share"] = r["pixel_share"]
    return row


class _Rate:
    """FPS and latency over the last frames, for the overlay."""

    def __init__(self) -> None:
        self.times: Deque[int] = deque(maxlen=30)
        self.lat: Deque[float] = deque(maxlen=30)

    def update(self, frame: Any, now: int) -> str:
        self.times.append(now)
        self.lat.append((now - frame.t_capture) / 1e6)
        fps = (len(self.times) - 1) / ((self.times[-1] - self.times[0]) / 1e9) if len(self.times) > 1 else 0.0
        return f"{fps:5.1f} FPS  latency {np.mean(self.lat):6.1f} ms  frame {frame.index}"


def annotate(frame: Any, card: ModelCard, status: str) -> np.ndarray:
    img = frame.image.copy()
    if card.task == "detection":
        draw.draw_detections(img, frame.result, card.classes)
    else:
        draw.overlay_mask(img, frame.result["classes"], card.num_classes)
    draw.draw_status(img, status)
    return img


class VideoSink:
    def __init__(self, path: Path, card: ModelCard, fps: float) -> None:
        self.path, self.card, self.fps = path, card, fps or 30.0
        self.writer: Optional[Any] = None
        self.rate = _Rate()

    def write(self, frame: Any) -> None:
        img = annotate(frame, self.card, self.rate.update(frame, time.monotonic_ns()))
        if self.writer is None:
            h, w = img.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise EdgekitError(f"{self.path}: cannot write video here")
        self.writer.write(img)
        _check_disk(self.path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class JsonlSink:
    def __init__(self, path: Path, card: ModelCard) -> None:
        self.card = card
        self.path = path
        self.f = open(path, "w", encoding="utf-8")  # noqa: SIM115  (open for the whole stream; close() ends it)

    def write(self, frame: Any) -> None:
        self.f.write(json.dumps(result_json(frame, self.card)) + "\n")

    def close(self) -> None:
        self.f.close()


class WindowSink:
    def __init__(self, card: ModelCard, title: str = "edgekit") -> None:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise EdgekitError("--show needs a display (DISPLAY is not set)")
        self.card, self.title, self.rate = card, title, _Rate()

    def write(self, frame: Any) -> None:
        cv2.imshow(self.title, annotate(frame, self.card, self.rate.update(frame, time.monotonic_ns())))
        cv2.waitKey(1)

    def close(self) -> None:
        cv2.destroyAllWindows()


def _check_disk(path: Path) -> None:
    """VideoWriter does not report a full disk: check the free space ourselves."""
    st = os.statvfs(path.parent)
    if st.f_bavail * st.f_frsize < 1 << 20:
        raise EdgekitError(f"{path.parent}: disk full while writing {path.name}")
