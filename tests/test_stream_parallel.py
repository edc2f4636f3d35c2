"""run-stream at the machine's limit: parallel inference workers (frames leave in order), batches of ready
frames (counted in the report), several sources into one engine (per-source outputs and report), and the
annotated video subsampled off the critical path. Real ONNX Runtime sessions, real video files."""

import json
import random
import threading
import time

import cv2
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from edgekit.runtime.data.writer import write_dataset
from edgekit.runtime.stream import decoders
from edgekit.runtime.stream.pipeline import InOrder
from edgekit.runtime.stream.runner import StreamOptions, run_stream

FRAMES = 40


@pytest.fixture(scope="module")
def batch_engine(tmp_path_factory):
    """The shipped detector exported with a dynamic batch axis (up to 4), as `edgekit export --dynamic-batch 4`."""
    from edgekit.build.demo import SHIPPED
    from edgekit.build.export import export

    out = tmp_path_factory.mktemp("batch") / "det.onnx"
    export(SHIPPED["detection"], out, dynamic_batch=4)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos") / "data"
    write_dataset(root, seed=5, counts={"train": 0, "val": 0, "test": 1}, size=(160, 120), videos=2,
                  video_frames=FRAMES, video_size=(320, 240), progress=False)
    return sorted((root / "videos").glob("*.mp4"))


def rows(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def same_results(a, b):
    """The same detections frame by frame (sessions of other thread counts and batch sizes may differ in the last
    bits of a float, which can move a value rounded for JSON by one step: boxes to 0.1 pixel, scores to 1e-4)."""
    assert [r["frame"] for r in a] == [r["frame"] for r in b]
    for ra, rb in zip(a, b):
        da, db = ra["detections"], rb["detections"]
        assert [d["class"] for d in da] == [d["class"] for d in db], ra["frame"]
        for x, y in zip(da, db):
            assert np.allclose(x["box"], y["box"], atol=0.1 + 1e-6) and abs(x["score"] - y["score"]) <= 1.5e-4


def stream(engine, sources, out, **options):
    return run_stream(engine, sources, StreamOptions(out=str(out), progress=False, power=False, **options))


def test_workers_deliver_every_frame_in_order_with_the_results_of_one(batch_engine, videos, tmp_path):
    one = stream(batch_engine, str(videos[0]), tmp_path / "one", workers=1, save_video=False)
    three = stream(batch_engine, str(videos[0]), tmp_path / "three", workers=3, save_video=False)
    assert one["inference"]["workers"] == 1 and one["frames"]["processed"] == FRAMES
    assert three["inference"]["workers"] == 3 and three["inference"]["threads_per_worker"] >= 1
    assert three["frames"] == {"in": FRAMES, "processed": FRAMES, "dropped": 0, "accounted": True}
    assert sum(three["inference"]["frames_per_worker"]) == FRAMES
    assert [r["frame"] for r in rows(tmp_path / "three")] == list(range(FRAMES))
    same_results(rows(tmp_path / "one"), rows(tmp_path / "three"))
    assert "- inference: 3 workers x" in (tmp_path / "three" / "report.md").read_text()


def test_batches_are_counted_and_give_the_results_of_single_frames(batch_engine, videos, tmp_path):
    single = stream(batch_engine, str(videos[0]), tmp_path / "b1", workers=1, save_video=False)
    batched = stream(batch_engine, str(videos[0]), tmp_path / "b4", workers=2, batch=4, save_video=False)
    b = batched["inference"]["batch"]
    sizes = {int(k): v for k, v in b["sizes"].items()}
    assert set(sizes) <= {1, 2, 3, 4} and sum(k * v for k, v in sizes.items()) == FRAMES
    assert b["batches"] == sum(sizes.values()) and b["max"] == 4
    assert max(sizes) > 1, sizes  # a file's frames queue up while the workers are busy: batches form
    assert batched["frames"]["accounted"] and batched["frames"]["processed"] == FRAMES
    assert single["inference"]["batch"]["sizes"] == {"1": FRAMES}
    same_results(rows(tmp_path / "b1"), rows(tmp_path / "b4"))
    assert "batches of up to 4 frames" in (tmp_path / "b4" / "report.md").read_text()


def test_a_live_source_in_batches_accounts_for_every_frame(batch_engine, tmp_path):
    r = stream(batch_engine, "synthetic://?fps=60&seed=4", tmp_path / "live", batch=4, batch_wait_ms=10,
               duration=2, save_video=False)
    f = r["frames"]
    assert f["accounted"] and f["processed"] > 0
    sizes = {int(k): v for k, v in r["inference"]["batch"]["sizes"].items()}
    assert sum(k * v for k, v in sizes.items()) == f["processed"]
    assert r["inference"]["batch"]["wait_ms"] == 10


def test_several_sources_feed_one_engine_with_their_own_outputs(batch_engine, videos, tmp_path):
    out = tmp_path / "multi"
    listed = tmp_path / "sources.txt"
    listed.write_text(f"# the second camera\n{videos[1]}\n\nsynthetic://?fps=30&seed=9\n")
    r = run_cli("run-stream", str(batch_engine), str(videos[0]), "--sources", str(listed), "--batch", "3",
                "--max-frames", "25", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert [s["uri"] for s in rep["sources"]] == [str(videos[0]), str(videos[1]), "synthetic://?fps=30&seed=9"]
    for k, s in enumerate(rep["sources"]):
        f = s["frames"]
        assert f["in"] == 25 and f["accounted"] and s["stop_reason"] == "--max-frames 25 reached"
        got = rows(out / f"source-{k}")
        assert len(got) == f["processed"] and [x["frame"] for x in got] == sorted(x["frame"] for x in got)
        assert s["end_to_end_ms"]["count"] == f["processed"]
        assert (out / f"source-{k}" / "annotated.mp4").is_file()
    # files lose no frame; the totals are the sources' sums
    assert [s["frames"]["processed"] for s in rep["sources"][:2]] == [25, 25]
    total = rep["frames"]
    assert total["in"] == 75 and total["processed"] == sum(s["frames"]["processed"] for s in rep["sources"])
    assert total["accounted"]
    md = (out / "report.md").read_text()
    assert md.startswith("# Stream report: 3 sources") and f"| 1: {videos[1]} | 25 | 25 | 0 |" in md
    assert f"annotated video: {out}/source-2/annotated.mp4" in r.stdout


def test_video_fps_draws_and_encodes_only_the_frames_it_keeps(batch_engine, videos, tmp_path):
    fps = cv2.VideoCapture(str(videos[0])).get(cv2.CAP_PROP_FPS)
    r = stream(batch_engine, str(videos[0]), tmp_path / "sub", video_fps=fps / 4)
    v = r["outputs"]["video_files"]
    assert v["frames_written"] == FRAMES // 4 and v["frames_skipped"] == FRAMES - FRAMES // 4
    assert v["fps"] == pytest.approx(fps / 4)
    if not decoders.opencv_video_io().gstreamer:  # (a Jetson's OpenCV encodes with nvv4l2h264enc)
        assert v["encoder"] == "mp4v" and v["encoder_note"] == "this OpenCV was built without GStreamer"
    cap = cv2.VideoCapture(str(tmp_path / "sub" / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES // 4
    assert r["frames"]["processed"] == FRAMES  # every frame is still inferred and written to results.jsonl
    assert len(rows(tmp_path / "sub")) == FRAMES
    assert f"{FRAMES - FRAMES // 4} left out by --video-fps" in (tmp_path / "sub" / "report.md").read_text()


def test_a_batch_the_engine_cannot_take_is_one_line(det_engine, videos, tmp_path):
    r = run_cli("run-stream", str(det_engine), str(videos[0]), "--batch", "2", "--out", str(tmp_path / "o"), "-q")
    assert_one_line_error(r, "takes batches of at most 1 frame", "export --dynamic-batch 2")
    assert not (tmp_path / "o").exists()


def test_no_source_is_a_usage_error(batch_engine, tmp_path):
    r = run_cli("run-stream", str(batch_engine), "--out", str(tmp_path / "o"))
    assert_one_line_error(r, "give a source")
    r = run_cli("run-stream", str(batch_engine), "--sources", str(tmp_path / "absent.txt"))
    assert_one_line_error(r, "absent.txt: cannot read it")


def test_in_order_passes_results_on_in_order_whatever_order_they_finish():
    """Workers finishing out of order, some frames dropped (None): what leaves is the kept frames, in order."""
    got = []
    in_order = InOrder(got.append, limit=4)
    order = list(range(60))
    dropped = set(range(5, 60, 7))
    chunks = [order[i::3] for i in range(3)]  # three workers, each with every third frame

    def worker(seqs):
        rng = random.Random(seqs[0])
        for s in seqs:
            time.sleep(rng.random() / 500)
            in_order.done(s, None if s in dropped else s)

    threads = [threading.Thread(target=worker, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == [s for s in order if s not in dropped]
    assert not in_order.held


def test_the_jetson_encoder_pipeline():
    """What OpenCV's GStreamer writer gets on a Jetson: BGR converted on the VIC, encoded by NVENC, into MP4."""
    assert decoders.encoder_pipeline('/runs/a "b".mp4') == (
        "appsrc ! video/x-raw,format=BGR ! videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! "
        "video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc insert-sps-pps=true ! h264parse ! qtmux ! "
        'filesink location="/runs/a \\"b\\".mp4"')


def test_realtime_plays_a_file_at_its_frame_rate_as_a_live_source(batch_engine, videos, tmp_path):
    fps = cv2.VideoCapture(str(videos[0])).get(cv2.CAP_PROP_FPS)
    r = stream(batch_engine, str(videos[0]), tmp_path / "rt", realtime=True, save_video=False)
    assert r["source"]["live"] and any("--realtime" in n for n in r["source"]["notes"])
    assert r["frames"]["accounted"] and r["frames"]["in"] == FRAMES
    assert r["wall_seconds"] >= (FRAMES - 1) / fps  # not faster than the file's own pace
    assert r["throughput_fps"] == pytest.approx(fps, rel=0.25)


def test_realtime_on_an_image_folder_is_one_line(batch_engine, tmp_path):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    r = run_cli("run-stream", str(batch_engine), str(tmp_path / "imgs"), "--realtime", "-o", str(tmp_path / "o"))
    assert_one_line_error(r, "--realtime plays video files at their frame rate; an image folder has none")
    assert not (tmp_path / "o").exists()
