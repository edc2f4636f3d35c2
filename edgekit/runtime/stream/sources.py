"""Video sources addressed by URI-like strings: a file, an image folder, a camera index or /dev/videoN,
csi://N, rtsp://..., synthetic://. Each yields (frame, capture time) and says whether it is live.

Live sources (cameras, RTSP, synthetic in real time) run at their own pace: when the pipeline is
behind, the oldest waiting frame is dropped and counted. File sources are read as fast as the
pipeline takes them, and no frame is ever dropped.

A source that fails raises SourceFailed (exit status 3): a camera or stream that does not open, a live
source lost with its reconnect attempts exhausted, a file that ends before the frames its header
announces (raised after every frame that decodes was delivered). Inputs passed over (undecodable images
of a folder) are warned about once on stderr and listed in `Source.skipped`.
"""

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse, urlsplit, urlunsplit

import cv2
import numpy as np

from edgekit.errors import EdgekitError, SourceFailed
from edgekit.runtime.data.datasets import IMAGE_EXTS
from edgekit.runtime.stream import backoff_s
from edgekit.runtime.stream import decoders as dec


def _silence_video_logs() -> None:
    """OpenCV and its FFmpeg print warnings of their own for every failed open or damaged packet ("[ WARN:0@0.1]
    global cap.cpp ...", "[mjpeg @ 0x...] ..."); edgekit reports those as one line. EDGEKIT_VIDEO_LOG=1 (set by
    `edgekit --debug`) keeps them, as does an OPENCV_LOG_LEVEL / OPENCV_FFMPEG_LOGLEVEL the user set."""
    if os.environ.get("EDGEKIT_VIDEO_LOG"):
        return
    # FFmpeg's av_log level: OpenCV reads this when its FFmpeg backend first opens something, after this import.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    if "OPENCV_LOG_LEVEL" in os.environ:
        return
    # OpenCV's own logger read OPENCV_LOG_LEVEL when cv2 was imported (often before this module): set it by call.
    # OpenCV 4 has cv2.setLogLevel; OpenCV 5 only cv2.utils.logging.setLogLevel.
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None and hasattr(logging, "setLogLevel"):
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    elif hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(0)  # pyright: ignore[reportAttributeAccessIssue]  # OpenCV 4 only


_silence_video_logs()


def warn(message: str) -> None:
    """One warning line on stderr, for a problem the run goes on after (the report records it too)."""
    print(f"edgekit: warning: {message}", file=sys.stderr, flush=True)


@dataclass
class Captured:
    frame: np.ndarray
    t_capture: int  # time.monotonic_ns() when the frame was taken from the source
    truth: Optional[Dict[str, Any]] = None  # ground truth, for synthetic sources
    t_work: Optional[int] = None  # when producing this frame began, after any wait for its turn
    name: Optional[str] = None  # the file the frame came from, relative to its folder (image folders)


@dataclass
class SourceInfo:
    uri: str
    kind: str
    live: bool
    fps: float
    width: int = 0
    height: int = 0
    notes: List[str] = field(default_factory=list)
    decoder: str = ""  # which path decodes it: ffmpeg, gstreamer+nvv4l2decoder/h264, ... (notes say why)


_SECRET_KEYS = ("token", "key", "password", "passwd", "pass", "pwd", "secret", "auth", "sig", "signature",
                "credential")


def redact_uri(uri: str) -> str:
    """A stream URI as it may be printed or written: the userinfo (user:password@) and the values of query
    parameters that look like secrets (token=, key=, password=, ...) replaced by ***."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{k}=***" if any(s in k.lower() for s in _SECRET_KEYS) else (f"{k}={v}" if sep else k)
        for k, sep, v in (item.partition("=") for item in parts.query.split("&") if item))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, uri: str) -> str:
    """`text` (a note, a pipeline) with `uri` and any other URI userinfo (a pipeline's location=) redacted."""
    return re.sub(r"(\w+://)[^/@\s\"']+@", r"\1***@", text.replace(uri, redact_uri(uri)))


def _synth_truth_names() -> Dict[str, List[str]]:
    from edgekit.runtime.data.synth import CLASSES

    return {"boxes": list(CLASSES), "mask": ["background", *CLASSES]}


class Source:
    info: SourceInfo
    reconnects = 0  # reconnect attempts after which the source delivered frames again
    reconnect_attempts = 0  # every reopen tried after a live source was lost
    _skipped: Optional[List[Dict[str, str]]] = None
    has_truth = False  # frames carry ground truth (synthetic sources, videos from `edgekit data synth`)
    # The class names of that truth, by kind ("boxes": detection classes, "mask": segmentation classes): a
    # model is scored against it only where its card names the same classes.
    truth_names: Dict[str, List[str]] = {}

    def frames(self) -> Iterator[Captured]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def skipped(self) -> List[Dict[str, str]]:
        """Inputs passed over, in the order met: {"name": relative to the source, "reason": ...} (the
        undecodable images of a folder)."""
        if self._skipped is None:
            self._skipped = []
        return self._skipped

    def _set_note(self, prefix: str, text: str) -> None:
        """Put `prefix + text` in the notes, replacing the note with that prefix (notes that grow during a run)."""
        notes = self.info.notes
        line = prefix + text
        for i, n in enumerate(notes):
            if n.startswith(prefix):
                notes[i] = line
                return
        notes.append(line)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _truth_row_problem(row: Any, num_classes: int) -> str:
    """What is wrong with one parsed line of a NAME.gt.jsonl as `edgekit data synth` writes it, or ''."""
    if not isinstance(row, dict):
        return f'not a ground-truth row (an object with "boxes" and "classes" lists), got {_short(row)}'
    boxes, classes = row.get("boxes"), row.get("classes")
    if not isinstance(boxes, list) or not isinstance(classes, list):
        return f'"boxes" and "classes" must be lists, got {_short(boxes)} and {_short(classes)}'
    if len(boxes) != len(classes):
        return f"{len(boxes)} boxes but {len(classes)} classes"
    for b in boxes:
        if not (isinstance(b, list) and len(b) == 4 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in b)):
            return f"a box is 4 numbers [x1, y1, x2, y2], got {_short(b)}"
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes:
            return f"class {_short(c)} is not a class index 0..{num_classes - 1}"
    return ""


def _read_truth_rows(path: Path, num_classes: int) -> Tuple[List[Dict[str, Any]], str]:
    """The rows of a NAME.gt.jsonl, or [] and what is wrong with it ("FILE line N: ...")."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        return [], f"{path}: cannot read ({e.strerror or e})"
    while lines and not lines[-1].strip():
        lines.pop()  # the newline that ends the last row
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return [], f"{path} line {i}: not valid JSON ({e.msg} at column {e.colno})"
        except UnicodeDecodeError:
            return [], f"{path} line {i}: not valid JSON (not UTF-8 text)"
        except (ValueError, RecursionError) as e:  # nesting too deep, numbers too long
            return [], f"{path} line {i}: not valid JSON ({type(e).__name__})"
        problem = _truth_row_problem(row, num_classes)
        if problem:
            return [], f"{path} line {i}: {problem}"
        rows.append(row)
    return rows, ""


def _read_truth_masks(path: Path, size: Tuple[int, int], num_classes: int) -> Tuple[Optional[np.ndarray], str]:
    """The per-frame class masks of a NAME.masks.npz ("masks": frames x height x width), or None and what is
    wrong with them."""
    expected = f"a 'masks' array of frames x {size[1]} x {size[0]} class indices 0..{num_classes - 1}"
    try:
        npz = np.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):
            return None, f"{path}: not a valid mask file (not an .npz archive; expected {expected})"
        with npz:
            masks = npz["masks"]
    except Exception as e:  # an untrusted archive: bad zip, bad zlib data, missing key, ...
        return None, f"{path}: not a valid mask file ({type(e).__name__}: {str(e)[:80]}; expected {expected})"
    if (masks.ndim != 3 or masks.shape[1:] != (size[1], size[0]) or not np.issubdtype(masks.dtype, np.integer)
            or (masks.size and (masks.min() < 0 or masks.max() >= num_classes))):
        return None, f"{path}: not a valid mask file (got {masks.dtype} {list(masks.shape)}; expected {expected})"
    return masks, ""


_IMAGE_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"GIF8", "GIF"))


class VideoFileSource(Source):
    """A video file: every frame, as fast as the pipeline takes them; or, `realtime`, at the file's frame rate as a
    live source (a camera's pace: frames the pipeline cannot keep up with are dropped and counted), to see the
    latency and drops a camera showing the same scene would get."""

    def __init__(self, path: Path, loop: bool = False, decoder: Optional[str] = None, realtime: bool = False) -> None:
        if not path.is_file():
            raise EdgekitError(f"{path}: video file not found")
        if path.stat().st_size == 0:
            raise EdgekitError(f"{path}: empty file, not a video")
        with open(path, "rb") as f:
            head = f.read(512)
        for magic, kind in _IMAGE_MAGIC:
            if head.startswith(magic):
                raise EdgekitError(f"{path}: this is a {kind} image, not a video (pass its folder to read images)")
        self.path, self.loop = path, loop
        requested = dec.requested_decoder(decoder)
        # FFmpeg reads the file first, everywhere: it checks the file decodes and says which codec it holds.
        self.opener = dec.Opener("ffmpeg", str(path), cv2.CAP_FFMPEG)
        cap = self._open()
        ok, first = cap.read()
        if not ok:
            cap.release()
            raise EdgekitError(f"{path}: no frame could be decoded (corrupt, truncated or not a video)")
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if realtime and not 0 < fps <= 1000:
            cap.release()
            raise EdgekitError(f"{path}: --realtime plays a file at its frame rate, but it gives none ({fps:g})")
        self.realtime = realtime
        self.info = SourceInfo(str(path), "file", realtime, fps, first.shape[1], first.shape[0], decoder="ffmpeg")
        if realtime:
            self.info.notes.append(f"played at its frame rate, {fps:g} FPS, as a live source (--realtime)")
        # What the container announces (frames; OpenCV estimates it from duration x fps where the container has
        # no count): a file that delivers fewer frames has ended early (frames()).
        self.announced = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        cap.release()
        self._choose_decoder(requested, dec.codec_from_fourcc(fourcc), dec.demuxer_for(head), fourcc)
        # Ground truth beside a video written by `edgekit data synth`: NAME.gt.jsonl (+ NAME.masks.npz), read and
        # checked whole now (they are small), so that a damaged one costs the accuracy, never the run.
        self.gt_path = path.with_name(path.stem + ".gt.jsonl")
        self.masks_path = path.with_name(path.stem + ".masks.npz")
        self.truth_rows: List[Dict[str, Any]] = []
        self.masks: Optional[np.ndarray] = None
        if self.gt_path.is_file():
            self._load_truth()

    def _choose_decoder(self, requested: str, codec: Optional[str], demuxer: Optional[str], fourcc: int) -> None:
        """Jetson: H.264/H.265 through GStreamer and the hardware decoder where it opens; else FFmpeg."""
        vio = dec.opencv_video_io()
        hardware = dec.hardware_pipeline_available(vio) if requested != "ffmpeg" else (False, "")
        plan = dec.plan_decoders(str(self.path), "file", requested, hardware, codec, demuxer)
        notes = self.info.notes
        if plan.attempts[0][0] == "ffmpeg":
            notes.append(f"decoder: {vio.describe_ffmpeg()}" + (f" ({plan.reason})" if plan.reason else ""))
            return
        if codec is None or demuxer is None:  # the plan never puts GStreamer first without both
            return
        hw = dec.Opener(f"gstreamer+nvv4l2decoder/{codec}", dec.file_pipeline(str(self.path), demuxer, codec),
                        cv2.CAP_GSTREAMER)
        cap = hw.open()
        ok = cap is not None and cap.read()[0]
        if cap is not None:
            cap.release()
        if ok:
            self.opener, self.info.decoder = hw, hw.decoder
            notes.append(f"decoder: GStreamer, nvv4l2decoder ({codec}, {demuxer}; {plan.reason})")
            notes.append(f"GStreamer pipeline: {hw.target}")
        elif len(plan.attempts) > 1:
            notes.append(f"decoder: {vio.describe_ffmpeg()} (the hardware pipeline for this {codec} file did not "
                         "open)")
        else:
            raise EdgekitError(f"{self.path}: the GStreamer hardware pipeline asked for did not open "
                               f"({codec}, fourcc {dec.fourcc_text(fourcc)!r})")

    def _load_truth(self) -> None:
        """Read NAME.gt.jsonl (and NAME.masks.npz): a line that is not valid JSON or not a ground-truth row warns
        (file and line number) and the run goes on without accuracy; bad masks only cost the mask accuracy."""
        names = _synth_truth_names()
        rows, problem = _read_truth_rows(self.gt_path, len(names["boxes"]))
        if problem:
            self._truth_problem(f"{problem}; running without accuracy")
            return
        self.truth_rows, self.has_truth, self.truth_names = rows, True, {"boxes": names["boxes"]}
        if not self.masks_path.is_file():
            return
        masks, problem = _read_truth_masks(self.masks_path, (self.info.width, self.info.height), len(names["mask"]))
        if problem:
            self._truth_problem(f"{problem}; running without segmentation accuracy")
            return
        self.masks, self.truth_names["mask"] = masks, names["mask"]

    def _truth_problem(self, message: str) -> None:
        warn(message)
        self.info.notes.append(f"ground truth: {message}")

    def _truth(self) -> Iterator[Optional[Dict[str, Any]]]:
        for i, row in enumerate(self.truth_rows if self.has_truth else ()):
            if self.masks is not None and i < len(self.masks):
                row = {**row, "mask": self.masks[i]}
            yield row
        while True:
            yield None

    def _open(self) -> Any:
        cap = self.opener.open()
        if cap is None:
            raise EdgekitError(f"{self.path}: cannot open video (unsupported format, corrupt, or not a video)")
        return cap

    def frames(self) -> Iterator[Captured]:
        period = 1e9 / self.info.fps if self.realtime else 0.0
        next_t = time.monotonic_ns()
        while True:
            cap = self._open()
            truth = self._truth()
            decoded, last_ms = 0, 0.0
            try:
                while True:
                    if period:  # a camera's frame period: wait for the frame's turn
                        wait = next_t - time.monotonic_ns()
                        if wait > 0:
                            time.sleep(wait / 1e9)
                        next_t += period
                    t_work = time.monotonic_ns()
                    ok, frame = cap.read()
                    if not ok:
                        break
                    decoded += 1
                    last_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
                    yield Captured(frame, time.monotonic_ns(), next(truth), t_work)
            finally:
                cap.release()
            if self._ended_early(decoded, last_ms):
                raise SourceFailed(f"{self.path}: the file ended early: {decoded} of the {self.announced} frames its "
                                   "header announces were decoded (truncated or damaged)")
            if not self.loop:
                return

    def _ended_early(self, decoded: int, last_ms: float) -> bool:
        """Whether a pass that decoded `decoded` frames, the last at `last_ms`, stopped short of what the header
        announces. Two witnesses must agree, so that a complete file is never failed: at least 2 frames fewer than
        the count (a container's count can be off by one), and the last frame more than max(2 frame periods,
        0.5 s) before the announced end. (Where the container has no frame count, OpenCV estimates it as
        duration x fps, which a variable frame rate inflates; the time check still holds there.)"""
        fps = self.info.fps
        if self.announced <= 0 or decoded + 2 > self.announced or fps <= 0:
            return False
        period_ms = 1000.0 / fps
        return last_ms + period_ms < self.announced * period_ms - max(2 * period_ms, 500.0)


class ImageFolderSource(Source):
    """The images of a folder, in name order. An image that cannot be read or decoded is skipped: warned about
    once on stderr, listed in `skipped` and in a note, and left out of later --loop passes. A folder where no image
    decodes is an error when it opens."""

    WARNINGS = 10  # skipped images warned about one by one; the rest in one line (the report lists them all)
    NOTE = "skipped inputs: "
    NOTE_NAMES = 50  # skipped files the note names

    def __init__(self, path: Path, loop: bool = False) -> None:
        self.folder = path
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise EdgekitError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTS)})")
        self.loop = loop
        self.info = SourceInfo(str(path), "images", False, 0.0, decoder="imdecode")
        # Like a video's first frame, the first image that decodes is read now: a folder of nothing but
        # undecodable files fails here, in one line, before any run starts.
        bad: List[Tuple[Path, str]] = []
        self.first: Optional[Tuple[Path, np.ndarray]] = None  # frames() starts with it
        for f in self.files:
            img, reason = self._decode(f)
            if img is not None:
                self.first = (f, img)
                break
            bad.append((f, reason))
        else:
            shown = "; ".join(f"{f.name}: {why}" for f, why in bad[:3]) + ("; ..." if len(bad) > 3 else "")
            raise EdgekitError(f"{path}: none of its {len(bad)} images can be decoded ({shown})")
        self.info.width, self.info.height = img.shape[1], img.shape[0]
        for f, reason in bad:
            self._skip(f, reason)

    @staticmethod
    def _decode(f: Path) -> Tuple[Optional[np.ndarray], str]:
        """The image (BGR) or None and why. Decoded from the file's bytes: on a truncated JPEG, imread prints
        libjpeg's own "Premature end of JPEG file" lines and returns a half-grey image; imdecode fails quietly."""
        try:
            data = np.fromfile(str(f), np.uint8)
        except OSError as e:
            return None, f"cannot read ({e.strerror or e})"
        if data.size == 0:
            return None, "empty file"
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
        return (img, "") if img is not None else (None, "cannot decode image")

    def _name(self, f: Path) -> str:
        return f.relative_to(self.folder).as_posix()

    def _skip(self, f: Path, reason: str) -> None:
        self.files.remove(f)
        self.skipped.append({"name": self._name(f), "reason": reason})
        n = len(self.skipped)
        if n <= self.WARNINGS:
            warn(f"{f}: {reason}; skipped")
        elif n == self.WARNINGS + 1:
            warn(f"{self.folder}: further images that cannot be decoded are skipped without a warning "
                 "(the report lists every one)")
        listed = ", ".join(f"{s['name']} ({s['reason']})" for s in self.skipped[:self.NOTE_NAMES])
        more = f" and {n - self.NOTE_NAMES} more" if n > self.NOTE_NAMES else ""
        self._set_note(self.NOTE, f"{n}: {listed}{more}")

    def frames(self) -> Iterator[Captured]:
        first, self.first = self.first, None
        while self.files:
            for f in list(self.files):
                t_work = time.monotonic_ns()
                if first is not None and first[0] == f:
                    img: Optional[np.ndarray] = first[1]
                    first = None
                else:
                    img, reason = self._decode(f)
                    if img is None:
                        self._skip(f, reason)
                        continue
                yield Captured(img, time.monotonic_ns(), t_work=t_work, name=self._name(f))
            if not self.loop:
                return


class SyntheticSource(Source):
    """synthetic://?size=640x480&fps=30&objects=5&seed=0&speed=0.01 — moving shapes with ground truth,
    delivered in real time at `fps` (a live source)."""

    def __init__(self, uri: str) -> None:
        q = {k: v[-1] for k, v in parse_qs(urlparse(uri).query).items()}
        try:
            w, h = (int(v) for v in q.get("size", "640x480").lower().split("x"))
            self.fps = float(q.get("fps", 30))
            objects, seed, speed = int(q.get("objects", 5)), int(q.get("seed", 0)), float(q.get("speed", 0.01))
        except ValueError:
            msg = "bad synthetic source parameters (size=WxH, fps, objects, seed, speed)"
            raise EdgekitError(f"{uri}: {msg}") from None
        from edgekit.runtime.data.synth import VideoScene

        self.scene = VideoScene(seed, (w, h), objects=objects, speed=speed)
        self.info = SourceInfo(uri, "synthetic", True, self.fps, w, h, decoder="synthetic")
        self.has_truth, self.truth_names = True, _synth_truth_names()

    def frames(self) -> Iterator[Captured]:
        period = 1e9 / self.fps if self.fps > 0 else 0
        next_t = time.monotonic_ns()
        while True:
            if period:  # a camera's frame period: wait for the frame's turn, then "expose" it
                wait = next_t - time.monotonic_ns()
                if wait > 0:
                    time.sleep(wait / 1e9)
                next_t += period
            t_work = time.monotonic_ns()
            f = self.scene.next()
            truth = {"boxes": f.boxes.tolist(), "classes": f.classes.tolist(), "mask": f.mask}
            yield Captured(f.image, time.monotonic_ns(), truth, t_work)


class CaptureSource(Source):
    """Cameras (index, /dev/videoN), CSI cameras and RTSP streams. The first open tries each way of opening
    in turn (on a Jetson: GStreamer with the hardware decoder, then FFmpeg); reconnects reuse the one that worked.

    A live source has no end: when it stops delivering (the server or camera went away, the stream ended, or
    nothing came within the read timeout) it is lost, and reopened up to `reconnect` times with back-off
    (0.5, 1, 2, 4, 8, 8, ... s). A lost source that none of its attempts brings back raises SourceFailed."""

    _FAILURES = {"rtsp": "RTSP stream refused or unreachable", "camera": "camera absent or busy",
                 "csi": "CSI camera unavailable (needs OpenCV with GStreamer and nvarguscamerasrc)"}
    losses = 0  # times the source stopped delivering

    def __init__(self, uri: str, kind: str, openers: List[dec.Opener], live: bool = True, reconnect: int = 0,
                 notes: Optional[List[str]] = None) -> None:
        self.uri, self.kind, self.reconnect = uri, kind, reconnect
        self.shown = redact_uri(uri)  # what messages, notes and reports say: no credentials
        self.opener = openers[0]
        notes = list(notes or [])
        cap = None
        for i, opener in enumerate(openers):
            cap = opener.open()
            if cap is not None:
                self.opener = opener
                if i:
                    notes.append(f"{', '.join(o.decoder for o in openers[:i])} did not open; opened with "
                                 f"{opener.decoder}")
                break
        if cap is None:
            raise SourceFailed(f"{self.shown}: cannot open ({self._FAILURES[kind]})")
        if self.opener.backend == cv2.CAP_GSTREAMER:
            notes.append(f"GStreamer pipeline: {self.opener.target}")
        notes = [scrub(n, uri) for n in notes]
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.info = SourceInfo(self.shown, kind, live, cap.get(cv2.CAP_PROP_FPS) or 0.0, w, h, notes,
                               self.opener.decoder)
        self.cap: Any = cap

    def frames(self) -> Iterator[Captured]:
        attempt, lost_at = 0, 0.0
        while True:
            ok, frame = self.cap.read()
            if ok:
                if attempt:  # a reconnect counts once the reopened source delivers
                    self.reconnects += 1
                    self._note_reconnects()
                attempt = 0
                yield Captured(frame, time.monotonic_ns())
                continue
            self.cap.release()
            if attempt == 0:
                lost_at = time.monotonic()
                self.losses += 1
            if attempt >= self.reconnect:
                raise SourceFailed(self._lost(attempt, time.monotonic() - lost_at))
            attempt += 1
            time.sleep(backoff_s(attempt))
            self.reconnect_attempts += 1
            self._note_reconnects()
            # A reopen that fails leaves a closed capture: its read() fails at once and the next attempt comes.
            self.cap = self.opener.open() or cv2.VideoCapture()

    def _note_reconnects(self) -> None:
        self._set_note("reconnects: ", f"{self.reconnects} of {self.reconnect_attempts} attempts brought the source "
                                       f"back (lost {self.losses} time{'s' if self.losses != 1 else ''})")

    def _lost(self, attempts: int, seconds: float) -> str:
        what = "stream" if self.kind == "rtsp" else "camera"
        if not attempts:
            return f"{self.shown}: {what} lost; reconnecting is off (--reconnect 0)"
        return (f"{self.shown}: {what} lost; {attempts} reconnect attempt{'s' if attempts != 1 else ''} over "
                f"{seconds:.1f} s failed")

    def close(self) -> None:
        self.cap.release()


def gstreamer_available() -> bool:
    return dec.opencv_video_io().gstreamer


def _rtsp_source(uri: str, requested: str, timeout_s: float, reconnect: int, transport: str,
                 latency_ms: int) -> CaptureSource:
    vio = dec.opencv_video_io()
    hardware = dec.hardware_pipeline_available(vio) if requested != "ffmpeg" else (False, "")
    plan = dec.plan_decoders(uri, "rtsp", requested, hardware)
    openers = dec.rtsp_openers(uri, plan, vio, transport, latency_ms, timeout_s)
    notes = [f"decoder plan: {', '.join(o.decoder for o in openers)} ({plan.reason})"]
    ffmpeg = next((o for o in openers if o.decoder == "ffmpeg"), None)
    if ffmpeg is not None:
        notes.append(f"FFmpeg: {vio.describe_ffmpeg()}, options {ffmpeg.ffmpeg_options}")
    src = CaptureSource(uri, "rtsp", openers, reconnect=reconnect, notes=notes)
    if src.opener.backend == cv2.CAP_GSTREAMER:
        src.info.notes.append(scrub(dec.gstreamer_stall_note(cv2.__version__, timeout_s), uri))
    return src


def open_source(uri: str, loop: bool = False, timeout_s: float = 5.0, reconnect: int = 3,
                rtsp_transport: str = "tcp", rtsp_latency_ms: int = 200, decoder: Optional[str] = None,
                realtime: bool = False) -> Source:
    """The source a URI names (DESIGN.md section 5). `decoder` (default: $EDGEKIT_VIDEO_DECODER, else auto)
    picks how RTSP streams and video files are decoded: auto, gstreamer (Jetson hardware decoder) or ffmpeg.
    `reconnect`: how many times a live source (camera, CSI, RTSP) that is lost is reopened (0: never).
    `realtime`: a video file is played at its frame rate, as a live source."""
    if uri.startswith("synthetic://"):
        return SyntheticSource(uri)
    if uri.startswith(("rtsp://", "rtsps://")):
        return _rtsp_source(uri, dec.requested_decoder(decoder), timeout_s, reconnect, rtsp_transport,
                            rtsp_latency_ms)
    if uri.startswith("csi://"):
        req = dec.parse_csi_uri(uri)
        if not gstreamer_available():
            raise EdgekitError(f"{uri}: this OpenCV has no GStreamer support (use JetPack's OpenCV on a Jetson)")
        return CaptureSource(uri, "csi", [dec.Opener("gstreamer+nvarguscamerasrc", dec.csi_pipeline(req),
                                                     cv2.CAP_GSTREAMER)], reconnect=reconnect)
    if uri.isdigit() or uri.startswith("/dev/video"):
        target: Any = int(uri) if uri.isdigit() else uri
        v4l2 = hasattr(cv2, "CAP_V4L2")
        return CaptureSource(uri, "camera", [dec.Opener("v4l2" if v4l2 else "opencv", target,
                                                        cv2.CAP_V4L2 if v4l2 else cv2.CAP_ANY)], reconnect=reconnect)
    p = Path(uri)
    if p.is_dir():
        if realtime:
            raise EdgekitError(f"{uri}: --realtime plays video files at their frame rate; an image folder has none")
        return ImageFolderSource(p, loop)
    if not p.exists():
        raise EdgekitError(f"{uri}: source not found (a video file, image folder, camera index, /dev/videoN, "
                           "csi://N, rtsp://... or synthetic://)")
    return VideoFileSource(p, loop, decoder, realtime)
