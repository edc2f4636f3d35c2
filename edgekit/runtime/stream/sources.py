"""Video sources addressed by URI-like strings: a file, an image folder, a camera index or /dev/videoN,
csi://N, rtsp://..., synthetic://. Each yields (frame, capture time) and says whether it is live.

Live sources (cameras, RTSP, synthetic in real time) run at their own pace: when the pipeline is
behind, the oldest waiting frame is dropped and counted. File sources are read as fast as the
pipeline takes them, and no frame is ever dropped.
"""

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import parse_qs, urlparse, urlsplit, urlunsplit

import cv2
import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.data.datasets import IMAGE_EXTS
from edgekit.runtime.stream import decoders as dec

# OpenCV and its FFmpeg print warnings of their own for every failed open or damaged packet; edgekit
# reports those as one line. EDGEKIT_VIDEO_LOG=1 brings them back for debugging.
if not os.environ.get("EDGEKIT_VIDEO_LOG"):
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    if hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(0)


@dataclass
class Captured:
    frame: np.ndarray
    t_capture: int  # time.monotonic_ns() when the frame was taken from the source
    truth: Optional[Dict[str, Any]] = None  # ground truth, for synthetic sources
    t_work: Optional[int] = None  # when producing this frame began, after any wait for its turn


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
    reconnects = 0
    has_truth = False  # frames carry ground truth (synthetic sources, videos from `edgekit data synth`)
    # The class names of that truth, by kind ("boxes": detection classes, "mask": segmentation classes): a
    # model is scored against it only where its card names the same classes.
    truth_names: Dict[str, List[str]] = {}

    def frames(self) -> Iterator[Captured]:
        raise NotImplementedError

    def close(self) -> None:
        pass


_IMAGE_MAGIC = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"GIF8", "GIF"))


class VideoFileSource(Source):
    def __init__(self, path: Path, loop: bool = False, decoder: Optional[str] = None) -> None:
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
        self.info = SourceInfo(str(path), "file", False, cap.get(cv2.CAP_PROP_FPS) or 0.0,
                               first.shape[1], first.shape[0], decoder="ffmpeg")
        cap.release()
        self._choose_decoder(requested, dec.codec_from_fourcc(fourcc), dec.demuxer_for(head), fourcc)
        # Ground truth beside a video written by `edgekit data synth`: NAME.gt.jsonl (+ NAME.masks.npz).
        self.gt_path = path.with_name(path.stem + ".gt.jsonl")
        self.masks_path = path.with_name(path.stem + ".masks.npz")
        self.has_truth = self.gt_path.is_file()
        self.truth_names = _synth_truth_names() if self.has_truth else {}

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

    def _truth(self) -> Iterator[Optional[Dict[str, Any]]]:
        if not self.has_truth:
            while True:
                yield None
        import json

        masks = np.load(self.masks_path)["masks"] if self.masks_path.is_file() else None
        with open(self.gt_path) as f:
            for i, line in enumerate(f):
                row = json.loads(line)
                if masks is not None and i < len(masks):
                    row["mask"] = masks[i]
                yield row
        while True:
            yield None

    def _open(self) -> Any:
        cap = self.opener.open()
        if cap is None:
            raise EdgekitError(f"{self.path}: cannot open video (unsupported format, corrupt, or not a video)")
        return cap

    def frames(self) -> Iterator[Captured]:
        while True:
            cap = self._open()
            truth = self._truth()
            try:
                while True:
                    t_work = time.monotonic_ns()
                    ok, frame = cap.read()
                    if not ok:
                        break
                    yield Captured(frame, time.monotonic_ns(), next(truth), t_work)
            finally:
                cap.release()
            if not self.loop:
                return


class ImageFolderSource(Source):
    def __init__(self, path: Path, loop: bool = False) -> None:
        self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not self.files:
            raise EdgekitError(f"{path}: folder holds no images ({', '.join(IMAGE_EXTS)})")
        self.loop = loop
        self.info = SourceInfo(str(path), "images", False, 0.0, decoder="imread")

    def frames(self) -> Iterator[Captured]:
        while True:
            for f in self.files:
                img = cv2.imread(str(f), cv2.IMREAD_COLOR)
                if img is None:
                    raise EdgekitError(f"{f}: cannot decode image")
                yield Captured(img, time.monotonic_ns())
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
    in turn (on a Jetson: GStreamer with the hardware decoder, then FFmpeg); reconnects, with back-off when a
    network stream stops delivering, reuse the one that worked."""

    _FAILURES = {"rtsp": "RTSP stream refused or unreachable", "camera": "camera absent or busy",
                 "csi": "CSI camera unavailable (needs OpenCV with GStreamer and nvarguscamerasrc)"}

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
            raise EdgekitError(f"{self.shown}: cannot open ({self._FAILURES[kind]})")
        if self.opener.backend == cv2.CAP_GSTREAMER:
            notes.append(f"GStreamer pipeline: {self.opener.target}")
        notes = [scrub(n, uri) for n in notes]
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.info = SourceInfo(self.shown, kind, live, cap.get(cv2.CAP_PROP_FPS) or 0.0, w, h, notes,
                               self.opener.decoder)
        self.cap: Any = cap

    def _open(self) -> Any:
        cap = self.opener.open()
        if cap is None:
            raise EdgekitError(f"{self.shown}: cannot open ({self._FAILURES[self.kind]})")
        return cap

    def frames(self) -> Iterator[Captured]:
        attempt = 0
        while True:
            ok, frame = self.cap.read()
            if ok:
                attempt = 0
                yield Captured(frame, time.monotonic_ns())
                continue
            self.cap.release()
            if attempt >= self.reconnect:
                return  # stream ended or stopped delivering: the runner reports what was processed
            attempt += 1
            time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))  # back-off: 0.5, 1, 2, 4, 8 s
            try:
                self.cap = self._open()
                self.reconnects += 1
            except EdgekitError:
                self.cap = cv2.VideoCapture()  # read() fails at once: the next attempt comes

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
                rtsp_transport: str = "tcp", rtsp_latency_ms: int = 200, decoder: Optional[str] = None) -> Source:
    """The source a URI names (DESIGN.md section 5). `decoder` (default: $EDGEKIT_VIDEO_DECODER, else auto)
    picks how RTSP streams and video files are decoded: auto, gstreamer (Jetson hardware decoder) or ffmpeg."""
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
                                                     cv2.CAP_GSTREAMER)])
    if uri.isdigit() or uri.startswith("/dev/video"):
        target: Any = int(uri) if uri.isdigit() else uri
        v4l2 = hasattr(cv2, "CAP_V4L2")
        return CaptureSource(uri, "camera", [dec.Opener("v4l2" if v4l2 else "opencv", target,
                                                        cv2.CAP_V4L2 if v4l2 else cv2.CAP_ANY)])
    p = Path(uri)
    if p.is_dir():
        return ImageFolderSource(p, loop)
    if not p.exists():
        raise EdgekitError(f"{uri}: source not found (a video file, image folder, camera index, /dev/videoN, "
                           "csi://N, rtsp://... or synthetic://)")
    return VideoFileSource(p, loop, decoder)
