"""`edgekit calib-set`'s diversity report, run as a user runs it: the frames written and diversity.json agree,
and the warnings appear exactly where the picks lack something."""

import json
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

import edgekit
from edgekit.runtime import calibration
from edgekit.runtime.calib_report import BRIGHT_ABOVE, DARK_BELOW, LARGE_AREA, PRESENT_SHARE, SMALL_AREA


def write_video(path: Path, levels: List[int], size=(96, 64)) -> Path:
    """A video of plain grey frames, one per level (0-255), with a faint gradient so that each frame is a scene."""
    w, h = size
    ramp = np.tile(np.linspace(-8, 8, w), (h, 1))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for level in levels:
        grey = np.clip(level + ramp, 0, 255).astype(np.uint8)
        writer.write(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def dark_bright(tmp_path_factory) -> Path:
    """8 dark frames, then 8 bright ones."""
    return write_video(tmp_path_factory.mktemp("video") / "dark_bright.mp4", [25] * 8 + [225] * 8)


@pytest.fixture(scope="module")
def seg_onnx(tmp_path_factory) -> Path:
    """The shipped segmenter's weights at half its input size, as an edgekit ONNX with its card embedded,
    exported as users export it. Export's parity check at full size took 10 s on 2 busy cores; at half size on
    one PyTorch thread, 0.5 s (two threads fought the other jobs for the cores: 1.9 s)."""
    import dataclasses

    import torch

    from edgekit.build.demo import SHIPPED
    from edgekit.build.export import export
    from edgekit.build.models import checkpoint

    folder = tmp_path_factory.mktemp("seg")
    model, card = checkpoint.load(SHIPPED["segmentation"])
    checkpoint.save(model, dataclasses.replace(card, input_size=(96, 128)), folder / "seg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export(folder / "seg.safetensors", folder / "seg.onnx")
    finally:
        torch.set_num_threads(threads)
    return folder / "seg.onnx"


def calib_set(video: Path, out: Path, n: int, *extra: str):
    r = run_cli("calib-set", str(video), "-n", str(n), "-o", str(out), *extra)
    assert r.returncode == 0, r.stderr
    return r, json.loads((out / "diversity.json").read_text())


def warnings_of(r) -> List[str]:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("edgekit: warning: ") for ln in lines), r.stderr
    return lines


def test_brightness_figures_match_the_frames_written(dark_bright, tmp_path):
    r, report = calib_set(dark_bright, tmp_path / "calib", 6)
    written = sorted(p.name for p in (tmp_path / "calib").iterdir() if p.suffix == ".jpg")
    assert [f["file"] for f in report["frames"]] == written and report["picked"] == len(written) == 6
    for f in report["frames"]:  # each figure is the frame's own mean luminance (JPEG moves it a little)
        grey = cv2.cvtColor(cv2.imread(str(tmp_path / "calib" / f["file"])), cv2.COLOR_BGR2GRAY)
        assert abs(grey.mean() - f["luminance"]) < 2, f
    lum = [f["luminance"] for f in report["frames"]]
    picks, video = report["brightness"]["picks"], report["brightness"]["video"]
    assert picks["bands"] == {"dark": sum(v < DARK_BELOW for v in lum), "bright": sum(v > BRIGHT_ABOVE for v in lum),
                              "normal": 0}
    assert picks["bands"]["dark"] > 0 and picks["bands"]["bright"] > 0
    assert (picks["min"], picks["max"]) == (min(lum), max(lum))
    assert video["frames"] == report["video_frames"] == 16 and video["bands"] == {"dark": 8, "normal": 0, "bright": 8}
    assert abs(video["min"] - 25) < 3 and abs(video["max"] - 225) < 3
    assert report["model"] is None and report["warnings"] == [] and warnings_of(r) == []
    assert "dark 50%, normal 0%, bright 50%" in r.stdout  # the video's line
    # The report reads the pass that picks the frames: the same choice as calibration.pick_video_frames.
    assert [f["index"] for f in report["frames"]] == calibration.pick_video_frames(dark_bright, 6)
    # The calibration loader reads the images only: diversity.json is not mistaken for one.
    assert len(calibration.load(tmp_path / "calib", 100, warn_short=False)) == 6


def test_warns_when_the_picks_miss_what_the_video_holds(dark_bright, tmp_path):
    r, report = calib_set(dark_bright, tmp_path / "one", 1)  # a single frame: the first, dark
    assert report["brightness"]["picks"]["bands"]["dark"] == 1
    (line,) = warnings_of(r)
    assert "100% of the picked frames are dark but 50% of the video's frames are" in line
    assert report["warnings"] == [line[len("edgekit: warning: "):]]
    # A video that is all dark: dark picks are what it holds; asking for more frames than it has is said.
    dark = write_video(tmp_path / "dark.mp4", [20, 30, 40, 50])
    r, report = calib_set(dark, tmp_path / "dark", 10)
    (line,) = warnings_of(r)
    assert "4 frames picked, fewer than the 10 asked (the video has 4 frames that decode)" in line
    assert report["picked"] == 4 and report["brightness"]["picks"]["bands"]["dark"] == 4


def test_detector_figures_match_what_the_model_finds(det_engine, tiny_synth, tmp_path):
    video = tiny_synth / "videos" / "stream_00.mp4"
    r, report = calib_set(video, tmp_path / "calib", 4, "--model", str(det_engine))
    model, frames = report["model"], report["frames"]
    assert model["task"] == "detection" and model["input"] == "256x192" and len(frames) == 4
    for name, figures in model["classes"].items():  # per class: frames that show it, and its boxes
        assert figures["frames"] == sum(name in f["classes"] for f in frames), name
    assert sum(c["boxes"] for c in model["classes"].values()) == sum(f["detections"] for f in frames) > 0
    # Object sizes: the model's boxes on the same frames, in network-input pixels, in COCO's bins.
    with edgekit.open(det_engine) as det:
        areas = []
        for _, frame in calibration.iter_video_frames(video, [f["index"] for f in frames]):
            boxes = det(frame).boxes
            scale = det.preprocess(frame)[1].scale_x  # letterbox: one scale
            areas += list((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * scale ** 2)
    scale = model["object_scale"]
    assert (scale["small"], scale["medium"], scale["large"]) == (
        sum(a < SMALL_AREA for a in areas), sum(SMALL_AREA <= a < LARGE_AREA for a in areas),
        sum(a >= LARGE_AREA for a in areas))
    scores = model["max_score_per_frame"]
    assert scores["max"] == max(f["max_score"] for f in frames) >= 0.5 and scores["without_detection"] == 0
    missing = [c for c, f in model["classes"].items() if f["frames"] == 0]
    lines = warnings_of(r)
    assert not any("scored 0.5 or more" in ln for ln in lines)  # confident detections: no score warning
    if missing:
        assert any(f"never appear in the 4 picked frames (scored 0.25 or more): {', '.join(missing)};" in ln
                   for ln in lines), lines
    assert "object scale (" in r.stdout and "max score per frame: min " in r.stdout


def test_detector_warns_without_confident_detections(det_engine, dark_bright, tmp_path):
    r, report = calib_set(dark_bright, tmp_path / "calib", 4, "--model", str(det_engine))
    scores = report["model"]["max_score_per_frame"]
    assert scores["max"] is None or scores["max"] < 0.5
    lines = warnings_of(r)
    assert any("no picked frame has a detection scored 0.5 or more" in ln and "sigmoid(0) = 0.5" in ln
               for ln in lines), lines
    assert any("4 of the model's 4 classes never appear" in ln for ln in lines) == (scores["max"] is None)


def test_segmentation_reports_pixel_shares(seg_onnx, tiny_synth, tmp_path):
    r, report = calib_set(tiny_synth / "videos" / "stream_00.mp4", tmp_path / "calib", 4, "--model", str(seg_onnx))
    model, frames = report["model"], report["frames"]
    assert model["task"] == "segmentation" and model["input"] == "128x96"
    assert "object_scale" not in model and "max_score_per_frame" not in model  # no boxes, no scores
    shares = [c["pixel_share"] for c in model["classes"].values()]
    assert abs(sum(shares) - 1) < 1e-3 and model["classes"]["background"]["frames"] == 4
    for name, figures in model["classes"].items():
        assert figures["frames"] == sum(name in f["classes"] for f in frames), name
        # a class appears in a frame where it covers PRESENT_SHARE of it; never so: a smaller share overall
        assert figures["pixel_share"] > 0 if figures["frames"] else figures["pixel_share"] < PRESENT_SHARE, name
    missing = [c for c, f in model["classes"].items() if f["frames"] == 0]
    assert any(f": {', '.join(missing)};" in ln for ln in warnings_of(r)) == bool(missing)
    assert "share of all pixels" in r.stdout


def test_a_bad_model_is_one_line_and_writes_nothing(dark_bright, tmp_path):
    not_a_model = tmp_path / "notes.onnx"
    not_a_model.write_text("not a model\n")
    for model, says in ((tmp_path / "missing.onnx", "missing.onnx: not found"),
                        (not_a_model, "notes.onnx: ONNX Runtime cannot load it")):
        out = tmp_path / "calib"
        r = run_cli("calib-set", str(dark_bright), "-n", "2", "-o", str(out), "--model", str(model))
        assert_one_line_error(r, f"--model {model.parent}", says)
        assert not out.exists() and not list(tmp_path.glob(".calib*"))
    # --overwrite on the model's own folder would delete the model: refused.
    r = run_cli("calib-set", str(dark_bright), "-o", str(tmp_path), "--overwrite", "--model", str(not_a_model))
    assert_one_line_error(r, "would replace the model")
    assert not_a_model.is_file()
