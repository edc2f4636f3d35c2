"""Calibration images for INT8: from a folder or frames sampled from a video, validated, hashed.

Runtime side (NumPy + OpenCV). The frames go through the same preprocessing function as inference.

A CalibrationSet describes the frames (the files, or the video and its frame indices) and their hash; it holds
no pixels. Each pass over it decodes one frame at a time, so memory does not grow with the number of images
(issue 15: 3000 images held at once took 2.2 GB), and it can be iterated as often as a calibrator rewinds.

A calibration cache (TensorRT's implicit calibration, for DLA) is only as good as what it was computed from:
it is keyed to the ONNX calibrated, the calibration tensors, the method and the TensorRT version, and a cache
written for anything else is ignored and rewritten.
"""

import contextlib
import hashlib
import itertools
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union, overload

import cv2
import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data.datasets import IMAGE_EXTS

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".ts")


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration frames, described: image files (each with the sha256 of its bytes at load time), or a
    video and the indices of its frames that decoded. Iterating decodes them one at a time, BGR uint8; a file
    that changed since `load` is refused, so the frames used are the frames hashed."""

    sha256: str
    source: str  # "N images from PATH" or "N frames sampled from PATH" (manifest.rebuild_command reads it)
    files: Tuple[Path, ...] = ()
    digests: Tuple[bytes, ...] = ()
    video: Optional[Path] = None
    indices: Tuple[int, ...] = ()
    video_stamp: Tuple[int, int] = (0, 0)  # (size, mtime_ns) of the video at load time

    def __len__(self) -> int:
        return len(self.indices) if self.video is not None else len(self.files)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.video is not None:
            if _stamp(self.video) != self.video_stamp:
                raise EdgekitError(f"{self.video}: calibration video changed while the engine was being built; "
                                   "build again")
            for _, frame in iter_video_frames(self.video, self.indices, strict=True):
                yield frame
            return
        for f, digest in zip(self.files, self.digests):
            data = _read_bytes(f)
            if hashlib.sha256(data).digest() != digest:
                raise EdgekitError(f"{f}: calibration image changed while the engine was being built; build again")
            yield _read_colour(f, data)

    @property
    def frames(self) -> "CalibrationSet":
        """The frames, decoded as they are iterated (the set itself; kept for callers of the older API)."""
        return self


class Preprocessed(Sequence[np.ndarray]):
    """Frames through the card's preprocessing, one tensor at a time, every time it is iterated: what the
    calibrators and the agreement measurement read. Indexing works but decodes up to the frame asked for;
    iterate instead."""

    def __init__(self, frames: Union[CalibrationSet, Sequence[np.ndarray]], card: ModelCard) -> None:
        self.frames, self.card = frames, card

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[np.ndarray]:
        from edgekit.runtime.preprocess import preprocess

        for frame in self.frames:
            yield preprocess(frame, self.card)[0]

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> List[np.ndarray]: ...

    def __getitem__(self, i: Union[int, slice]) -> Union[np.ndarray, List[np.ndarray]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return next(itertools.islice(iter(self), i % n, None))


T = TypeVar("T")

# Frames are decoded BURST at a time, then run BURST at a time. One frame decoded between two runs made the
# build 1.7x slower on 2 cores (800 images: 22.5 s against 13.3 s holding them all): an ONNX Runtime session's
# idle threads spin for a while after each run and took the cores from the decoding and from the next session.
# 16 preprocessed tensors at a time is a few MB for the usual input sizes (3x640x640 float32: 4.9 MB each).
BURST = 16


def bursts(items: Iterable[T], size: int = BURST) -> Iterator[List[T]]:
    """`items` in lists of `size` (the last one shorter), each read before it is given out."""
    it = iter(items)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise EdgekitError(f"{path}: cannot read calibration image ({e.strerror or e})") from None


def _stamp(path: Path) -> Tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


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


def iter_video_frames(path: Path, indices: Iterable[int], strict: bool = False) -> Iterator[Tuple[int, np.ndarray]]:
    """(index, BGR frame) of the wanted frames, decoded in one pass over the video, one frame held at a time.
    Frames that do not decode are skipped, or with `strict` refused (they decoded when the set was made)."""
    wanted = sorted(set(indices))
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EdgekitError(f"{path}: cannot open video (missing codec, corrupt or not a video)")
    try:
        i, k = 0, 0
        while k < len(wanted):
            if not cap.grab():
                break
            if i == wanted[k]:
                ok, frame = cap.retrieve()
                if ok:
                    yield i, frame
                elif strict:
                    break
                k += 1
            i += 1
        if strict and k < len(wanted):
            raise EdgekitError(f"{path}: frame {wanted[k]} no longer decodes (the video changed while the engine "
                               "was being built); build again")
    finally:
        cap.release()


def read_video_frames(path: Path, indices: List[int]) -> List[np.ndarray]:
    """The wanted frames that decode, all in memory: for a few frames only (iter_video_frames streams)."""
    return [frame for _, frame in iter_video_frames(path, indices)]


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
    """Up to `size` calibration frames from an image folder or a video, described (not decoded into memory);
    every frame is decoded once here to refuse bad images before any work starts. Warns when fewer exist.

    The hash is what it has always been for the same inputs: sha256 over each image's file name and bytes in
    order (a folder), or over the video's bytes and the frame indices asked for (a video)."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise EdgekitError(f"calibration size {size!r}: calibrate on 1 image or more")
    src = Path(source)
    h = hashlib.sha256()
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise EdgekitError(f"{src}: calibration folder holds no images ({', '.join(IMAGE_EXTS)})")
        if len(files) > size:  # spread the choice over the whole (sorted) set
            files = [files[i] for i in video_frame_indices(len(files), size)]
        digests = []
        for f in files:
            data = _read_bytes(f)
            _read_colour(f, data)  # refused here, not halfway through calibration
            h.update(f.name.encode())
            h.update(data)
            digests.append(hashlib.sha256(data).digest())
        calib = CalibrationSet(h.hexdigest(), f"{len(files)} images from {src}", files=tuple(files),
                               digests=tuple(digests))
    elif src.is_file() and src.suffix.lower() in VIDEO_EXTS:
        stamp = _stamp(src)
        indices = video_frame_indices(video_frame_count(src), size)
        decoded = tuple(i for i, _ in iter_video_frames(src, indices))
        if not decoded:
            raise EdgekitError(f"{src}: no frames could be decoded for calibration")
        with open(src, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(repr(indices).encode())
        calib = CalibrationSet(h.hexdigest(), f"{len(decoded)} frames sampled from {src}", video=src,
                               indices=decoded, video_stamp=stamp)
    elif not src.exists():
        raise EdgekitError(f"{src}: calibration source not found")
    else:
        raise EdgekitError(f"{src}: calibration source must be an image folder or a video ({', '.join(VIDEO_EXTS)})")
    if len(calib) < size:
        print(f"edgekit: warning: {src} has {len(calib)} calibration images, fewer than the {size} asked; "
              f"using {len(calib)}", file=sys.stderr)
    return calib


def pick_video_frames(path: Path, n: int, analysis_width: int = 64) -> List[int]:
    """`edgekit calib-set`: the indices of n frames spread over time and over scene changes.

    Half the picks are evenly spaced in time; the other half are the frames that differ most from the
    frame before (scene changes, new objects), so rare scenes get into the set too. One small grey frame is
    held at a time; decode the picks with iter_video_frames.
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
    return sorted(picks)


def select_from_video(path: Path, n: int, analysis_width: int = 64) -> Tuple[List[int], List[np.ndarray]]:
    """pick_video_frames and the picked frames, all in memory (for a few frames; calib-set streams)."""
    indices = pick_video_frames(path, n, analysis_width)
    return indices, read_video_frames(path, indices)


CACHE_KEY_SUFFIX = ".key"  # beside the cache: the key it was written for


def cache_key(onnx: Path, tensors: Sequence[np.ndarray], method: str, backend_version: str) -> str:
    """What a calibration cache depends on, as a hex sha256: the bytes of the ONNX calibrated, the calibration
    tensors (as the calibrator sends them: float32, with their shapes), the method and the TensorRT version.
    The tensors are read one at a time (a Preprocessed set is decoded as it is hashed)."""
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
