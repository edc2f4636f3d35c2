"""Stream outputs at the sink level, with real files: the annotated video (every frame written whatever its
size, cut into bounded playable segments), the JSON Lines, no write through a planted symbolic link, and a
run folder that replaces an earlier run as a whole or not at all."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import cv2
import numpy as np
import pytest
from conftest import ROOT

from edgekit.errors import EdgekitError
from edgekit.runtime import artifacts
from edgekit.runtime.api import Model
from edgekit.runtime.artifacts import atomic_dir, run_folder, write_json
from edgekit.runtime.data.synth import VideoScene
from edgekit.runtime.opening import open_model
from edgekit.runtime.stream import report
from edgekit.runtime.stream.pipeline import Frame
from edgekit.runtime.stream.sinks import JsonlSink, VideoSink
from edgekit.runtime.stream.sources import open_source

LINK_REFUSED = "is a symbolic link; refusing to write through it"


@pytest.fixture(scope="module")
def model(det_engine) -> Iterator[Model]:
    m = Model(open_model(det_engine, pipelined=True))
    yield m
    m.close()


def detected(model: Model, images: List[np.ndarray]) -> Iterator[Frame]:
    """Frames as the pipeline hands them to the sinks: the detector's results on each image."""
    for i, img in enumerate(images):
        yield Frame(i, time.monotonic_ns(), img, result=model(img))


def scene(n: int, size: Tuple[int, int] = (320, 240)) -> List[np.ndarray]:
    s = VideoScene(5, size, objects=4, speed=0.02)
    return [s.next().image for _ in range(n)]


def video_frames(path: Path) -> Tuple[int, Tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, size


def leftovers(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- no write through a planted link -----------------------------------------------------------------------

def test_jsonl_refuses_a_planted_symlink_and_leaves_its_target(model, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "results.jsonl").symlink_to(target)
    with pytest.raises(EdgekitError) as e:
        JsonlSink(tmp_path / "results.jsonl", model)
    assert str(e.value) == f"{tmp_path / 'results.jsonl'}: {LINK_REFUSED}"
    assert target.read_text() == "keep me\n"


def test_video_refuses_a_planted_symlink_and_leaves_its_target(model, tmp_path):
    target = tmp_path / "precious.mp4"
    target.write_bytes(b"keep me")
    (tmp_path / "annotated.mp4").symlink_to(target)
    with pytest.raises(EdgekitError, match=LINK_REFUSED):
        VideoSink(tmp_path / "annotated.mp4", model, 30.0)
    assert target.read_bytes() == b"keep me"


def test_write_json_over_a_planted_symlink_replaces_the_link_not_its_target(tmp_path):
    target = tmp_path / "precious.json"
    target.write_text("keep me\n")
    (tmp_path / "report.json").symlink_to(target)
    write_json(tmp_path / "report.json", {"schema": "x"})
    assert not (tmp_path / "report.json").is_symlink()
    assert json.loads((tmp_path / "report.json").read_text()) == {"schema": "x"}
    assert target.read_text() == "keep me\n"
    assert leftovers(tmp_path) == []


def test_atomic_dir_refuses_a_symlink_in_one_line(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "mine.txt").write_text("keep me")
    (tmp_path / "calib").symlink_to(tmp_path / "real")
    with pytest.raises(EdgekitError, match=LINK_REFUSED), atomic_dir(tmp_path / "calib", overwrite=True):
        pass
    assert (tmp_path / "real" / "mine.txt").read_text() == "keep me"


# --- JSON Lines ----------------------------------------------------------------------------------------------

def test_jsonl_names_each_image_folder_frame_by_its_file(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(scene(3, (160, 120))):
        cv2.imwrite(str(folder / f"shot_{i}.png"), img)
    source = open_source(str(folder))
    files = sorted(p.name for p in folder.iterdir())
    sink = JsonlSink(tmp_path / "results.jsonl", model)
    for name, f in zip(files, detected(model, [c.frame for c in source.frames()])):
        f.source_name = name  # type: ignore[attr-defined]  (the image folder source sets it)
        sink.write(f)
    sink.write(next(detected(model, scene(1, (160, 120)))))  # a frame of a video: no file name
    sink.close()
    rows = [json.loads(ln) for ln in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r.get("source") for r in rows] == ["shot_0.png", "shot_1.png", "shot_2.png", None]
    assert all("detections" in r for r in rows)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_jsonl_on_a_full_disk_fails_with_enospc(model, tmp_path):
    """A device given as the path itself (no link) is written: the way to simulate a full disk now that a
    planted link is refused."""
    sink = JsonlSink(Path("/dev/full"), model)
    with pytest.raises(OSError) as e:
        for f in detected(model, scene(200, (64, 48))):
            sink.write(f)
        sink.close()
    assert e.value.errno == 28  # ENOSPC


# --- the annotated video -------------------------------------------------------------------------------------

def test_image_folder_of_mixed_sizes_writes_every_frame(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(320, 240), (320, 240), (200, 300), (640, 360), (320, 240),
             (200, 300), (640, 360), (640, 360), (320, 240), (200, 300)]
    for i, size in enumerate(sizes):
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), scene(1, size)[0])
    sink = VideoSink(tmp_path / "annotated.mp4", model, 0.0)  # an image folder has no frame rate
    for f in detected(model, [c.frame for c in open_source(str(folder)).frames()]):
        sink.write(f)
    sink.close()
    assert video_frames(tmp_path / "annotated.mp4") == (10, (320, 240))
    s = sink.summary()
    assert (s["frames_written"], s["frames_resized"], s["frame_size"]) == (10, 6, [320, 240])
    assert s["files"] == [{"name": "annotated.mp4", "frames": 10, "bytes": (tmp_path / "annotated.mp4").stat().st_size}]
    assert leftovers(tmp_path) == []


def test_letterboxed_frame_keeps_its_aspect_ratio(model, tmp_path):
    """A tall frame in a wide video: the picture in the middle, black bars left and right."""
    sink = VideoSink(tmp_path / "annotated.mp4", model, 10.0)
    wide = np.full((240, 320, 3), 90, np.uint8)
    tall = np.full((300, 200, 3), 255, np.uint8)
    for f in detected(model, [wide, tall]):
        sink.write(f)
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    cap.read()
    ok, img = cap.read()
    assert ok
    row = img[120].mean(axis=1)  # 200x300 scaled by 0.8 -> 160 wide, centred: x 80..240
    assert row[:70].max() < 30 and row[90:230].min() > 200 and row[250:].max() < 30


def test_a_live_source_never_waits_for_the_encoder(model, tmp_path):
    """On a live source the sink hands frames to the encoder thread without waiting: what it cannot keep up with
    is left out of the video and counted (a write that waited would drop none). 1280x720 frames handed over back
    to back (microseconds each) outrun drawing and encoding (milliseconds each) behind a queue of 2."""
    frames = list(detected(model, scene(40, (1280, 720))))
    sink = VideoSink(tmp_path / "annotated.mp4", model, 30.0, live=True, queue_frames=2)
    for f in frames:
        sink.write(f)
    sink.close()
    s = sink.summary()
    assert s["frames_dropped"] > 0 and s["frames_written"] + s["frames_dropped"] == 40
    assert video_frames(tmp_path / "annotated.mp4") == (s["frames_written"], (1280, 720))


@pytest.mark.parametrize("max_bytes", [0, 50_000_000])
def test_a_run_that_fits_in_one_segment_is_annotated_mp4(model, tmp_path, max_bytes):
    sink = VideoSink(tmp_path / "annotated.mp4", model, 30.0, max_bytes=max_bytes)
    for f in detected(model, scene(12)):
        sink.write(f)
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotated.mp4"]
    assert video_frames(tmp_path / "annotated.mp4") == (12, (320, 240))
    s = sink.summary()
    assert (s["segments_written"], s["segments_deleted"], s["frames_written"]) == (1, 0, 12)


def test_live_video_rotates_into_bounded_playable_segments(model, tmp_path):
    max_bytes, keep, n = 50_000, 2, 120
    sink = VideoSink(tmp_path / "annotated.mp4", model, 30.0, max_bytes=max_bytes, keep_segments=keep)
    most_files, finished = 0, {}
    for f in detected(model, scene(n)):
        sink.write(f)
        sink.flush()  # the encoder thread has written it
        videos = [p for p in tmp_path.iterdir() if p.suffix == ".mp4"]
        most_files = max(most_files, len(videos))
        finished.update({p.name: p.stat().st_size for p in videos if not p.name.startswith(".")})
    sink.close()
    s = sink.summary()
    on_disk = sorted(p.name for p in tmp_path.iterdir())
    assert s["segments_written"] >= 10 and s["segments_deleted"] == s["segments_written"] - keep
    assert most_files <= keep + 1  # the finished segments kept and the one being written
    # The newest segments are kept, under numbered names, and are what the summary says they are.
    newest = [f"annotated-{i:06d}.mp4" for i in range(s["segments_written"] - keep + 1, s["segments_written"] + 1)]
    assert on_disk == newest == [x["name"] for x in s["files"]]
    assert s["bytes_on_disk"] == sum((tmp_path / x).stat().st_size for x in on_disk)
    assert s["frames_written"] == n and s["bytes_written"] > s["bytes_on_disk"]
    for x in s["files"]:
        assert video_frames(tmp_path / x["name"]) == (x["frames"], (320, 240))
        assert x["bytes"] == (tmp_path / x["name"]).stat().st_size
    # Every segment cut by the limit ends within a few frames of it, the first one excepted: before the writer's
    # first flush (256 KiB) there is no measure of a frame's bytes yet.
    frame_bytes = s["bytes_written"] / n
    cut = [size for name, size in sorted(finished.items())][1:-1]
    assert len(cut) >= 8
    assert all(max_bytes - 3 * frame_bytes <= size <= max_bytes + 3 * frame_bytes for size in cut), (cut, frame_bytes)


def test_video_segment_settings_are_checked(model, tmp_path):
    with pytest.raises(EdgekitError, match="keep_segments 0 >= 1"):
        VideoSink(tmp_path / "annotated.mp4", model, 30.0, max_bytes=1000, keep_segments=0)
    with pytest.raises(EdgekitError, match="max_bytes -1 must be >= 0"):
        VideoSink(tmp_path / "annotated.mp4", model, 30.0, max_bytes=-1)


# --- the run folder ------------------------------------------------------------------------------------------

def earlier_run(out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"schema": report.SCHEMA, "frames": {"processed": 7}}))
    (out / "annotated.mp4").write_bytes(b"old video")
    (out / "latency_cdf.png").write_bytes(b"old plot")
    return out


def contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_stream_report_schema_marks_an_earlier_run():
    assert report.SCHEMA.split("/")[0] == artifacts.STREAM_REPORT_SCHEMA


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_rerun_replaces_the_earlier_run_as_a_whole(tmp_path, monkeypatch, swap):
    if swap == "two renames":  # where the system cannot swap two folders in one step
        monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)
    out = earlier_run(tmp_path / "run")
    os.chmod(out, 0o750)
    with run_folder(out) as rf:
        assert rf.out == out and rf.path.parent == tmp_path and rf.path.name.startswith(".run.")
        assert contents(out)["annotated.mp4"] == b"old video"  # the old run stays whole while the new one runs
        write_json(rf.path / "report.json", {"schema": report.SCHEMA, "frames": {"processed": 3}})
        (rf.path / "results.jsonl").write_text("{}\n")
    assert sorted(contents(out)) == ["report.json", "results.jsonl"]  # no old video beside the new report
    assert json.loads((out / "report.json").read_text())["frames"]["processed"] == 3
    assert os.stat(out).st_mode & 0o777 == 0o750
    assert leftovers(tmp_path) == []


def test_new_out_gets_the_usual_permissions(tmp_path):
    with run_folder(tmp_path / "a" / "run") as rf:
        (rf.path / "report.json").write_text("{}")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "a" / "run").st_mode & 0o777 == 0o777 & ~umask
    assert leftovers(tmp_path / "a") == []


@pytest.mark.parametrize("raised", [EdgekitError("model.onnx: not found"), KeyboardInterrupt()])
def test_failure_before_the_report_keeps_the_earlier_run(tmp_path, raised):
    out = earlier_run(tmp_path / "run")
    before = contents(out)
    with pytest.raises(type(raised)), run_folder(out) as rf:
        (rf.path / "annotated.mp4").write_bytes(b"half a video")
        raise raised
    assert contents(out) == before
    assert leftovers(tmp_path) == []


def test_failure_after_the_report_replaces_the_earlier_run(tmp_path):
    """The runner writes its report and then raises the stream's error: that run is the result."""
    out = earlier_run(tmp_path / "run")
    with pytest.raises(EdgekitError, match="disk full"), run_folder(out) as rf:
        write_json(rf.path / "report.json", {"schema": report.SCHEMA, "error": "disk full"})
        rf.commit()
        raise EdgekitError("disk full (results.jsonl); report of the 3 frames processed")
    assert sorted(contents(out)) == ["report.json"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("user_report", [None, {"schema": "my-thesis/2"}, "not json"])
def test_a_folder_of_other_files_is_refused(tmp_path, user_report):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("my work")
    if user_report is not None:
        (out / "report.json").write_text(user_report if isinstance(user_report, str) else json.dumps(user_report))
    before = contents(out)
    with pytest.raises(EdgekitError) as e, run_folder(out):
        pytest.fail("the run must not start")
    assert str(e.value) == (f"{out}: exists and is not an earlier run-stream output; pass --overwrite to replace "
                            "it, or choose another --out")
    assert contents(out) == before and leftovers(tmp_path) == []


def test_overwrite_replaces_a_folder_of_other_files(tmp_path):
    out = tmp_path / "scratch"
    out.mkdir()
    (out / "notes.txt").write_text("old")
    with run_folder(out, overwrite=True) as rf:
        (rf.path / "report.json").write_text("{}")
    assert sorted(contents(out)) == ["report.json"]


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "run").mkdir()
    with run_folder(tmp_path / "run") as rf:
        (rf.path / "report.json").write_text("{}")
    assert sorted(contents(tmp_path / "run")) == ["report.json"]


def test_symlinked_out_or_a_file_is_refused(tmp_path):
    real = earlier_run(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "file").write_text("mine")
    for out, message in [(tmp_path / "link", "is a symbolic link; refusing to replace it"),
                         (tmp_path / "file", "exists and is not a folder; choose another --out")]:
        with pytest.raises(EdgekitError, match=message), run_folder(out, overwrite=True):
            pytest.fail("the run must not start")
    assert (tmp_path / "link").is_symlink() and contents(real)["annotated.mp4"] == b"old video"
    assert (tmp_path / "file").read_text() == "mine"
    assert leftovers(tmp_path) == []


def test_a_folder_that_became_a_user_folder_during_the_run_is_not_replaced(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EdgekitError, match="is not an earlier run-stream output.*this run is kept in"), \
            run_folder(out) as rf:
        (rf.path / "report.json").write_text("{}")
        out.mkdir()
        (out / "mine.txt").write_text("arrived meanwhile")
    assert contents(out) == {"mine.txt": b"arrived meanwhile"}
    kept = [tmp_path / n for n in leftovers(tmp_path)]
    assert len(kept) == 1 and sorted(contents(kept[0])) == ["report.json"]


def test_ctrl_c_of_a_real_process_leaves_no_temporary_folder(tmp_path):
    out = earlier_run(tmp_path / "run")
    before = contents(out)
    code = ("import sys, time\nfrom edgekit.runtime.artifacts import run_folder\n"
            f"with run_folder({str(out)!r}) as rf:\n"
            "    (rf.path / 'annotated.mp4').write_bytes(b'partial')\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    assert len(leftovers(tmp_path)) == 1  # the run in progress
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert contents(out) == before and leftovers(tmp_path) == []


def test_run_stream_on_a_folder_of_mixed_sizes_reruns_into_the_same_out(det_engine, tmp_path):
    """Through the CLI: every image of a folder of three sizes is in the video and named in results.jsonl; a
    rerun replaces the earlier run as a whole; a folder of other files is refused without --overwrite."""
    from conftest import assert_one_line_error, run_cli

    images = tmp_path / "images"
    images.mkdir()
    for i, img in enumerate(scene(6)):
        size = [(320, 240), (200, 300), (640, 360)][i % 3]
        cv2.imwrite(str(images / f"img_{i}.jpg"), cv2.resize(img, size))
    out = tmp_path / "run"
    for _ in range(2):  # the second run replaces the first
        r = run_cli("run-stream", str(det_engine), str(images), "--out", str(out), "-q")
        assert r.returncode == 0, r.stderr
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert [row["source"] for row in rows] == [f"img_{i}.jpg" for i in range(6)]
        assert video_frames(out / "annotated.mp4")[0] == 6
        rep = json.loads((out / "report.json").read_text())
        assert rep["outputs"]["video_files"]["frames_resized"] == 4
        assert "annotated video: annotated.mp4" in (out / "report.md").read_text()
        assert sorted(p.name for p in out.iterdir()) == sorted(
            ["annotated.mp4", "results.jsonl", "report.json", "report.md", "latency_cdf.png", "stages.png"])
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = run_cli("run-stream", str(det_engine), str(images), "--out", str(mine), "-q")
    assert_one_line_error(r, "exists and is not an earlier run-stream output; pass --overwrite")
    assert (mine / "notes.txt").read_text() == "keep me"
