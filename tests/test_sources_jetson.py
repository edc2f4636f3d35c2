"""How RTSP streams, video files and CSI cameras are opened on a Jetson and elsewhere.

What only a Jetson has (JetPack's OpenCV, nvv4l2decoder, nvarguscamerasrc) is covered three ways:
* the choice of decoder and of FFmpeg's RTSP timeout option, on recorded `cv2.getBuildInformation()` outputs
  of JetPack 5 and 6 and of pip wheels (tests/data/opencv_build_info/README.md says where each came from);
* the GStreamer pipelines edgekit builds, run for real through GStreamer (system Python's `gi`) against a real
  RTSP server and real H.264/H.265 files, with only NVIDIA's two elements swapped for `decodebin ! videoconvert`;
* RTSP through a real FFmpeg 4.4 (the one JetPack 6's OpenCV links), from the opencv-python-headless 4.5.5
  wheel, downloaded at test time.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import pytest
from conftest import MODEL_CACHE, ROOT, cache_lock
from test_stream import RtspServer, free_port, needs_rtsp_server

from edgekit.errors import EdgekitError
from edgekit.runtime.stream import decoders as dec

DATA = ROOT / "tests" / "data" / "opencv_build_info"
JETPACK5 = "jetpack5.1_opencv_4.5.4.txt"
JETPACK6 = "jetpack6_opencv_4.8.0.txt"
NO_FFMPEG = "jetson_selfbuilt_opencv_4.10.0_no_ffmpeg.txt"
PIP5 = "pip_opencv_python_headless_5.0.0_x86_64.txt"
PIP455 = "pip_opencv_python_headless_4.5.5.64_x86_64.txt"
ON_JETSON = (True, "GStreamer has nvv4l2decoder and nvvidconv")  # what a Jetson's GStreamer answers
SOFTWARE_DECODE = "decodebin ! videoconvert"  # stands in for NV_DECODE (nvv4l2decoder ! nvvidconv)


def video_io(name: str) -> dec.VideoIO:
    return dec.parse_video_io((DATA / name).read_text())


# ---- recorded build information -------------------------------------------------------------------------

@pytest.mark.parametrize("name, avformat, ffmpeg_major, gstreamer", [
    (JETPACK5, (58, 29, 100), 4, "1.16.2"),
    (JETPACK6, (58, 76, 100), 4, "1.20.3"),
    (NO_FFMPEG, None, None, "1.20.3"),
    (PIP5, (62, 12, 101), 8, None),
    (PIP455, (58, 76, 100), 4, None),
])
def test_build_information_gives_ffmpeg_and_gstreamer(name, avformat, ffmpeg_major, gstreamer):
    vio = video_io(name)
    assert vio.avformat == avformat and vio.ffmpeg_major == ffmpeg_major and vio.ffmpeg == (avformat is not None)
    assert vio.gstreamer == (gstreamer is not None) and vio.gstreamer_version == (gstreamer or "")


def test_this_machines_opencv_is_read_like_its_recording():
    """The fixture recorded from this venv's wheel says what the live call says (the fixture is not stale)."""
    live = dec.parse_video_io(cv2.getBuildInformation())
    if cv2.__version__ != "5.0.0":
        pytest.skip(f"the recording is of OpenCV 5.0.0; this is {cv2.__version__}")
    assert live == video_io(PIP5)


@pytest.mark.parametrize("name, option", [
    (JETPACK5, "stimeout;5000000"), (JETPACK6, "stimeout;5000000"), (PIP455, "stimeout;5000000"),
    (PIP5, "timeout;5000000"), (NO_FFMPEG, None),
])
def test_rtsp_timeout_option_follows_the_ffmpeg_version(name, option):
    """FFmpeg 4 (JetPack) reads `timeout` as "listen for connections": there the socket timeout is
    `stimeout`. Where the version is unknown no socket option is given (OpenCV's own timeouts still hold)."""
    vio = video_io(name)
    opts = dec.rtsp_ffmpeg_options(vio.avformat[0] if vio.avformat else None, "tcp", 5.0, 200).split("|")
    assert opts[0] == "rtsp_transport;tcp" and opts[-1] == "max_delay;200000"
    assert opts[1:-1] == ([option] if option else [])


# ---- which decoder path -----------------------------------------------------------------------------------

def plan(name: str, kind: str = "rtsp", requested: str = "auto", elements=ON_JETSON, **file):
    hardware = dec.hardware_pipeline_available(video_io(name), lambda: elements)
    return dec.plan_decoders("SRC", kind, requested, hardware, **file)


@pytest.mark.parametrize("name", [JETPACK5, JETPACK6])
def test_jetson_rtsp_tries_hardware_h264_then_h265_then_ffmpeg(name):
    p = plan(name)
    assert p.attempts == [("gstreamer", "h264"), ("gstreamer", "h265"), ("ffmpeg", None)]
    openers = dec.rtsp_openers("rtsp://cam/1", p, video_io(name), "tcp", 200, 5.0)
    assert [o.decoder for o in openers] == ["gstreamer+nvv4l2decoder/h264", "gstreamer+nvv4l2decoder/h265", "ffmpeg"]
    assert [o.backend for o in openers] == [cv2.CAP_GSTREAMER, cv2.CAP_GSTREAMER, cv2.CAP_FFMPEG]
    assert "stimeout;5000000" in openers[2].ffmpeg_options
    assert openers[2].params == [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]


def test_forcing_either_path():
    assert plan(JETPACK6, requested="ffmpeg").attempts == [("ffmpeg", None)]
    assert plan(JETPACK6, requested="gstreamer").attempts == [("gstreamer", "h264"), ("gstreamer", "h265")]
    with pytest.raises(EdgekitError, match="SRC: decoder 'gstreamer'.*built without GStreamer"):
        plan(PIP5, requested="gstreamer")
    os.environ[dec.DECODER_ENV] = "FFmpeg"
    try:
        assert dec.requested_decoder() == "ffmpeg" and dec.requested_decoder("gstreamer") == "gstreamer"
        os.environ[dec.DECODER_ENV] = "nvdec"
        with pytest.raises(EdgekitError, match="EDGEKIT_VIDEO_DECODER='nvdec': expected one of auto, gstreamer"):
            dec.requested_decoder()
    finally:
        del os.environ[dec.DECODER_ENV]


@pytest.mark.parametrize("name, elements, reason", [
    (PIP5, ON_JETSON, "this OpenCV was built without GStreamer"),
    (JETPACK6, (False, "GStreamer has no nvv4l2decoder (not a Jetson)"), "no nvv4l2decoder"),
])
def test_ffmpeg_where_there_is_no_hardware_pipeline(name, elements, reason):
    p = plan(name, elements=elements)
    assert p.attempts == [("ffmpeg", None)] and reason in p.reason


@pytest.mark.parametrize("codec, demuxer, attempts, reason", [
    ("h265", "matroskademux", [("gstreamer", "h265"), ("ffmpeg", None)], ""),
    ("h264", "qtdemux", [("gstreamer", "h264"), ("ffmpeg", None)], ""),
    (None, "qtdemux", [("ffmpeg", None)], "codec is not H.264/H.265"),  # e.g. mp4v, MJPG
    ("h264", None, [("ffmpeg", None)], "container is not"),  # e.g. H.264 in AVI
])
def test_jetson_file_paths(codec, demuxer, attempts, reason):
    p = plan(JETPACK5, "file", codec=codec, demuxer=demuxer)
    assert p.attempts == attempts and reason in p.reason
    if attempts[0][0] == "ffmpeg":
        with pytest.raises(EdgekitError, match=reason):
            plan(JETPACK5, "file", "gstreamer", codec=codec, demuxer=demuxer)


@pytest.mark.parametrize("fourcc, codec", [
    # What CAP_PROP_FOURCC gave for real files here: OpenCV 4.5.5 (FFmpeg 4.4) reports the container's tag,
    # OpenCV 5.0 (FFmpeg 8) the codec; in MPEG-TS OpenCV 4.5.5 gives a registration tag, so FFmpeg decodes.
    ("avc1", "h264"), ("hvc1", "h265"), ("h264", "h264"), ("hevc", "h265"), ("HDMV", None), ("mp4v", None),
    ("FMP4", None), ("MJPG", None),
])
def test_codec_from_fourcc(fourcc, codec):
    assert dec.codec_from_fourcc(cv2.VideoWriter_fourcc(*fourcc)) == codec
    assert dec.codec_from_fourcc(-1) is None and dec.codec_from_fourcc(0) is None  # what a failed get gives


@pytest.mark.parametrize("version, says", [
    ("4.5.4", "OpenCV 4.5.4 has no read timeout for GStreamer"),  # JetPack 5
    ("4.8.0", "noticed after OpenCV's 30 s read timeout"),  # JetPack 6 (timeouts came with OpenCV 4.7)
    ("4.10.0-dev", "noticed after OpenCV's 30 s read timeout"),
])
def test_report_says_how_a_stalled_stream_ends_on_the_gstreamer_path(version, says):
    assert says in dec.gstreamer_stall_note(version, 5.0)


# ---- pipeline strings ---------------------------------------------------------------------------------------

def test_jetson_rtsp_pipeline_decodes_in_hardware():
    p = dec.rtsp_pipeline("rtsp://10.0.0.7/stream1", "h265", "tcp", 200, 5.0)
    assert p.startswith('rtspsrc location="rtsp://10.0.0.7/stream1" latency=200 protocols=tcp tcp-timeout=5000000 '
                        "! rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! "
                        "videoconvert ! video/x-raw,format=BGR ! appsink")
    assert "! rtph264depay ! h264parse !" in dec.rtsp_pipeline("rtsp://h/", "h264")


def test_csi_pipeline_asks_for_the_sensor_mode_and_scales_in_nvvidconv():
    req = dec.parse_csi_uri("csi://1?mode=4&size=1280x720&fps=60")
    assert req == dec.CsiRequest(1, 4, (1280, 720), 60)
    assert dec.csi_pipeline(req) == (
        "nvarguscamerasrc sensor-id=1 sensor-mode=4 ! video/x-raw(memory:NVMM),format=NV12,framerate=60/1 ! "
        "nvvidconv ! video/x-raw,width=1280,height=720,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        f"{dec.APPSINK}")
    plain = dec.csi_pipeline(dec.parse_csi_uri("csi://0"))  # sensor's default mode and size
    assert plain.startswith("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),format=NV12 ! nvvidconv ! "
                            "video/x-raw,format=BGRx ! ")


@pytest.mark.parametrize("uri, message", [
    ("csi://0?size=big", "bad CSI camera parameters"), ("csi://0?size=0x480", "bad CSI camera parameters"),
    ("csi://0?mode=-1", "bad CSI camera parameters"), ("csi://cam", "bad sensor id"),
    ("csi://0?res=640x480", "unknown parameter 'res'"),
])
def test_bad_csi_uris(uri, message):
    with pytest.raises(EdgekitError, match=message):
        dec.parse_csi_uri(uri)


# ---- the pipelines, run through real GStreamer --------------------------------------------------------------

GST = "/usr/bin/python3"
NEEDED = ("rtspsrc", "rtph264depay", "rtph265depay", "h264parse", "h265parse", "qtdemux", "matroskademux",
          "decodebin", "avdec_h264", "avdec_h265", "x264enc", "x265enc", "mp4mux", "matroskamux", "rtph265pay")
GST_HEAD = ("import json, sys, time, gi\ngi.require_version('Gst', '1.0')\nfrom gi.repository import Gst\n"
            "Gst.init(None)\n")
# Opens a pipeline the way OpenCV's GStreamer backend does (PLAYING, then wait for the state change: OpenCV
# gives up where it fails) and pulls frames from its appsink, slowly (PAUSE s each) so that a pipeline that
# drops frames shows it. Prints the state change, frames pulled, their caps, the first error and the time.
PULL = GST_HEAD + """
pipeline, want, limit, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
t0, out = time.monotonic(), {"frames": 0, "error": None}
p = Gst.parse_launch(pipeline)
it, sink = p.iterate_sinks(), None
while True:
    res, el = it.next()
    if res != Gst.IteratorResult.OK:
        break
    sink = el if el.get_factory().get_name() == "appsink" else sink
state = p.set_state(Gst.State.PLAYING)
if state == Gst.StateChangeReturn.ASYNC:
    state = p.get_state(int(limit * Gst.SECOND))[0]
out["state"] = state.value_nick
while state != Gst.StateChangeReturn.FAILURE and out["frames"] < want and time.monotonic() < t0 + limit:
    sample = sink.emit("try-pull-sample", Gst.SECOND // 2)
    msg = p.get_bus().pop_filtered(Gst.MessageType.ERROR)
    if msg is not None:
        out["error"] = msg.parse_error()[0].message
        break
    if sample is None:
        if sink.get_property("eos"):
            break
        continue
    s = sample.get_caps().get_structure(0)
    out.update(frames=out["frames"] + 1, format=s.get_string("format"), size=[s.get_value("width"),
               s.get_value("height")])
    time.sleep(pause)
p.set_state(Gst.State.NULL)
out["seconds"] = time.monotonic() - t0
print(json.dumps(out))
"""
MAKE = GST_HEAD + """
location, enc, parse, mux = sys.argv[1:5]
p = Gst.parse_launch("videotestsrc num-buffers=30 pattern=ball ! video/x-raw,width=160,height=120,framerate=10/1 ! "
                     f"{enc} key-int-max=10 ! {parse} ! {mux} ! filesink location={location}")
p.set_state(Gst.State.PLAYING)
msg = p.get_bus().timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
p.set_state(Gst.State.NULL)
sys.exit(0 if msg is not None and msg.type == Gst.MessageType.EOS else 1)
"""
SERVE = GST_HEAD + """
gi.require_version('GstRtspServer', '1.0')
from gi.repository import GLib, GstRtspServer
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(sys.argv[1])
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch("( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
                   "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph265pay name=pay0 pt=96 )")
factory.set_shared(True)
server.get_mount_points().add_factory("/live", factory)
server.attach(None)
print("ready", flush=True)
GLib.MainLoop().run()
"""


def _gstreamer_missing() -> str:
    if not os.path.exists(GST):
        return "no system Python"
    code = GST_HEAD + ("gi.require_version('GstRtspServer', '1.0')\n"
                       f"print(' '.join(e for e in {NEEDED!r} if Gst.ElementFactory.find(e) is None))")
    r = subprocess.run([GST, "-c", code], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "python3-gi / GStreamer's RTSP server"


MISSING = _gstreamer_missing()
needs_gstreamer = pytest.mark.skipif(bool(MISSING), reason=f"GStreamer parts missing: {MISSING} (Debian: gstreamer1.0-"
                                     "plugins-good/-bad/-ugly, gstreamer1.0-libav, gir1.2-gst-rtsp-server-1.0)")


def pull(pipeline: str, frames: int = 1000, limit: float = 15.0, pause: float = 0.0) -> dict:
    r = subprocess.run([GST, "-c", PULL, pipeline, str(frames), str(limit), str(pause)], capture_output=True,
                       text=True, timeout=limit + 30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def rtsp_h264():
    server = RtspServer(free_port())  # the project's H.264 test server (tests/rtsp_server.py)
    server.start()
    yield f"rtsp://127.0.0.1:{server.port}/live"
    server.stop()


@pytest.fixture(scope="module")
def rtsp_h265():
    port = free_port()
    proc = subprocess.Popen([GST, "-c", SERVE, str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield f"rtsp://127.0.0.1:{port}/live"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Real H.264/H.265 files (30 frames of 160x120), in a folder whose name has a space and a quote."""
    root = tmp_path_factory.mktemp("videos") / 'clips "1" here'
    root.mkdir()
    made = {}
    for codec, container, mux in (("h264", "mp4", "mp4mux"), ("h265", "mkv", "matroskamux")):
        path = root / f"{codec}.{container}"
        enc = {"h264": "x264enc", "h265": "x265enc"}[codec]
        subprocess.run([GST, "-c", MAKE, dec.gst_quote(str(path)), enc, f"{codec}parse", mux], check=True)
        made[codec] = path
    return made


@needs_gstreamer
def test_rtsp_pipeline_plays_a_real_h264_stream(rtsp_h264):
    got = pull(dec.rtsp_pipeline(rtsp_h264, "h264", timeout_s=3.0, decode=SOFTWARE_DECODE), frames=20)
    assert got["state"] == "success" and got["error"] is None and got["frames"] == 20
    assert got["format"] == "BGR" and got["size"] == [320, 240]


@needs_gstreamer
def test_rtsp_pipeline_of_the_other_codec_fails_fast_so_the_next_is_tried(rtsp_h265):
    """A Jetson tries H.264 first: on an H.265 camera that pipeline must fail where OpenCV's open waits (the
    state change), at once, so that the H.265 one is tried next."""
    wrong = pull(dec.rtsp_pipeline(rtsp_h265, "h264", timeout_s=3.0, decode=SOFTWARE_DECODE), limit=10)
    assert wrong["state"] == "failure" and wrong["frames"] == 0 and wrong["seconds"] < 5
    right = pull(dec.rtsp_pipeline(rtsp_h265, "h265", timeout_s=3.0, decode=SOFTWARE_DECODE), frames=10)
    assert right["state"] == "success" and right["error"] is None and right["frames"] == 10
    assert right["size"] == [320, 240]


@needs_gstreamer
@pytest.mark.parametrize("codec, demuxer", [("h264", "qtdemux"), ("h265", "matroskademux")])
def test_file_pipeline_delivers_every_frame_to_a_slow_reader(videos, codec, demuxer):
    path = videos[codec]
    with open(path, "rb") as f:
        assert dec.demuxer_for(f.read(512)) == demuxer
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert dec.codec_from_fourcc(int(cap.get(cv2.CAP_PROP_FOURCC))) == codec
    cap.release()
    got = pull(dec.file_pipeline(str(path), demuxer, codec, decode=SOFTWARE_DECODE), pause=0.02)
    assert got["error"] is None and got["frames"] == 30 and got["size"] == [160, 120]


# ---- RTSP through JetPack's FFmpeg 4.x ----------------------------------------------------------------------

FFMPEG4_WHEELS = ("opencv-python-headless==4.5.5.64", "numpy==1.26.4")  # FFmpeg 4.4, libavformat 58.76.100


def ffmpeg4_opencv() -> Path:
    """A folder holding OpenCV 4.5.5 with its bundled FFmpeg 4.4 and a NumPy 1.x to go with it, unpacked from
    the wheels (downloaded once into the test cache; skipped where the registry cannot be reached)."""
    target = MODEL_CACHE / "opencv-4.5.5-ffmpeg-4.4"
    if (target / "cv2").is_dir() and (target / "numpy").is_dir():
        return target
    with cache_lock():  # parallel workers: one downloads and unpacks, the others wait and find it
        if (target / "cv2").is_dir() and (target / "numpy").is_dir():
            return target
        wheels = MODEL_CACHE / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                            str(wheels), *FFMPEG4_WHEELS], capture_output=True, text=True, timeout=900)
        found = [next(iter(sorted(wheels.glob(f"{w.split('==')[0].replace('-', '_')}-{w.split('==')[1]}-*.whl"))),
                      None) for w in FFMPEG4_WHEELS]
        if r.returncode != 0 or None in found:
            why = (r.stderr.strip().splitlines() or ["?"])[-1]
            pytest.skip(f"{', '.join(FFMPEG4_WHEELS)} could not be downloaded: {why}")
        part = target.with_suffix(".part")
        for whl in found:
            with zipfile.ZipFile(whl) as z:
                z.extractall(part)
        part.rename(target)
    return target


FFMPEG4_RUN = """
import sys, time, cv2, os
from edgekit.runtime.stream.sources import open_source
url = sys.argv[1]
src = open_source(url, timeout_s=3.0, reconnect=0)
frame = next(src.frames()).frame
src.close()
print(cv2.__version__, src.info.decoder, frame.shape, *src.info.notes, sep="\\n")
# What edgekit did before: FFmpeg's `timeout`, which FFmpeg 4 reads as "listen".
os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp|timeout;3000000"
print("with timeout:", cv2.VideoCapture(url, cv2.CAP_FFMPEG).isOpened())
"""


@needs_rtsp_server
def test_rtsp_opens_through_jetpacks_ffmpeg_4(rtsp_h264):
    """edgekit on an OpenCV whose FFmpeg is 4.4 (JetPack 6's): the stream opens, with `stimeout`."""
    folder = ffmpeg4_opencv()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(ROOT)]), OPENCV_LOG_LEVEL="SILENT")
    r = subprocess.run([sys.executable, "-c", FFMPEG4_RUN, rtsp_h264], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:3] == ["4.5.5", "ffmpeg", "(240, 320, 3)"], out
    assert "FFmpeg: FFmpeg 4 (libavformat 58.76.100), options rtsp_transport;tcp|stimeout;3000000|" \
           "max_delay;200000" in out
    assert out[-1] == "with timeout: False"  # the defect: every RTSP open failed on JetPack's FFmpeg
