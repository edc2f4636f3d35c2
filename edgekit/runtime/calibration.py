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
    root: Optional[Path] = None  # the folder given (its sub-folders are the frames' sources)

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


def _read_colour(path: Path, data: bytes, grey: Optional[List[Path]] = None) -> np.ndarray:
    """The image as BGR uint8; a grey image (a monochrome camera's frames) becomes the same grey in B, G and R,
    and is listed in `grey` where given."""
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise EdgekitError(f"{path}: unreadable calibration image (corrupt or not an image)")
    if img.dtype != np.uint8:
        raise EdgekitError(f"{path}: {img.dtype} image; calibration needs 8-bit images")
    if img.ndim == 2 or img.shape[2] == 1:
        if grey is not None:
            grey.append(path)
        return cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
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


def load(source: "str | Path", size: int, span: Tuple[float, float] = (0.0, 1.0), role: str = "calibration",
         warn_short: bool = True, by_folder: bool = False) -> CalibrationSet:
    """Up to `size` frames from an image folder or a video, described (not decoded into memory); every frame is
    decoded once here to refuse bad images before any work starts. Warns when fewer exist.

    `span` takes a part of the source, as fractions of its sorted files (of each sub-folder's, `by_folder`) or of
    its frames (held_out_split): the frames are spread over that part only. The hash is what it has always been
    for the same inputs: sha256 over each image's file name and bytes in order (a folder), or over the video's
    bytes and the frame indices asked for (a video)."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        verb = "calibrate on" if role == "calibration" else "use"
        raise EdgekitError(f"{role} size {size!r}: {verb} 1 image or more")
    src = Path(source)
    h = hashlib.sha256()
    if src.is_dir():
        files = (_span_each if by_folder else _span)(source_images(src, role), span)
        if len(files) > size:  # spread the choice over the whole (sorted) set
            files = [files[i] for i in video_frame_indices(len(files), size)]
        digests: List[bytes] = []
        grey: List[Path] = []
        for f in files:
            data = _read_bytes(f)
            _read_colour(f, data, grey)  # refused here, not halfway through calibration
            h.update(f.name.encode())
            h.update(data)
            digests.append(hashlib.sha256(data).digest())
        calib = CalibrationSet(h.hexdigest(), f"{len(files)} images from {src}", files=tuple(files),
                               digests=tuple(digests), root=src)
        if grey:
            print(f"edgekit: note: {len(grey)} of the {len(files)} {role} images of {src} are grayscale (e.g. "
                  f"{grey[0].name}); each is used as colour with the same grey in every channel", file=sys.stderr)
    elif src.is_file() and src.suffix.lower() in VIDEO_EXTS:
        stamp = _stamp(src)
        part = _span(list(range(video_frame_count(src))), span)
        indices = [part[i] for i in video_frame_indices(len(part), size)]
        decoded = tuple(i for i, _ in iter_video_frames(src, indices))
        if not decoded:
            raise EdgekitError(f"{src}: no frames could be decoded for {role}")
        with open(src, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(repr(indices).encode())
        calib = CalibrationSet(h.hexdigest(), f"{len(decoded)} frames sampled from {src}", video=src,
                               indices=decoded, video_stamp=stamp)
    elif not src.exists():
        raise EdgekitError(f"{src}: {role} source not found")
    else:
        raise EdgekitError(f"{src}: {role} source must be an image folder or a video ({', '.join(VIDEO_EXTS)})")
    if warn_short and len(calib) < size:
        print(f"edgekit: warning: {src} has {len(calib)} {role} images, fewer than the {size} asked; "
              f"using {len(calib)}", file=sys.stderr)
    return calib


def source_images(src: Path, role: str = "calibration") -> List[Path]:
    """The images of a folder (and its subfolders), sorted by path; refused when there are none."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise EdgekitError(f"{src}: {role} folder holds no images ({', '.join(IMAGE_EXTS)})")
    return files


def source_length(source: "str | Path") -> int:
    """How many images (a folder) or frames (a video) a calibration source holds."""
    src = Path(source)
    if src.is_dir():
        return len(source_images(src))
    if src.is_file() and src.suffix.lower() in VIDEO_EXTS:
        return video_frame_count(src)
    if not src.exists():
        raise EdgekitError(f"{src}: calibration source not found")
    raise EdgekitError(f"{src}: calibration source must be an image folder or a video ({', '.join(VIDEO_EXTS)})")


def _span(items: List[T], span: Tuple[float, float]) -> List[T]:
    n = len(items)
    return items[int(round(span[0] * n)):int(round(span[1] * n))]


def _span_each(files: List[Path], span: Tuple[float, float]) -> List[Path]:
    """The span of each sub-folder's files (sorted files of one folder are consecutive): with one folder per
    camera or scene, every source is both calibrated on and held out."""
    groups: List[List[Path]] = []
    for f in files:
        if groups and groups[-1][0].parent == f.parent:
            groups[-1].append(f)
        else:
            groups.append([f])
    return [f for g in groups for f in _span(g, span)]


# What build-engine holds out of a calibration source to measure INT8 agreement on frames never calibrated on:
# the END of the source (the last files by name of each sub-folder, the last part of a video), not every k-th
# frame, whose neighbours (a video's next frame, calib-set's next pick) would leak into calibration and flatter
# the figure.
HOLD_OUT_SHARE = 0.2


def held_out_split(source: "str | Path", size: int, held_out_size: int) -> Tuple[CalibrationSet, CalibrationSet]:
    """(calibration set, held-out set) from one source: up to `size` frames spread over its first part, up to
    `held_out_size` spread over its last HOLD_OUT_SHARE (at least one frame); refused below two frames."""
    n = source_length(source)
    if n < 2:
        raise EdgekitError(f"{source}: {n} image{'s' if n != 1 else ''}: INT8 holds part of the calibration source "
                           "out to measure its agreement with FP32 on frames it was not calibrated on; give 2 or "
                           "more images, or pass --val IMAGES_OR_VIDEO")
    cut = 1.0 - max(HOLD_OUT_SHARE, 1.0 / n)
    cut = min(cut, (n - 1) / n)  # at least one frame to calibrate on
    # Each sub-folder (a camera, a scene) split on its own where every part keeps frames; else the folder whole.
    by_folder = Path(source).is_dir() and all(_span_each(source_images(Path(source)), part)
                                              for part in ((0.0, cut), (cut, 1.0)))
    calib = load(source, size, (0.0, cut), warn_short=False, by_folder=by_folder)
    held = load(source, held_out_size, (cut, 1.0), role="held-out", warn_short=False, by_folder=by_folder)
    if size > n:  # the source is short of what was asked (holding some out is edgekit's doing: not warned)
        noun = "frames" if calib.video is not None else "images"
        print(f"edgekit: warning: {source} has {n} {noun}; {len(held)} {'is' if len(held) == 1 else 'are'} held out "
              f"to measure INT8 agreement, leaving {len(calib)} to calibrate on, fewer than the {size} asked",
              file=sys.stderr)
    return calib, held


BGR_LUMA = (0.114, 0.587, 0.299)  # ITU-R BT.601 weights of B, G, R, as OpenCV's BGR2GRAY


@dataclass
class VideoScan:
    """One pass over a video, per frame: how much it differs from the frame before (mean absolute difference of
    small grey frames) and its mean luminance (0..255)."""

    changes: List[float]
    luminance: List[float]

    def __len__(self) -> int:
        return len(self.changes)


def frame_luminance(frame: np.ndarray) -> float:
    """Mean luminance (0..255) of a BGR (or grey) uint8 frame: the BT.601 weights of its channel means."""
    if frame.ndim == 2 or frame.shape[2] == 1:
        return float(frame.mean())
    b, g, r = cv2.mean(frame)[:3]
    return BGR_LUMA[0] * b + BGR_LUMA[1] * g + BGR_LUMA[2] * r


def scan_video(path: Path, analysis_width: int = 64) -> VideoScan:
    """Decode every frame of the video once, one frame held at a time; refused where none decodes."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise EdgekitError(f"{path}: cannot open video (missing codec, corrupt or not a video)")
    changes: List[float] = []
    luminance: List[float] = []
    prev = None
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            luminance.append(frame_luminance(frame))
            small = cv2.resize(frame, (analysis_width, max(1, frame.shape[0] * analysis_width // frame.shape[1])))
            if small.ndim == 3:
                small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
            small = small.astype(np.float32)
            changes.append(0.0 if prev is None else float(np.abs(small - prev).mean()))
            prev = small
    finally:
        cap.release()
    if not changes:
        raise EdgekitError(f"{path}: no frames could be decoded")
    return VideoScan(changes, luminance)


def pick_frames(scan: VideoScan, n: int) -> List[int]:
    """`edgekit calib-set`: the indices of n frames (fewer in a shorter video) spread over time and over scene
    changes: half evenly spaced in time, the rest the frames that differ most from the frame before (scene
    changes, new objects), so rare scenes get into the set too."""
    count = len(scan)
    n = min(n, count)
    picks = set(video_frame_indices(count, (n + 1) // 2))
    for i in np.argsort(-np.asarray(scan.changes), kind="stable"):
        if len(picks) >= n:
            break
        picks.add(int(i))
    for i in range(count):  # top up when the video is short
        if len(picks) >= n:
            break
        picks.add(i)
    return sorted(picks)


def pick_video_frames(path: Path, n: int, analysis_width: int = 64) -> List[int]:
    """pick_frames over a scan of the video (one small grey frame held at a time); decode the picks with
    iter_video_frames."""
    return pick_frames(scan_video(path, analysis_width), n)


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
