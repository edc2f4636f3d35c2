"""Which decoder opens a network stream or a video file, and how.

Everywhere, OpenCV's FFmpeg backend. On a Jetson, first a GStreamer pipeline with the hardware decoder
(nvv4l2decoder, converted and scaled by nvvidconv on the VIC), chosen when this OpenCV was built with
GStreamer and NVIDIA's elements exist; where it does not open, FFmpeg. EDGEKIT_VIDEO_DECODER (or the
`decoder` argument of open_source) forces one path: auto (default), gstreamer or ffmpeg.

What varies between machines is read from `cv2.getBuildInformation()` by pure functions, so the Jetson
logic is tested on recorded outputs (tests/data/opencv_build_info/).
"""

import contextlib
import functools
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlparse

import cv2

from edgekit.errors import EdgekitError

DECODER_ENV = "EDGEKIT_VIDEO_DECODER"
DECODERS = ("auto", "gstreamer", "ffmpeg")
CODECS = ("h264", "h265")
# Jetson's hardware decoder and its converter (NVMM memory -> system memory). Tests swap this part for
# `decodebin ! videoconvert` to run the rest of a pipeline on a machine without NVIDIA's elements.
NV_DECODE = "nvv4l2decoder ! nvvidconv"
# Frames leave GStreamer as they come (sync=false) and are never dropped there (drop=false): a drop inside
# appsink is one the runner cannot count. When the capture thread stalls, the next frames wait upstream;
# it then pulls them at once and the pipeline's queue drops the oldest, counted. max-buffers is spelled
# out so that OpenCV keeps it (it forces max-buffers=1 on pipelines that do not name it).
APPSINK = "appsink sync=false drop=false max-buffers=2"
TO_BGR = "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"


@dataclass(frozen=True)
class VideoIO:
    """The "Video I/O" facts of an OpenCV build."""

    ffmpeg: bool
    avformat: Optional[Tuple[int, int, int]]  # libavformat version, None where the build does not say
    gstreamer: bool
    gstreamer_version: str = ""

    @property
    def ffmpeg_major(self) -> Optional[int]:
        """FFmpeg's major version: libavformat 57 = FFmpeg 3, 58 = 4, 59 = 5, 60 = 6, 61 = 7, 62 = 8."""
        if self.avformat is None or self.avformat[0] < 57:
            return None
        return self.avformat[0] - 54

    def describe_ffmpeg(self) -> str:
        if not self.ffmpeg:
            return "no FFmpeg in this OpenCV"
        if self.avformat is None:
            return "FFmpeg of unknown version"
        return f"FFmpeg {self.ffmpeg_major} (libavformat {'.'.join(map(str, self.avformat))})"


_AVFORMAT = re.compile(r"^\s*avformat:\s*YES\s*\((\d+)\.(\d+)\.(\d+)\)", re.M)
_FFMPEG = re.compile(r"^\s*FFMPEG:\s*YES", re.M)
_GSTREAMER = re.compile(r"^\s*GStreamer:\s*YES\s*(?:\(([^)]*)\))?", re.M)


def parse_video_io(build_info: str) -> VideoIO:
    """FFmpeg and GStreamer support from the text of `cv2.getBuildInformation()`."""
    av = _AVFORMAT.search(build_info)
    gst = _GSTREAMER.search(build_info)
    return VideoIO(ffmpeg=bool(_FFMPEG.search(build_info)),
                   avformat=(int(av.group(1)), int(av.group(2)), int(av.group(3))) if av else None,
                   gstreamer=gst is not None, gstreamer_version=(gst.group(1) or "") if gst else "")


@functools.lru_cache(maxsize=None)
def opencv_video_io() -> VideoIO:
    return parse_video_io(cv2.getBuildInformation())


def rtsp_socket_timeout_option(avformat_major: Optional[int]) -> Optional[str]:
    """The RTSP demuxer's socket I/O timeout option. FFmpeg 4.x (libavformat 58) calls it `stimeout`; there
    `timeout` means "listen for incoming connections" and makes every client open fail ("Unable to open
    RTSP for listening"). FFmpeg 5 renamed `stimeout` to `timeout`. None where the version is unknown:
    OpenCV's own open/read timeouts still apply."""
    if avformat_major is None:
        return None
    return "stimeout" if avformat_major < 59 else "timeout"


def rtsp_ffmpeg_options(avformat_major: Optional[int], transport: str, timeout_s: float, latency_ms: int) -> str:
    """OPENCV_FFMPEG_CAPTURE_OPTIONS for an RTSP stream: transport, socket timeout (microseconds), jitter
    buffer (max_delay, microseconds)."""
    parts = [f"rtsp_transport;{transport}"]
    key = rtsp_socket_timeout_option(avformat_major)
    if key is not None:
        parts.append(f"{key};{int(timeout_s * 1e6)}")
    parts.append(f"max_delay;{int(latency_ms * 1000)}")
    return "|".join(parts)


def gst_quote(value: str) -> str:
    """A property value for a gst-launch style pipeline, safe with spaces and quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _depay_parse(codec: str) -> str:
    if codec not in CODECS:
        raise ValueError(f"no GStreamer pipeline for codec {codec!r}")
    n = codec[1:]  # 264 / 265
    return f"rtph{n}depay ! h{n}parse"


def rtsp_pipeline(uri: str, codec: str, transport: str = "tcp", latency_ms: int = 200, timeout_s: float = 5.0,
                  decode: str = NV_DECODE) -> str:
    """GStreamer pipeline for an RTSP stream of H.264 or H.265, decoded by `decode`. tcp-timeout (microseconds)
    bounds connecting and each RTSP request; a stream that stalls later is gstreamer_stall_note's matter."""
    protocols = "tcp" if transport == "tcp" else "udp"
    return (f"rtspsrc location={gst_quote(uri)} latency={int(latency_ms)} protocols={protocols} "
            f"tcp-timeout={int(timeout_s * 1e6)} ! {_depay_parse(codec)} ! {decode} ! {TO_BGR} ! {APPSINK}")


def file_pipeline(path: str, demuxer: str, codec: str, decode: str = NV_DECODE) -> str:
    """GStreamer pipeline for an H.264/H.265 video file in the container `demuxer` reads."""
    if codec not in CODECS:
        raise ValueError(f"no GStreamer pipeline for codec {codec!r}")
    return (f"filesrc location={gst_quote(path)} ! {demuxer} ! h{codec[1:]}parse ! {decode} ! {TO_BGR} "
            f"! {APPSINK}")


@dataclass(frozen=True)
class CsiRequest:
    sensor_id: int = 0
    sensor_mode: Optional[int] = None
    size: Optional[Tuple[int, int]] = None  # output width, height (scaled by nvvidconv)
    fps: Optional[int] = None


def parse_csi_uri(uri: str) -> CsiRequest:
    """csi://N?mode=M&size=WxH&fps=F: sensor N (default 0), sensor mode M (nvarguscamerasrc sensor-mode),
    frames scaled to WxH by nvvidconv, F frames per second."""
    usage = "expected csi://N?mode=M&size=WxH&fps=F (all optional)"
    u = urlparse(uri)
    q = parse_qs(u.query, keep_blank_values=True)
    unknown = sorted(set(q) - {"mode", "size", "fps"})
    if unknown or not (u.netloc or "0").isdigit() or u.path not in ("", "/"):
        what = f"unknown parameter {unknown[0]!r}" if unknown else "bad sensor id"
        raise EdgekitError(f"{uri}: {what}; {usage}")
    v = {k: vals[-1] for k, vals in q.items()}
    try:
        mode = int(v["mode"]) if "mode" in v else None
        size = tuple(int(s) for s in v["size"].lower().split("x")) if "size" in v else None
        fps = int(v["fps"]) if "fps" in v else None
    except ValueError:
        raise EdgekitError(f"{uri}: bad CSI camera parameters; {usage}") from None
    if (mode is not None and mode < 0) or (size is not None and (len(size) != 2 or min(size) <= 0)) \
            or (fps is not None and fps <= 0):
        raise EdgekitError(f"{uri}: bad CSI camera parameters; {usage}")
    return CsiRequest(int(u.netloc or 0), mode, size, fps)  # type: ignore[arg-type]


def csi_pipeline(req: CsiRequest) -> str:
    """nvarguscamerasrc pipeline: the sensor mode asked for, scaling in nvvidconv (on the VIC, NVMM memory),
    so the CPU only converts BGRx to BGR at the output size."""
    src = f"nvarguscamerasrc sensor-id={req.sensor_id}"
    if req.sensor_mode is not None:
        src += f" sensor-mode={req.sensor_mode}"
    nvmm = "video/x-raw(memory:NVMM),format=NV12" + (f",framerate={req.fps}/1" if req.fps else "")
    out = "video/x-raw" + (f",width={req.size[0]},height={req.size[1]}" if req.size else "") + ",format=BGRx"
    return f"{src} ! {nvmm} ! nvvidconv ! {out} ! videoconvert ! video/x-raw,format=BGR ! {APPSINK}"


_FOURCC_CODECS = {"avc1": "h264", "avc3": "h264", "h264": "h264", "x264": "h264", "davc": "h264",
                  "hvc1": "h265", "hev1": "h265", "hevc": "h265", "h265": "h265", "x265": "h265"}


def fourcc_text(fourcc: int) -> str:
    return "".join(chr(c) if 32 <= c < 127 else "?" for c in (int(fourcc) & 0xFFFFFFFF).to_bytes(4, "little"))


def codec_from_fourcc(fourcc: int) -> Optional[str]:
    """h264/h265 from the CAP_PROP_FOURCC OpenCV's FFmpeg reports for a file (OpenCV 4.5 gives the container's
    tag, e.g. avc1/hvc1 in MP4; OpenCV 5 the codec, h264/hevc), else None."""
    return _FOURCC_CODECS.get(fourcc_text(fourcc).lower())


def demuxer_for(head: bytes) -> Optional[str]:
    """The GStreamer demuxer for a file from its first bytes (at least 189 for MPEG-TS), or None."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free"):
        return "qtdemux"  # MP4, MOV
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroskademux"  # MKV, WebM
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "tsdemux"
    return None


def requested_decoder(value: Optional[str] = None) -> str:
    """The decoder path asked for: the argument, else $EDGEKIT_VIDEO_DECODER, else auto."""
    source = "decoder" if value else DECODER_ENV
    chosen = (value or os.environ.get(DECODER_ENV) or "auto").strip().lower()
    if chosen not in DECODERS:
        raise EdgekitError(f"{source}={chosen!r}: expected one of {', '.join(DECODERS)}")
    return chosen


_NV_ELEMENTS = ("nvv4l2decoder", "nvvidconv")
_NV_PLUGIN_FILES = ("libgstnvvideo4linux2.so", "libgstnvvidconv.so")
_GST_PLUGIN_DIRS = ("/usr/lib/aarch64-linux-gnu/gstreamer-1.0", "/usr/lib/gstreamer-1.0")


@functools.lru_cache(maxsize=None)
def nvidia_decoder_elements() -> Tuple[bool, str]:
    """Whether GStreamer has NVIDIA's decoder and converter (a Jetson), and if not, why not."""
    inspect = shutil.which("gst-inspect-1.0")
    if inspect:
        for name in _NV_ELEMENTS:
            try:
                r = subprocess.run([inspect, name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                return False, f"gst-inspect-1.0 {name} did not answer"
            if r.returncode != 0:
                return False, f"GStreamer has no {name} (not a Jetson)"
        return True, "GStreamer has nvv4l2decoder and nvvidconv"
    # No gst-inspect-1.0 (gstreamer1.0-tools not installed): look for the plugin files themselves.
    dirs = [d for d in os.environ.get("GST_PLUGIN_PATH", "").split(os.pathsep) if d] + list(_GST_PLUGIN_DIRS)
    for f in _NV_PLUGIN_FILES:
        if not any((Path(d) / f).is_file() for d in dirs):
            return False, f"no GStreamer plugin {f} (not a Jetson)"
    return True, "NVIDIA's GStreamer plugins are installed"


# --- the annotated video's encoder -----------------------------------------------------------------------------
# Jetson's hardware H.264 encoder behind OpenCV's GStreamer writer: BGR frames from appsrc, converted to NV12 in
# NVMM memory by nvvidconv (the VIC), encoded by NVENC. Orin Nano has no NVENC: there the writer does not open and
# the annotated video falls back to OpenCV's software mp4v writer.
NV_ENCODE = "nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc insert-sps-pps=true"


def encoder_pipeline(path: str, encode: str = NV_ENCODE) -> str:
    """GStreamer writer pipeline (cv2.VideoWriter with CAP_GSTREAMER) that encodes BGR frames into an MP4."""
    return (f"appsrc ! video/x-raw,format=BGR ! videoconvert ! video/x-raw,format=BGRx ! {encode} ! h264parse ! "
            f"qtmux ! filesink location={gst_quote(path)}")


@functools.lru_cache(maxsize=None)
def nvidia_encoder_element() -> Tuple[bool, str]:
    """Whether GStreamer has NVIDIA's H.264 encoder element (a Jetson with its multimedia plugins), and if not,
    why not. (An Orin Nano has the element but no NVENC: opening the writer fails there, and is the real test.)"""
    inspect = shutil.which("gst-inspect-1.0")
    if not inspect:
        return False, "no gst-inspect-1.0 to look for nvv4l2h264enc"
    try:
        r = subprocess.run([inspect, "nvv4l2h264enc"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False, "gst-inspect-1.0 nvv4l2h264enc did not answer"
    return (True, "GStreamer has nvv4l2h264enc") if r.returncode == 0 else (
        False, "GStreamer has no nvv4l2h264enc (not a Jetson)")


def hardware_pipeline_available(vio: VideoIO,
                                elements: Callable[[], Tuple[bool, str]] = nvidia_decoder_elements) -> Tuple[bool, str]:
    """Whether the Jetson hardware pipeline can run here, and if not, why not. `elements` is only asked where
    OpenCV has GStreamer."""
    if not vio.gstreamer:
        return False, "this OpenCV was built without GStreamer"
    return elements()


@dataclass(frozen=True)
class Plan:
    attempts: List[Tuple[str, Optional[str]]]  # (decoder, codec) in the order to try
    reason: str


def plan_decoders(name: str, kind: str, requested: str, hardware: Tuple[bool, str], codec: Optional[str] = None,
                  demuxer: Optional[str] = None) -> Plan:
    """The decoder paths to try for the source `name`: an RTSP stream (kind "rtsp", codec unknown until it
    plays: H.264 first, then H.265) or a video file (kind "file", codec and demuxer known), and why."""
    usable, why = hardware
    if requested == "ffmpeg":
        return Plan([("ffmpeg", None)], "FFmpeg was asked for")
    if usable and kind == "file" and codec not in CODECS:
        usable, why = False, "the file's codec is not H.264/H.265"
    if usable and kind == "file" and demuxer is None:
        usable, why = False, "the file's container is not MP4/MOV/MKV/MPEG-TS"
    if not usable:
        if requested == "gstreamer":
            raise EdgekitError(f"{name}: decoder 'gstreamer' (Jetson hardware decoding) was asked for, but {why}")
        return Plan([("ffmpeg", None)], why)
    codecs = [codec] if kind == "file" else list(CODECS)
    attempts: List[Tuple[str, Optional[str]]] = [("gstreamer", c) for c in codecs]
    if requested == "auto":
        attempts.append(("ffmpeg", None))
    return Plan(attempts, why)


def gstreamer_stall_note(opencv_version: str, timeout_s: float) -> str:
    """What happens on the GStreamer path when a stream stops delivering without closing its connection (a
    pulled cable): rtspsrc keeps waiting, so only OpenCV's read timeout ends the read. OpenCV 4.7 added one
    (30 s) to its GStreamer backend; before, the read blocks for good. A closed connection ends the read at
    once everywhere. (Timeouts passed as open parameters would stop and restart the pipeline in OpenCV 4.7+,
    and make the open fail in older versions, so none are passed.)"""
    m = re.match(r"(\d+)\.(\d+)", opencv_version)
    major, minor = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if (major, minor) >= (4, 7):
        return (f"GStreamer path: a stream that stalls without closing is noticed after OpenCV's 30 s read timeout, "
                f"not --timeout ({timeout_s:g} s); {DECODER_ENV}=ffmpeg honours --timeout")
    return (f"GStreamer path: OpenCV {opencv_version} has no read timeout for GStreamer, so a stream that stalls "
            f"without closing hangs the capture; {DECODER_ENV}=ffmpeg honours --timeout ({timeout_s:g} s)")


_ENV_LOCK = threading.Lock()
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


@contextlib.contextmanager
def _ffmpeg_options(options: Optional[str]) -> Iterator[None]:
    """Set OPENCV_FFMPEG_CAPTURE_OPTIONS for one open only. A user's own options come after ours, so theirs
    win where both name the same option."""
    if options is None:
        yield
        return
    before = os.environ.get(FFMPEG_OPTIONS_ENV)
    os.environ[FFMPEG_OPTIONS_ENV] = options + (f"|{before}" if before else "")
    try:
        yield
    finally:
        if before is None:
            del os.environ[FFMPEG_OPTIONS_ENV]
        else:
            os.environ[FFMPEG_OPTIONS_ENV] = before


def timeout_params(timeout_s: float) -> List[int]:
    """VideoCapture open parameters for the open and read timeouts (set after open they are ignored)."""
    ms = int(timeout_s * 1000)
    if not hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):  # OpenCV < 4.5.2
        return []
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]


@dataclass(frozen=True)
class Opener:
    """One way of opening a source: what the report calls it, what OpenCV opens, and with which options."""

    decoder: str  # what the report shows: ffmpeg, gstreamer+nvv4l2decoder/h264, ...
    target: Any  # URL, path, pipeline or camera index
    backend: int
    params: Sequence[int] = ()
    ffmpeg_options: Optional[str] = None

    def open(self) -> Optional[Any]:
        """An opened cv2.VideoCapture, or None."""
        # The options variable is process-wide: opens that set it take turns (others need not wait).
        turn: Any = _ENV_LOCK if self.ffmpeg_options is not None else contextlib.nullcontext()
        with turn, _ffmpeg_options(self.ffmpeg_options):
            cap = self._capture()
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _capture(self) -> Any:
        if self.params:
            try:
                return cv2.VideoCapture(self.target, self.backend, list(self.params))
            except TypeError:  # OpenCV < 4.5.2 has no open parameters
                pass
        return cv2.VideoCapture(self.target, self.backend)


def rtsp_openers(uri: str, plan: Plan, vio: VideoIO, transport: str, latency_ms: int,
                 timeout_s: float) -> List[Opener]:
    openers = []
    for decoder, codec in plan.attempts:
        if decoder == "gstreamer" and codec is not None:
            openers.append(Opener(f"gstreamer+nvv4l2decoder/{codec}",
                                  rtsp_pipeline(uri, codec, transport, latency_ms, timeout_s), cv2.CAP_GSTREAMER))
        else:
            avformat = vio.avformat[0] if vio.avformat else None
            openers.append(Opener("ffmpeg", uri, cv2.CAP_FFMPEG, timeout_params(timeout_s),
                                  rtsp_ffmpeg_options(avformat, transport, timeout_s, latency_ms)))
    return openers
