"""The CLI as a user meets it: help, version, and one-line errors that leave nothing half-written."""

import shutil

import pytest
from conftest import assert_one_line_error, run_cli

from edgekit import __version__


def verb_names():
    """The verbs as `edgekit --help` lists them, read from its output."""
    r = run_cli("--help")
    assert r.returncode == 0
    listing = r.stdout.split("VERB\n", 1)[1].split("\noptions:", 1)[0]
    return [line.split()[0] for line in listing.splitlines() if line.startswith("    ") and line[4] != " "]


def test_help_lists_every_verb_and_each_has_its_own_help():
    verbs = verb_names()
    assert {"run-stream", "build-engine", "profile", "eval", "train", "prune", "export", "layouts"} <= set(verbs)
    for verb in verbs:
        r = run_cli(verb, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: edgekit {verb}"), (verb, r.stderr)
        assert "--debug" in r.stdout  # the global flags work after the verb too


def test_every_output_taking_verb_accepts_o_and_out(tmp_path):
    """One spelling everywhere: -o/--out (the older --output still works where it existed)."""
    for verb in ("prune", "export", "build-engine", "calib-set", "run-stream", "profile", "eval", "sweep",
                 "demo", "train"):
        r = run_cli(verb, "--help")
        assert "-o OUT, --out OUT" in r.stdout, verb
    for flag in ("-o", "--out", "--output"):
        r = run_cli("calib-set", str(tmp_path / "none.mp4"), flag, str(tmp_path / "c"))
        assert_one_line_error(r, "none.mp4: video not found")


def test_debug_after_the_verb_shows_the_traceback(tmp_path):
    r = run_cli(*train_args(tmp_path / "nope", tmp_path / "run"), "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "dataset folder not found" in r.stderr


def test_layouts_lists_what_the_registry_holds():
    from edgekit.runtime import registry

    r = run_cli("layouts")
    assert r.returncode == 0, r.stderr
    for task in registry.task_names():
        assert f"{task}: " in r.stdout
        for layout in registry.layouts(task):
            assert f"  {layout.name} " in r.stdout
    assert "yolov8" in r.stdout and "logits" in r.stdout


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"edgekit {__version__}"


def test_usage_error_exits_2():
    r = run_cli("train", "--epochs", "many")
    assert r.returncode == 2 and "argument --epochs: expected a whole number of at least 1, got 'many'" in r.stderr


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def train_args(data, out, *extra):
    return ("train", "--task", "detection", "--data", str(data), "--out", str(out), "--imgsz", "64",
            "--epochs", "1", "-q", *extra)


def test_missing_dataset_folder(tmp_path):
    r = run_cli(*train_args(tmp_path / "nope", tmp_path / "run"))
    assert_one_line_error(r, "nope: dataset folder not found")
    assert not (tmp_path / "run").exists()


def test_empty_dataset_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli(*train_args(tmp_path / "empty", tmp_path / "run"))
    assert_one_line_error(r, "empty: dataset folder is empty")
    assert not (tmp_path / "run").exists()


def test_label_of_a_missing_image_yolo(tiny_synth, tmp_path):
    data = copy_dataset(tiny_synth, tmp_path / "d")
    shutil.rmtree(data / "annotations")
    (data / "images" / "train" / "000003.jpg").unlink()
    r = run_cli(*train_args(data, tmp_path / "run"))
    assert_one_line_error(r, "labels/train/000003.txt", "no image named 000003")
    assert not (tmp_path / "run").exists()


def test_label_of_a_missing_image_coco(tiny_synth, tmp_path):
    data = copy_dataset(tiny_synth, tmp_path / "d")
    (data / "images" / "train" / "000005.jpg").unlink()
    r = run_cli(*train_args(data, tmp_path / "run"))
    assert_one_line_error(r, "annotations/train.json", "image '000005.jpg'", "not found")


def test_class_id_out_of_range(tiny_synth, tmp_path):
    data = copy_dataset(tiny_synth, tmp_path / "d")
    shutil.rmtree(data / "annotations")
    (data / "labels" / "train" / "000002.txt").write_text("9 0.5 0.5 0.2 0.2\n")
    r = run_cli(*train_args(data, tmp_path / "run"))
    assert_one_line_error(r, "labels/train/000002.txt line 1", "class id 9 out of range (4 classes)")
    assert not (tmp_path / "run").exists()


def test_mask_class_out_of_range(tiny_synth, tmp_path):
    import cv2
    import numpy as np

    data = copy_dataset(tiny_synth, tmp_path / "d")
    cv2.imwrite(str(data / "masks" / "train" / "000001.png"), np.full((96, 128), 7, np.uint8))
    r = run_cli("train", "--task", "segmentation", "--data", str(data), "--out", str(tmp_path / "run"),
                "--imgsz", "64", "--epochs", "1", "-q")
    assert_one_line_error(r, "masks/train/000001.png", "class index 7 out of range (5 classes)")
    assert not (tmp_path / "run").exists()


def test_corrupt_image(tiny_synth, tmp_path):
    data = copy_dataset(tiny_synth, tmp_path / "d")
    img = data / "images" / "train" / "000004.jpg"
    img.write_bytes(img.read_bytes()[:40])
    r = run_cli(*train_args(data, tmp_path / "run"))
    assert_one_line_error(r, "000004.jpg: cannot decode image")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def det_checkpoint(tmp_path_factory):
    from edgekit.build.models import checkpoint
    from edgekit.runtime.card import ModelCard

    card = ModelCard(name="d", task="detection", arch="edgenet-det-s",
                     classes=["disc", "square", "triangle", "star"], input_size=(64, 64))
    folder = tmp_path_factory.mktemp("ckpt")
    checkpoint.save(checkpoint.build(card), card, folder / "det")
    return folder / "det.safetensors"


def test_checkpoint_of_another_task(tiny_synth, det_checkpoint, tmp_path):
    r = run_cli("train", "--task", "segmentation", "--data", str(tiny_synth), "--out", str(tmp_path / "run"),
                "--imgsz", "64", "--epochs", "1", "-q", "--init", str(det_checkpoint))
    assert_one_line_error(r, "det.card.yaml", "this is a detection model, a segmentation model is needed")
    assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_architecture(tiny_synth, det_checkpoint, tmp_path):
    r = run_cli(*train_args(tiny_synth, tmp_path / "run", "--arch", "edgenet-det-m", "--init", str(det_checkpoint)))
    assert_one_line_error(r, "architecture 'edgenet-det-s' differs from --arch edgenet-det-m")
    assert not (tmp_path / "run").exists()


def test_card_with_unknown_or_missing_keys(tiny_synth, det_checkpoint, tmp_path):
    folder = tmp_path / "ck"
    shutil.copytree(det_checkpoint.parent, folder)
    card = folder / "det.card.yaml"
    card.write_text(card.read_text() + "colour: red\n")
    r = run_cli(*train_args(tiny_synth, tmp_path / "run", "--init", str(folder / "det.safetensors")))
    assert_one_line_error(r, "det.card.yaml: unknown key(s) colour")
    card.write_text("\n".join(ln for ln in card.read_text().splitlines() if not ln.startswith(("colour", "task"))))
    r = run_cli(*train_args(tiny_synth, tmp_path / "run", "--init", str(folder / "det.safetensors")))
    assert_one_line_error(r, "det.card.yaml: missing key(s) task")
    assert not (tmp_path / "run").exists()


def test_unknown_architecture_suggests_close_names(tiny_synth, tmp_path):
    r = run_cli(*train_args(tiny_synth, tmp_path / "run", "--arch", "edgenet-det-x"))
    assert_one_line_error(r, "unknown model architecture 'edgenet-det-x'", "did you mean")


def test_synth_refuses_to_overwrite(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("data", "synth", str(out), "--train", "1", "--val", "1", "--test", "1", "--videos", "0", "-q")
    assert_one_line_error(r, "already exists and is not empty")
    assert (out / "keep.txt").read_text() == "mine"


def test_debug_shows_the_traceback(tmp_path):
    r = run_cli("--debug", *train_args(tmp_path / "nope", tmp_path / "run"))
    assert r.returncode != 0 and "Traceback" in r.stderr
