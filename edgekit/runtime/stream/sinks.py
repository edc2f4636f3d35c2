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
from edgekit.runtime import draw
from edgekit.runtime.api import Model


def result_json(frame: Any, model: Model) -> Dict[str, Any]:
    return {"frame": frame.index, "t_capture_ns": frame.t_capture, **model.to_json(frame.result)}


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


def annotate(frame: Any, model: Model, status: str) -> np.ndarray:
    img = frame.image.copy()
    model.draw(img, frame.result)
    draw.draw_status(img, status)
    return img


class VideoSink:
    def __init__(self, path: Path, model: Model, fps: float) -> None:
        self.path, self.model, self.fps = path, model, fps or 30.0
        self.writer: Optional[Any] = None
        self.rate = _Rate()

    def write(self, frame: Any) -> None:
        img = annotate(frame, self.model, self.rate.update(frame, time.monotonic_ns()))
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
    def __init__(self, path: Path, model: Model) -> None:
        self.model = model
        self.path = path
        self.f = open(path, "w", encoding="utf-8")  # noqa: SIM115  (open for the whole stream; close() ends it)

    def write(self, frame: Any) -> None:
        self.f.write(json.dumps(result_json(frame, self.model)) + "\n")

    def close(self) -> None:
        self.f.close()


class WindowSink:
    def __init__(self, model: Model, title: str = "edgekit") -> None:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise EdgekitError("--show needs a display (DISPLAY is not set)")
        self.model, self.title, self.rate = model, title, _Rate()

    def write(self, frame: Any) -> None:
        cv2.imshow(self.title, annotate(frame, self.model, self.rate.update(frame, time.monotonic_ns())))
        cv2.waitKey(1)

    def close(self) -> None:
        cv2.destroyAllWindows()


def _check_disk(path: Path) -> None:
    """VideoWriter does not report a full disk: check the free space ourselves."""
    st = os.statvfs(path.parent)
    if st.f_bavail * st.f_frsize < 1 << 20:
        raise EdgekitError(f"{path.parent}: disk full while writing {path.name}")
