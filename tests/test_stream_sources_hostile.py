"""run-stream on sources that go wrong (issue 15 items 8, 9, 12): undecodable images in a folder, broken ground
truth beside a video, a truncated recording, an RTSP server that dies mid-run, a camera that is not there, a run
ended by Ctrl-C or SIGTERM. Real files written with OpenCV, a real RTSP server, a real ONNX Runtime engine."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error, run_cli
from test_stream import RtspServer, assert_source_failed, frames_in, free_port, needs_rtsp_server

from edgekit.errors import EXIT_CODES, SourceFailed
from edgekit.runtime.stream.sources import ImageFolderSource, open_source


def stderr_lines(r: subprocess.CompletedProcess) -> list:
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def write_avi(path: Path, frames: int, fps: float = 10) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (160, 120))
    rng = np.random.default_rng(0)
    for _ in range(frames):  # noisy frames: JPEGs of some size, so that a cut lands inside the stream
        writer.write(rng.integers(0, 255, (120, 160, 3), np.uint8))
    writer.release()
    return path


def cut(src: Path, dst: Path, fraction: float) -> Path:
    dst.write_bytes(src.read_bytes()[: int(src.stat().st_size * fraction)])
    return dst


# --- 8a, 8b: image folders -------------------------------------------------------------------------------

@pytest.fixture
def folder_with_bad_images(tmp_path) -> Path:
    """Five images: three good PNG/JPEG, a .jpg holding garbage, and a JPEG cut in half (as a camera dump that
    was interrupted)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "c.jpg", "e.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (48, 64, 3), np.uint8))
    (folder / "b.jpg").write_bytes(b"this is no image " * 50)
    ok, jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (48, 64, 3), np.uint8))
    (folder / "d.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    return folder


def test_undecodable_images_are_skipped_named_and_reported(det_engine, folder_with_bad_images, tmp_path):
    out = tmp_path / "o"
    r = run_cli("run-stream", str(det_engine), str(folder_with_bad_images), "--out", str(out), "-q", "--no-video")
    assert r.returncode == 0, r.stderr
    # One warning per skipped file, nothing else: no libjpeg "Premature end of JPEG file", no traceback.
    assert stderr_lines(r) == [f"edgekit: warning: {folder_with_bad_images / 'b.jpg'}: cannot decode image; skipped",
                               f"edgekit: warning: {folder_with_bad_images / 'd.jpg'}: cannot decode image; skipped"]
    report = report_of(out)
    assert report["frames"] == {"in": 3, "processed": 3, "dropped": 0, "accounted": True}
    assert "skipped inputs: 2: b.jpg (cannot decode image), d.jpg (cannot decode image)" in report["source"]["notes"]
    if "skipped_inputs" in report["source"]:  # the report's own list, where report.py carries it
        assert report["source"]["skipped_inputs"] == [{"name": "b.jpg", "reason": "cannot decode image"},
                                                      {"name": "d.jpg", "reason": "cannot decode image"}]
    rows = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert [row.get("source") for row in rows] == ["a.png", "c.jpg", "e.png"]


def test_each_frame_names_its_file_and_loops_skip_a_bad_file_once(folder_with_bad_images, capsys):
    src = open_source(str(folder_with_bad_images), loop=True)
    frames = src.frames()
    names = [next(frames).name for _ in range(7)]
    frames.close()
    assert names == ["a.png", "c.jpg", "e.png"] * 2 + ["a.png"]
    assert src.skipped == [{"name": "b.jpg", "reason": "cannot decode image"},
                           {"name": "d.jpg", "reason": "cannot decode image"}]
    assert capsys.readouterr().err.count("edgekit: warning:") == 2  # warned once, not on every pass


def test_a_folder_of_many_bad_images_warns_in_a_bounded_number_of_lines(tmp_path, capsys):
    folder = tmp_path / "many"
    folder.mkdir()
    cv2.imwrite(str(folder / "000.png"), np.zeros((8, 8, 3), np.uint8))
    for i in range(1, 31):
        (folder / f"{i:03d}.jpg").write_bytes(b"")
    src = open_source(str(folder))
    assert len(list(src.frames())) == 1
    assert len(src.skipped) == 30 and src.skipped[0] == {"name": "001.jpg", "reason": "empty file"}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == ImageFolderSource.WARNINGS + 1 and "report lists every one" in lines[-1]


def test_a_folder_where_no_image_decodes_is_one_line(det_engine, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"garbage")
    (folder / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    r = run_cli("run-stream", str(det_engine), str(folder), "--out", str(tmp_path / "o"), "-q")
    assert_one_line_error(r, f"{folder}: none of its 2 images can be decoded",
                          "x.jpg: cannot decode image; y.png: cannot decode image")
    assert not (tmp_path / "o").exists()


# --- 8c: ground truth beside a video ---------------------------------------------------------------------

@pytest.fixture
def synth_video(tiny_synth, tmp_path) -> Path:
    """A copy of a video from `edgekit data synth` with its ground truth (6 frames, NAME.gt.jsonl, NAME.masks.npz)."""
    for f in (tiny_synth / "videos").glob("stream_00.*"):
        shutil.copy(f, tmp_path / f.name.replace("stream_00", "v"))
    return tmp_path / "v.mp4"


def test_intact_ground_truth_scores_boxes_and_masks(synth_video):
    src = open_source(str(synth_video))
    assert src.has_truth and set(src.truth_names) == {"boxes", "mask"}
    truths = [c.truth for c in src.frames()]
    assert len(truths) == 6 and all(t is not None and t["mask"].shape == (120, 160) for t in truths)


def break_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("line, problem", [
    ('{"frame": 3, "boxes": [[1, 2, 3, 4]], "classes": [0]', "not valid JSON (Expecting ',' delimiter at column"),
    ('[1, 2, 3]', 'not a ground-truth row (an object with "boxes" and "classes" lists), got [1, 2, 3]'),
    ('{"frame": 3, "boxes": "none", "classes": []}', '"boxes" and "classes" must be lists, got "none" and []'),
    ('{"frame": 3, "boxes": [[1, 2, 3]], "classes": [0]}', "a box is 4 numbers [x1, y1, x2, y2], got [1, 2, 3]"),
    ('{"frame": 3, "boxes": [[1, 2, 3, 4]], "classes": [99]}', "class 99 is not a class index"),
])
def test_broken_ground_truth_row_costs_the_accuracy_not_the_run(synth_video, capsys, line, problem):
    gt = synth_video.with_name("v.gt.jsonl")
    break_line(gt, 4, line)
    src = open_source(str(synth_video))
    warning = capsys.readouterr().err.splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"edgekit: warning: {gt} line 4: {problem}"), warning
    assert warning[0].endswith("; running without accuracy")
    assert not src.has_truth and src.truth_names == {}
    assert any(n.startswith(f"ground truth: {gt} line 4: ") for n in src.info.notes)
    assert [c.truth for c in src.frames()] == [None] * 6


def test_broken_masks_cost_only_the_mask_accuracy(synth_video, capsys):
    synth_video.with_name("v.masks.npz").write_bytes(b"PK\x03\x04 not really a zip")
    src = open_source(str(synth_video))
    err = capsys.readouterr().err
    assert err.startswith("edgekit: warning: ") and "v.masks.npz: not a valid mask file" in err
    assert err.rstrip().endswith("; running without segmentation accuracy") and err.count("\n") == 1
    assert src.has_truth and set(src.truth_names) == {"boxes"}
    assert all("mask" not in c.truth for c in src.frames())


def test_run_with_broken_ground_truth_finishes_unscored(det_engine, synth_video, tmp_path):
    gt = synth_video.with_name("v.gt.jsonl")
    break_line(gt, 6, "{not json")
    out = tmp_path / "o"
    r = run_cli("run-stream", str(det_engine), str(synth_video), "--out", str(out), "-q", "--no-video")
    assert r.returncode == 0, r.stderr
    assert stderr_lines(r) == [f"edgekit: warning: {gt} line 6: not valid JSON (Expecting property name enclosed "
                               "in double quotes at column 2); running without accuracy"]
    report = report_of(out)
    assert report["accuracy"] is None and report["frames"]["processed"] == 6


# --- 8d: a recording that ends before its header says --------------------------------------------------

def test_truncated_avi_fails_after_every_decodable_frame(det_engine, tmp_path):
    full = write_avi(tmp_path / "full.avi", 60)
    v = cut(full, tmp_path / "v.avi", 0.45)
    decodable = frames_in(v)
    assert 0 < decodable < 50
    out = tmp_path / "o"
    r = run_cli("run-stream", str(det_engine), str(v), "--out", str(out), "-q", "--no-video")
    # Exactly one line: no "[mjpeg @ 0x...]" from FFmpeg before it.
    assert_source_failed(r, f"{v}: the file ended early: {decodable} of the 60 frames its header announces were "
                            f"decoded (truncated or damaged); report of the {decodable} frames processed: {out}")
    report = report_of(out)
    assert report["frames"] == {"in": decodable, "processed": decodable, "dropped": 0, "accounted": True}
    assert "the file ended early" in report["error"]
    assert len((out / "results.jsonl").read_text().splitlines()) == decodable


@pytest.mark.parametrize("suffix, fourcc", [(".avi", "MJPG"), (".mkv", "MJPG"), (".mp4", "mp4v")])
def test_complete_files_are_never_called_truncated(tmp_path, suffix, fourcc):
    """The count the container announces must not fail a complete file (MP4 and AVI state it; for MKV OpenCV
    estimates it from the duration), nor its last frames, nor a --loop."""
    path = tmp_path / f"v{suffix}"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (64, 48))
    for i in range(40):
        writer.write(np.full((48, 64, 3), 5 * i, np.uint8))
    writer.release()
    assert len(list(open_source(str(path)).frames())) == 40
    looped = open_source(str(path), loop=True).frames()
    assert len([next(looped) for _ in range(100)]) == 100
    looped.close()


def test_truncated_mkv_ends_early_too(tmp_path):
    """MKV holds no frame count (OpenCV estimates it from the header's duration): the time of the last frame
    decoded is the second witness."""
    path = tmp_path / "v.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    rng = np.random.default_rng(2)
    for _ in range(50):
        writer.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    writer.release()
    v = cut(path, tmp_path / "cut.mkv", 0.5)
    got = []
    with pytest.raises(SourceFailed, match=r"cut.mkv: the file ended early: (\d+) of the 50 frames") as e:
        got.extend(open_source(str(v)).frames())
    assert 0 < len(got) < 48 and f": {len(got)} of the 50" in str(e.value)


# --- 9: live sources that fail, runs that are interrupted ---------------------------------------------------

def wait_for_results(tmp_path: Path, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """Until the run (written into a hidden folder beside --out) has results, or fail."""
    deadline = time.time() + timeout_s
    while not [p for p in tmp_path.rglob("results.jsonl") if p.stat().st_size > 0]:
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"run-stream produced no results: {err}")
        time.sleep(0.2)


@needs_rtsp_server
def test_rtsp_server_killed_mid_run_fails_after_its_reconnect_attempts(det_engine, tmp_path):
    server = RtspServer(free_port())
    server.start()
    out = tmp_path / "o"
    url = f"rtsp://alice:pw@127.0.0.1:{server.port}/live"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "run-stream", str(det_engine), url, "--out", str(out),
                             "-q", "--no-video", "--reconnect", "2", "--timeout", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_results(tmp_path, proc)
        server.stop()
        t_lost = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
    finally:
        server.stop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Back-off 0.5 s then 1 s: the run ends soon after, and does not wait for a --duration or forever.
    assert time.monotonic() - t_lost < 20
    assert proc.returncode == 3, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"edgekit: error: rtsp://***@127.0.0.1:{server.port}/live: stream lost; "
                               "2 reconnect attempts over "), lines[0]
    assert "s failed; report of the " in lines[0]
    report = report_of(out)
    f = report["frames"]
    assert f["processed"] > 0 and f["in"] == f["processed"] + f["dropped"]
    assert "stream lost" in report["error"] and report["source"]["reconnects"] == 0
    assert "reconnects: 0 of 2 attempts brought the source back (lost 1 time)" in report["source"]["notes"]
    if "reconnect_attempts" in report["source"]:  # the report's own field, where report.py carries it
        assert report["source"]["reconnect_attempts"] == 2


@pytest.mark.parametrize("uri, message", [
    ("/dev/video99", "/dev/video99: cannot open (camera absent or busy)"),
    ("rtsp://127.0.0.1:1/x", "rtsp://127.0.0.1:1/x: cannot open (RTSP stream refused or unreachable)"),
])
def test_a_source_that_cannot_be_opened_is_one_line_and_exit_3(det_engine, tmp_path, uri, message):
    """Exactly one line: OpenCV's "[ WARN:0@0.1] global cap.cpp ..." and FFmpeg's "[tcp @ 0x...] Connection
    refused" are silenced."""
    r = run_cli("run-stream", str(det_engine), uri, "--out", str(tmp_path / "o"), "-q", "--timeout", "1")
    assert_source_failed(r, message)
    assert not (tmp_path / "o").exists()


def test_debug_brings_back_the_video_libraries_own_lines(det_engine, tmp_path):
    r = run_cli("run-stream", str(det_engine), "rtsp://127.0.0.1:1/x", "--out", str(tmp_path / "o"), "-q",
                "--timeout", "1", "--debug")
    own = [ln for ln in r.stderr.splitlines() if ln.startswith("[")]  # "[tcp @ 0x...]", "[ WARN:0@...]"
    assert own, r.stderr
    assert "SourceFailed: rtsp://127.0.0.1:1/x: cannot open" in r.stderr


@pytest.mark.parametrize("sig, status, reason", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                                 (signal.SIGINT, 130, "interrupted (Ctrl-C)")])
def test_interrupted_run_reports_then_exits_with_the_signal_status(det_engine, tmp_path, sig, status, reason):
    out = tmp_path / "o"
    # A shell that started the tests in the background may ignore SIGINT, which a child inherits: restore it.
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "run-stream", str(det_engine),
                             "synthetic://?size=160x120&fps=30", "--out", str(out), "-q", "--no-video"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_results(tmp_path, proc)
        time.sleep(1)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    report = report_of(out)
    f = report["frames"]
    assert report["stop_reason"] == reason
    assert f["processed"] > 0 and f["in"] == f["processed"] + f["dropped"]
    assert stdout.startswith("# Stream report") and f"stopped: {reason}" in stdout


def test_exit_statuses_are_listed_in_the_help():
    r = run_cli("run-stream", "--help")
    text = " ".join(r.stdout.split())
    for code in EXIT_CODES:
        assert f"{code}: " in text
    assert "3: the video source failed" in text and "143: terminated by SIGTERM" in text

