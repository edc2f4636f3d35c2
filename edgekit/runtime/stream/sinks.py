"""Sinks, several at once: annotated video file, JSON Lines of per-frame results, a window, none."""

import contextlib
import json
import os
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict, Optional, Tuple

import cv2
import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime import draw
from edgekit.runtime.api import Model
from edgekit.runtime.artifacts import open_for_writing, publish, refuse_symlink, temp_beside
from edgekit.runtime.preprocess import letterbox
from edgekit.runtime.stream import decoders


def result_json(frame: Any, model: Model) -> Dict[str, Any]:
    row: Dict[str, Any] = {"frame": frame.index}
    source_name = getattr(frame, "source_name", None)  # an image folder's file name
    if source_name is not None:
        row["source"] = source_name
    return {**row, "t_capture_ns": frame.t_capture, **model.to_json(frame.result)}


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
    """The annotated video. The first frame fixes its size; a frame of another size (an image folder of mixed
    sizes) is letterboxed to it and counted, so every frame is written (OpenCV drops such frames silently).

    Each video file is written under a hidden temporary name and renamed into place once complete, so a
    finished file is always playable and a symbolic link planted at its name is replaced, not followed.

    ``max_bytes`` > 0 cuts the video into segments: once the current one reaches ``max_bytes`` it is finished
    and the next frame starts a new one; the oldest finished segments beyond ``keep_segments`` are deleted.
    A run that fits in one segment gives ``annotated.mp4``; once cut, the segments are ``annotated-000001.mp4``,
    ``annotated-000002.mp4``, ... (numbers never reused; the highest is the newest). OpenCV does not say how
    many bytes it has encoded and FFmpeg writes in 256 KiB chunks, so a segment's size is estimated from the
    bytes per frame of the last finished segment: a segment overshoots ``max_bytes`` by about one frame (up
    to three measured: frames larger than the last segment's); the first one, before the writer's first flush
    gives a measure, by up to the flush size. On disk at any time: ``keep_segments`` finished segments and
    the one being written."""

    def __init__(self, path: Path, model: Model, fps: float, max_bytes: int = 0, keep_segments: int = 2,
                 video_fps: Optional[float] = None, live: bool = False, queue_frames: int = 8) -> None:
        if max_bytes < 0 or keep_segments < 1:
            raise EdgekitError(f"video segments: max_bytes {max_bytes} must be >= 0 (0 = unlimited) and "
                               f"keep_segments {keep_segments} >= 1")
        refuse_symlink(path)
        source_fps = fps or 30.0
        self.path, self.model = Path(path), model
        # --video-fps: every (source fps / video fps)-th frame is drawn and encoded, the others cost nothing
        self.fps = min(video_fps, source_fps) if video_fps else source_fps
        self._step, self._next = source_fps / self.fps, 0.0
        self.live = live
        self.max_bytes, self.keep_segments = max_bytes, keep_segments
        # Drawing and encoding run in their own thread behind a bounded queue: a live source's frames are dropped
        # from the video (counted) rather than stall the pipeline; a file's wait for room.
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_frames))
        self._encoder: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None
        self.frames_skipped = self.frames_dropped = 0
        # On a Jetson, the hardware H.264 encoder through OpenCV's GStreamer writer; else OpenCV's mp4v.
        hardware, why = decoders.hardware_pipeline_available(decoders.opencv_video_io(),
                                                              decoders.nvidia_encoder_element)
        self.encoder = "gstreamer+nvv4l2h264enc" if hardware else "mp4v"
        self.encoder_note = "" if hardware else why
        self.writer: Optional[Any] = None
        self.rate = _Rate()
        self.size: Optional[Tuple[int, int]] = None  # (width, height), fixed by the first frame
        self._tmp: Optional[Path] = None
        self._segment_frames = self._flushed = self._frames_flushed = 0  # frames; bytes on disk, after which frame
        self._per_frame = 0.0  # bytes per frame of the last finished segment
        self._kept: Deque[Dict[str, Any]] = deque()  # finished segments on disk, oldest first
        self.frames_written = self.frames_resized = 0
        self.segments_written = self.segments_deleted = self.bytes_written = 0

    def write(self, frame: Any) -> None:
        """Queue the frame for the encoder thread (the frames --video-fps keeps); raises the encoder's error."""
        if self.error is not None:
            raise self.error
        status = self.rate.update(frame, time.monotonic_ns())
        keep = self._next <= 0.0
        if keep:
            self._next += self._step
        self._next -= 1.0
        if not keep:
            self.frames_skipped += 1
            return
        if self._encoder is None:
            self._encoder = threading.Thread(target=self._encode, name="edgekit-video", daemon=True)
            self._encoder.start()
        if self.live:
            try:
                self._queue.put_nowait((frame, status))
            except queue.Full:
                self.frames_dropped += 1
            return
        while self.error is None:
            try:
                self._queue.put((frame, status), timeout=0.1)
                return
            except queue.Full:
                pass
        raise self.error

    def _encode(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is not None:
                    continue  # failed: the rest is let go (the pipeline fails at the next write)
                frame, status = item
                try:
                    self._write_image(annotate(frame, self.model, status))
                except BaseException as e:
                    self.error = e
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Wait until every frame handed over so far is encoded (the files on disk are then what they will be);
        raises the encoder's error."""
        if self._encoder is not None:
            self._queue.join()
        if self.error is not None:
            raise self.error

    def _write_image(self, img: np.ndarray) -> None:
        h, w = img.shape[:2]
        if self.size is None:
            self.size = (w, h)
        elif (w, h) != self.size:
            shrink = img.shape[1] > self.size[0] or img.shape[0] > self.size[1]
            img = letterbox(img, self.size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)[0]
            self.frames_resized += 1
        if self.writer is None:
            self._open_segment()
        assert self.writer is not None and self._tmp is not None
        self.writer.write(img)
        self._segment_frames += 1
        self.frames_written += 1
        _check_disk(self.path)
        if self.max_bytes and self._segment_bytes_estimate() >= self.max_bytes:
            self._finish_segment(last=False)

    def close(self) -> None:
        """Encode what is queued and finish the file; an encoder error stays in `error` for the caller."""
        if self._encoder is not None:
            self._queue.put(None)
            self._encoder.join()
            self._encoder = None
        if self.writer is not None:
            self._finish_segment(last=True)

    def summary(self) -> Dict[str, Any]:
        """What the report says about the video (after close())."""
        return {
            "files": [dict(s) for s in self._kept],  # {"name", "frames", "bytes"}, oldest first
            "fps": self.fps,
            "encoder": self.encoder,
            "encoder_note": self.encoder_note,
            "frames_written": self.frames_written,
            "frames_skipped": self.frames_skipped,  # left out by --video-fps
            "frames_dropped": self.frames_dropped,  # a live source's frames the encoder could not keep up with
            "frames_resized": self.frames_resized,
            "frame_size": list(self.size) if self.size else None,
            "segments_written": self.segments_written,
            "segments_deleted": self.segments_deleted,
            "bytes_written": self.bytes_written,
            "bytes_on_disk": sum(s["bytes"] for s in self._kept),
            "max_bytes": self.max_bytes,
            "keep_segments": self.keep_segments,
        }

    def _open_segment(self) -> None:
        assert self.size is not None
        self._tmp = temp_beside(self.path, keep_suffix=True)  # OpenCV picks the container by the extension
        self.writer = None
        if self.encoder != "mp4v":  # a Jetson's hardware encoder, where OpenCV has GStreamer and it opens
            writer = cv2.VideoWriter(decoders.encoder_pipeline(str(self._tmp)), cv2.CAP_GSTREAMER, 0, self.fps,
                                     self.size, True)
            if writer.isOpened():
                self.writer = writer
            else:
                self.encoder, self.encoder_note = "mp4v", "nvv4l2h264enc did not open (no NVENC?): software mp4v"
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter.fourcc(*"mp4v"), self.fps, self.size)
        if not self.writer.isOpened():
            self.writer = None
            self._tmp.unlink()
            raise EdgekitError(f"{self.path}: cannot write video here")
        self._segment_frames = self._flushed = self._frames_flushed = 0

    def _segment_bytes_estimate(self) -> float:
        """The current segment's size if finished now, by the bytes per frame of the last finished segment (before
        one is finished, of this segment's flushes): its frames times that, or, where more (frames larger than
        that), the bytes the writer has flushed so far plus that for each frame since."""
        assert self._tmp is not None
        on_disk = os.stat(self._tmp).st_size
        if on_disk > self._flushed:
            self._flushed, self._frames_flushed = on_disk, self._segment_frames
        per_frame = self._per_frame or (self._flushed / self._frames_flushed if self._frames_flushed else 0.0)
        return max(self._segment_frames * per_frame,
                   self._flushed + (self._segment_frames - self._frames_flushed) * per_frame)

    def _finish_segment(self, last: bool) -> None:
        assert self.writer is not None and self._tmp is not None
        writer, tmp, self.writer, self._tmp = self.writer, self._tmp, None, None
        writer.release()
        one_file = last and self.segments_written == 0
        name = self.path.name if one_file else f"{self.path.stem}-{self.segments_written + 1:06d}{self.path.suffix}"
        final = publish(tmp, self.path.with_name(name))
        size = final.stat().st_size
        self.segments_written += 1
        self.bytes_written += size
        self._per_frame = size / self._segment_frames
        self._kept.append({"name": name, "frames": self._segment_frames, "bytes": size})
        while len(self._kept) > self.keep_segments:
            with contextlib.suppress(FileNotFoundError):
                self.path.with_name(self._kept.popleft()["name"]).unlink()
            self.segments_deleted += 1


class JsonlSink:
    """Per-frame results, one JSON object a line, written as the frames come (never through a link)."""

    def __init__(self, path: Path, model: Model) -> None:
        self.model = model
        self.path = path
        self.f = open_for_writing(path)

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
