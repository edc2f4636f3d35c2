"""Calibration images for INT8: from a folder or frames sampled from a video, validated, hashed.

Runtime side (NumPy + OpenCV). The frames go through the same preprocessing function as inference.

A calibration cache (TensorRT's implicit calibration, for DLA) is only as good as what it was computed from:
it is keyed to the ONNX calibrated, the calibration tensors, the method and the TensorRT version, and a cache
written for anything else is ignored and rewritten.
"""

import contextlib
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.data.datasets import IMAGE_EXTS

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".ts")


@dataclass
class CalibrationSet:
    frames: List[np.ndarray]  # BGR uint8
    sha256: str
    source: str

    def __len__(self) -> int:
        return len(self.frames)


def _read_colour(path: Path, data: bytes) -> np.ndarray:
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise EdgekitError(f"{path}: unreadable calibration image (corrupt or not an image)")
    if img.ndim == 2 or img.shape[2] == 1:
        raise EdgekitError(f"{path}: grayscale image, but the model takes colour input; convert the set to colour")
    if img.dtype != np.uint8:
        raise EdgekitError(f"{path}: {img.dtype} image; calibration needs 8-bit images")
    return img[..., :3] if img.shape[2] == 4 else img


def video_frame_indices(count: int, n: int) -> List[int]:
    """n frame indices spread evenly over a video of `count` frames."""
    if count <= 0:
        return []
    n = min(n, count)
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, n)})


def read_video_frames(path: Path, indices: List[int]) -> List[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EdgekitError(f"{path}: cannot open video (missing codec, corrupt or not a video)")
    wanted, frames, i = set(indices), [], 0
    try:
        while len(frames) < len(wanted):
            ok = cap.grab()
            if not ok:
                break
            if i in wanted:
                ok, frame = cap.retrieve()
                if ok:
                    frames.append(frame)
            i += 1
    finally:
        cap.release()
    return frames


def video_frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EdgekitError(f"{path}: cannot open video (missing codec, corrupt or not a video)")
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if n <= 0:  # some containers don't say: count by decoding
        n = 0
        while cap.grab():
            n += 1
    cap.release()
    return n


def load(source: "str | Path", size: int) -> CalibrationSet:
    """Up to `size` calibration frames from an image folder or a video; warns when fewer exist."""
    src = Path(source)
    h = hashlib.sha256()
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise EdgekitError(f"{src}: calibration folder holds no images ({', '.join(IMAGE_EXTS)})")
        if len(files) > size:  # spread the choice over the whole (sorted) set
            files = [files[i] for i in video_frame_indices(len(files), size)]
        frames = []
        for f in files:
            data = f.read_bytes()
            frames.append(_read_colour(f, data))
            h.update(f.name.encode())
            h.update(data)
        desc = f"{len(frames)} images from {src}"
    elif src.is_file() and src.suffix.lower() in VIDEO_EXTS:
        indices = video_frame_indices(video_frame_count(src), size)
        frames = read_video_frames(src, indices)
        if not frames:
            raise EdgekitError(f"{src}: no frames could be decoded for calibration")
        h.update(src.read_bytes())
        h.update(repr(indices).encode())
        desc = f"{len(frames)} frames sampled from {src}"
    elif not src.exists():
        raise EdgekitError(f"{src}: calibration source not found")
    else:
        raise EdgekitError(f"{src}: calibration source must be an image folder or a video ({', '.join(VIDEO_EXTS)})")
    if len(frames) < size:
        print(f"edgekit: warning: {src} has {len(frames)} calibration images, fewer than the {size} asked; "
              f"using {len(frames)}", file=sys.stderr)
    return CalibrationSet(frames, h.hexdigest(), desc)


def select_from_video(path: Path, n: int, analysis_width: int = 64) -> Tuple[List[int], List[np.ndarray]]:
    """`edgekit calib-set`: n frames spread over time and over scene changes.

    Half the picks are evenly spaced in time; the other half are the frames that differ most from the
    frame before (scene changes, new objects), so rare scenes get into the set too.
    """
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EdgekitError(f"{path}: cannot open video (missing codec, corrupt or not a video)")
    diffs, prev = [], None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        small = cv2.resize(frame, (analysis_width, max(1, frame.shape[0] * analysis_width // frame.shape[1])))
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
        diffs.append(0.0 if prev is None else float(np.abs(small - prev).mean()))
        prev = small
    cap.release()
    count = len(diffs)
    if count == 0:
        raise EdgekitError(f"{path}: no frames could be decoded")
    n = min(n, count)
    picks = set(video_frame_indices(count, (n + 1) // 2))
    for i in np.argsort(-np.asarray(diffs), kind="stable"):
        if len(picks) >= n:
            break
        picks.add(int(i))
    for i in range(count):  # top up when the video is short
        if len(picks) >= n:
            break
        picks.add(i)
    indices = sorted(picks)
    return indices, read_video_frames(path, indices)


CACHE_KEY_SUFFIX = ".key"  # beside the cache: the key it was written for


def cache_key(onnx: Path, tensors: Sequence[np.ndarray], method: str, backend_version: str) -> str:
    """What a calibration cache depends on, as a hex sha256: the bytes of the ONNX calibrated, the calibration
    tensors (as the calibrator sends them: float32, with their shapes), the method and the TensorRT version."""
    h = hashlib.sha256(b"edgekit.calibration-cache/1\0")
    with open(onnx, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(f"\0{method}\0{backend_version}\0{len(tensors)}\0".encode())
    for t in tensors:
        a = np.ascontiguousarray(t, dtype=np.float32)
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def key_path(cache: Path) -> Path:
    return cache.with_name(cache.name + CACHE_KEY_SUFFIX)


def read_cache(cache: Path, key: str) -> Optional[bytes]:
    """The cache's bytes where it was written for `key`; None where it is missing or stale."""
    try:
        if key_path(cache).read_text().strip() != key:
            return None
        return cache.read_bytes()
    except OSError:
        return None


def write_cache(cache: Path, key: str, data: bytes) -> None:
    """Write the cache and then its key, each atomically; the old key goes first, so a cache whose key file
    says otherwise is never read (an interrupted write leaves a cache without a key: ignored)."""
    from edgekit.runtime.artifacts import write_bytes

    with contextlib.suppress(FileNotFoundError):
        key_path(cache).unlink()
    write_bytes(cache, bytes(data))
    write_bytes(key_path(cache), key.encode() + b"\n")
