"""run-stream end to end on CPU: real videos, the synthetic live source, a real RTSP server."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
from conftest import ASSERT_NO_BUILD_SIDE, ROOT, assert_one_line_error, run_cli

from edgekit.errors import EdgekitError
from edgekit.runtime.stream import decoders
from edgekit.runtime.stream.runner import StreamOptions, run_stream
from edgekit.runtime.stream.sources import open_source

REPORT_KEYS = {"schema", "source", "frames", "stop_reason", "error", "wall_seconds", "throughput_fps",
               "end_to_end_ms", "stages_ms", "queue_wait_ms", "device_ms", "engine", "accuracy", "outputs",
               "environment"}


@pytest.fixture(scope="module")
def engines(shipped_int8_engines):
    return shipped_int8_engines


def assert_source_failed(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """One line on stderr, no traceback, exit status 3 (edgekit.errors.SourceFailed: the source failed)."""
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    assert_one_line_error(subprocess.CompletedProcess(result.args, 1, result.stdout, result.stderr), *fragments)


def frames_in(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def test_file_source_processes_every_frame(engines, tiny_synth, tmp_path):
    video = tiny_synth / "videos" / "stream_00.mp4"
    out = tmp_path / "run"
    r = run_cli("run-stream", str(engines["detection"]), str(video), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= REPORT_KEYS
    assert report["schema"] == "edgekit.stream-report/1"
    n = frames_in(video)
    assert report["frames"] == {"in": n, "processed": n, "dropped": 0, "accounted": True}
    assert report["stop_reason"] == "end of stream"
    for stage in ("capture", "preprocess", "infer", "postprocess", "sink"):
        s = report["stages_ms"][stage]
        assert s["count"] == n and 0 <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert report["end_to_end_ms"]["p50"] >= report["stages_ms"]["infer"]["p50"]
    assert frames_in(out / "annotated.mp4") == n
    rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert [row["frame"] for row in rows] == list(range(n))
    assert (out / "report.md").read_text().startswith("# Stream report")
    assert (out / "latency_cdf.png").is_file() and (out / "stages.png").is_file()


def test_detector_against_synthetic_ground_truth(engines, tmp_path):
    rep = run_stream(engines["detection"], "synthetic://?fps=15&seed=3", StreamOptions(
        out=str(tmp_path), max_frames=45, save_video=False, progress=False))
    f = rep["frames"]
    assert f["accounted"] and f["in"] == 45
    acc = rep["accuracy"]
    assert acc["precision"] >= 0.75 and acc["recall"] >= 0.6, acc


def test_segmenter_against_synthetic_ground_truth(engines, tmp_path):
    rep = run_stream(engines["segmentation"], "synthetic://?fps=15&seed=3", StreamOptions(
        out=str(tmp_path), max_frames=30, save_video=False, progress=False))
    assert rep["frames"]["accounted"]
    assert rep["accuracy"]["mIoU"] >= 0.6, rep["accuracy"]


def test_live_source_drops_oldest_and_counts_it(engines, tmp_path):
    # A source far faster than the pipeline: frames must be dropped, and every one counted.
    rep = run_stream(engines["segmentation"], "synthetic://?fps=1000", StreamOptions(
        out=str(tmp_path), duration=2.0, queue_size=1, progress=False))
    f = rep["frames"]
    assert f["dropped"] > 0 and f["in"] == f["processed"] + f["dropped"]


def start_endless_stream(engine, out, *extra):
    # A shell that started us in the background may have set SIGINT to "ignore", which a child
    # inherits; a user's terminal delivers Ctrl-C, so restore the default for the child.
    return subprocess.Popen([sys.executable, "-m", "edgekit", "run-stream", str(engine), "synthetic://?fps=20",
                             "--out", str(out), "-q", *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_and_wait(proc, sig):
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # never leave an endless stream running behind a failed test
            proc.kill()
            proc.communicate()


def test_ctrl_c_mid_run_still_writes_the_report(engines, tmp_path):
    out = tmp_path / "run"
    proc = start_endless_stream(engines["detection"], out)
    deadline = time.time() + 60

    def results():  # the run writes into a fresh hidden folder that becomes `out` when it ends
        return [p for p in tmp_path.glob(".run.*.tmp/results.jsonl") if p.stat().st_size > 0]

    while not results():
        if time.time() > deadline or proc.poll() is not None:
            stop_and_wait(proc, signal.SIGKILL)
            pytest.fail("run-stream produced no results")
        time.sleep(0.2)
    time.sleep(1.0)
    _, stderr = stop_and_wait(proc, signal.SIGINT)
    assert proc.returncode == 130, stderr  # 128 + SIGINT: interrupted, after the report
    report = json.loads((out / "report.json").read_text())
    assert report["stop_reason"] == "interrupted (Ctrl-C)"
    assert report["frames"]["accounted"] and report["frames"]["processed"] > 0
    assert "Traceback" not in stderr


def test_sigterm_ends_the_run_cleanly(engines, tmp_path):
    out = tmp_path / "run"
    proc = start_endless_stream(engines["detection"], out, "--no-video")
    time.sleep(4)
    _, stderr = stop_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == 143, stderr  # 128 + SIGTERM: terminated, after the report
    assert json.loads((out / "report.json").read_text())["stop_reason"] == "terminated (SIGTERM)"


def test_run_stream_never_imports_torch(engines, tiny_synth, tmp_path):
    """With torch installed (not blocked), so that an import of it anywhere, optional ones too, shows."""
    code = ("import sys\n"
            "from edgekit.cli import main\n"
            f"assert main(['run-stream', {str(engines['detection'])!r}, "
            f"{str(tiny_synth / 'videos' / 'stream_00.mp4')!r}, '--out', {str(tmp_path)!r}, '-q']) == 0\n"
            + ASSERT_NO_BUILD_SIDE)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "source not found"),
    (lambda p: (p.write_bytes(b""), p)[1], "empty file, not a video"),
    (lambda p: (cv2.imwrite(str(p.with_suffix(".png")), cv2.UMat(8, 8, cv2.CV_8UC3).get()),
                p.with_suffix(".png").rename(p), p)[2], "this is a PNG image, not a video"),
    (lambda p: (p.write_bytes(b"\x00\x01 not a container" * 100), p)[1], "cannot open video"),
])
def test_bad_videos(engines, tmp_path, make, message):
    video = make(tmp_path / "v.mp4")
    r = run_cli("run-stream", str(engines["detection"]), str(video), "--out", str(tmp_path / "o"), "-q")
    assert_one_line_error(r, message)


def test_truncated_recording_processes_what_decodes(engines, tmp_path):
    """A recording cut short whose frames decode without its index (MJPG in AVI): every decodable frame is
    processed and counted, none invented, and the run fails (exit 3) saying the file ended early."""
    import numpy as np

    full, cut = tmp_path / "full.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for i in range(30):
        writer.write(np.full((120, 160, 3), 8 * i, np.uint8))
    writer.release()
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    decodable = frames_in(cut)
    assert 0 < decodable < 30
    r = run_cli("run-stream", str(engines["detection"]), str(cut), "--out", str(tmp_path / "o"), "-q")
    assert_source_failed(r, f"cut.avi: the file ended early: {decodable} of the 30 frames")
    f = json.loads((tmp_path / "o" / "report.json").read_text())["frames"]
    assert f["in"] == f["processed"] == decodable and f["dropped"] == 0


def test_truncated_mp4_is_one_line(engines, tiny_synth, tmp_path):
    """An MP4 cut before its index (the moov box OpenCV writes last) cannot be opened: one line, no report."""
    src = tiny_synth / "videos" / "stream_00.mp4"
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: int(src.stat().st_size * 0.6)])
    r = run_cli("run-stream", str(engines["detection"]), str(cut), "--out", str(tmp_path / "o"), "-q")
    assert_one_line_error(r, "cut.mp4")


def test_engine_of_the_other_task(engines, tiny_synth, tmp_path):
    r = run_cli("run-stream", str(engines["segmentation"]), str(tiny_synth / "videos" / "stream_00.mp4"),
                "--task", "detection", "--out", str(tmp_path / "o"), "-q")
    assert_one_line_error(r, "is a segmentation model", "not detection")


def test_unwritable_output_folder(engines, tiny_synth, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_cli("run-stream", str(engines["detection"]), str(tiny_synth / "videos" / "stream_00.mp4"),
                "--out", str(blocker / "o"), "-q")
    assert_one_line_error(r, "cannot use as output folder (Not a directory)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rtsp_url_that_refuses_connection(engines, tmp_path):
    r = run_cli("run-stream", str(engines["detection"]), f"rtsp://127.0.0.1:{free_port()}/live",
                "--out", str(tmp_path / "o"), "-q", "--timeout", "2")
    assert_source_failed(r, "RTSP stream refused or unreachable")


@pytest.mark.parametrize("size", ["0", "-3"])
def test_queue_size_below_one_is_a_usage_error(engines, tmp_path, size):
    """An unbounded queue (Queue(0)) let a live source's frames pile up in memory: refused before anything runs."""
    r = run_cli("run-stream", str(engines["detection"]), "synthetic://", "--queue-size", size,
                "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--queue-size: expected a whole number of at least 1" in r.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(EdgekitError, match="at least 1 frame"):
        run_stream(engines["detection"], "synthetic://", StreamOptions(out=str(tmp_path / "api"), queue_size=0))
    assert not (tmp_path / "api").exists()


def test_rtsp_credentials_never_show(engines, tmp_path):
    """A password in the URL (rtsp://user:password@host) appears in no message, report or output file."""
    r = run_cli("run-stream", str(engines["detection"]), f"rtsp://alice:S3cretPW@127.0.0.1:{free_port()}/live?token=T0k3n",
                "--out", str(tmp_path / "o"), "-q", "--timeout", "2", "--debug")
    assert r.returncode == 1
    assert "rtsp://***@127.0.0.1" in r.stderr and "token=***" in r.stderr
    assert "S3cretPW" not in r.stdout + r.stderr and "T0k3n" not in r.stdout + r.stderr


def _rtsp_server_available() -> bool:
    r = subprocess.run(["/usr/bin/python3", "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                        "from gi.repository import GstRtspServer"], capture_output=True)
    return r.returncode == 0


needs_rtsp_server = pytest.mark.skipif(not os.path.exists("/usr/bin/python3") or not _rtsp_server_available(),
                                       reason="GStreamer's RTSP server is not installed (.ci/run installs it)")


class RtspServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["/usr/bin/python3", str(ROOT / "tests" / "rtsp_server.py"), str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


@needs_rtsp_server
def test_rtsp_stream_survives_a_server_restart(engines, tmp_path):
    server = RtspServer(free_port())
    server.start()
    result = {}
    opts = StreamOptions(out=str(tmp_path), duration=14.0, timeout=2.0, reconnect=5, save_video=False, progress=False)
    t = threading.Thread(target=lambda: result.update(run_stream(
        engines["detection"], f"rtsp://127.0.0.1:{server.port}/live", opts)))
    try:
        t.start()
        time.sleep(5)
        server.stop()
        time.sleep(1)
        server.start()
        t.join(timeout=60)
    finally:
        server.stop()
    assert not t.is_alive()
    f = result["frames"]
    assert result["source"]["reconnects"] >= 1, result
    assert f["accounted"] and f["processed"] > 60
    rows = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == f["processed"]


@needs_rtsp_server
def test_rtsp_opens_through_ffmpeg_with_the_timeout_option_this_ffmpeg_knows():
    """This OpenCV (a pip wheel: FFmpeg 5 or later, no GStreamer) opens RTSP with FFmpeg and gives the socket
    timeout as `timeout`; JetPack's FFmpeg 4 gets `stimeout` (tests/test_sources_jetson.py)."""
    vio = decoders.parse_video_io(cv2.getBuildInformation())
    if vio.gstreamer or not vio.ffmpeg_major or vio.ffmpeg_major < 5:
        pytest.skip(f"written for OpenCV wheels (FFmpeg >= 5, no GStreamer); this one: {vio}")
    server = RtspServer(free_port())
    server.start()
    try:
        src = open_source(f"rtsp://127.0.0.1:{server.port}/live", timeout_s=3.0, reconnect=0)
        frame = next(src.frames()).frame
        src.close()
    finally:
        server.stop()
    assert frame.shape == (240, 320, 3)
    assert src.info.decoder == "ffmpeg"
    assert src.info.notes[0] == "decoder plan: ffmpeg (this OpenCV was built without GStreamer)"
    assert src.info.notes[1] == (f"FFmpeg: {vio.describe_ffmpeg()}, options rtsp_transport;tcp|timeout;3000000|"
                                 "max_delay;200000")


def test_rtsp_server_that_never_answers_is_left_after_the_ffmpeg_socket_timeout():
    """The option edgekit picked is the one this FFmpeg honours: with OpenCV's own open timeout moved out of
    the way (30 s), a server that accepts the connection and never answers is given up after the 1.5 s
    socket timeout. (FFmpeg 5+ ignores `stimeout`; FFmpeg 4 reads `timeout` as "listen".)"""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # the kernel completes the handshake; nobody ever reads or answers
        url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/live"
        plan = decoders.plan_decoders(url, "rtsp", "ffmpeg", (False, ""))
        opener = decoders.rtsp_openers(url, plan, decoders.opencv_video_io(), "tcp", 200, timeout_s=1.5)[0]
        t0 = time.monotonic()
        assert dataclasses.replace(opener, params=decoders.timeout_params(30.0)).open() is None
        assert time.monotonic() - t0 < 6, opener.ffmpeg_options


def test_absent_camera(engines, tmp_path):
    r = run_cli("run-stream", str(engines["detection"]), "/dev/video97", "--out", str(tmp_path / "o"), "-q")
    assert_source_failed(r, "/dev/video97: cannot open (camera absent or busy)")


def test_disk_full_mid_run_keeps_the_report_and_the_count(engines, tmp_path):
    """A file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as a full disk fails with ENOSPC) cuts
    results.jsonl mid-run: one line, the report written and every frame counted."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # Python ignores SIGXFSZ: writes fail

    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-m", "edgekit", "run-stream", str(engines["detection"]),
                        "synthetic://?fps=200", "--max-frames", "4000", "--out", str(out), "-q", "--no-video"],
                       cwd=ROOT, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert_one_line_error(r, "file size limit reached", "report of the")
    report = json.loads((out / "report.json").read_text())
    f = report["frames"]
    assert f["accounted"] and f["processed"] > 0 and report["error"]
    assert f["processed"] < 4000


@pytest.mark.parametrize("value, message", [
    ("gstreamer", "decoder 'gstreamer' (Jetson hardware decoding) was asked for, but this OpenCV was built without "
                  "GStreamer"),
    ("nvdec", "EDGEKIT_VIDEO_DECODER='nvdec': expected one of auto, gstreamer, ffmpeg"),
])
def test_decoder_asked_for_that_cannot_be_had(engines, tiny_synth, tmp_path, monkeypatch, value, message):
    if value == "gstreamer" and decoders.opencv_video_io().gstreamer:
        pytest.skip("this OpenCV has GStreamer")
    monkeypatch.setenv("EDGEKIT_VIDEO_DECODER", value)
    video = tiny_synth / "videos" / "stream_00.mp4"
    r = run_cli("run-stream", str(engines["detection"]), str(video), "--out", str(tmp_path / "o"), "-q")
    assert_one_line_error(r, message)


def test_video_file_reports_its_decoder(tiny_synth):
    src = open_source(str(tiny_synth / "videos" / "stream_00.mp4"), decoder="ffmpeg")
    assert src.info.decoder == "ffmpeg" and src.info.notes[0].endswith("(FFmpeg was asked for)")
    src.close()


@pytest.mark.parametrize("uri, message", [
    ("csi://0?size=big", "csi://0?size=big: bad CSI camera parameters; expected csi://N?mode=M&size=WxH&fps=F"),
    ("csi://0?exposure=3", "unknown parameter 'exposure'"),
])
def test_bad_csi_camera_uri(engines, tmp_path, uri, message):
    r = run_cli("run-stream", str(engines["detection"]), uri, "--out", str(tmp_path / "o"), "-q")
    assert_one_line_error(r, message)


@needs_rtsp_server
def test_rtsp_credentials_are_redacted_in_every_output(engines, tmp_path):
    server = RtspServer(free_port())
    server.start()
    try:
        r = run_cli("run-stream", str(engines["detection"]), f"rtsp://alice:S3cretPW@127.0.0.1:{server.port}/live",
                    "--out", str(tmp_path / "o"), "--max-frames", "5", "--timeout", "5")
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    assert f"rtsp://***@127.0.0.1:{server.port}/live" in r.stdout
    assert "S3cretPW" not in r.stdout + r.stderr
    written = [f for f in (tmp_path / "o").rglob("*") if f.is_file()]
    assert written and not [f.name for f in written if b"S3cretPW" in f.read_bytes()]
