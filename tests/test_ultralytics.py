"""An Ultralytics user's checkpoints: a YOLOv8n best.pt written by Ultralytics' own trainer (on generated
data) and a YOLOv8n-seg .pt saved by Ultralytics, through import-model -> prune -> export -> build-engine INT8
-> run-stream with no hand-written card; the ONNX edgekit exports equals the one Ultralytics' exporter writes."""

import os
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, build_and_stream, run_cli

from edgekit.build.models import checkpoint

pytest.importorskip("ultralytics", reason="the ultralytics extra is not installed (pip install -e '.[ultralytics]')")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
CLASSES = ["disc", "square", "triangle", "star"]


@pytest.fixture(scope="module")
def best_pt(tiny_synth, tmp_path_factory):
    """What `yolo train` leaves a user: runs/.../weights/best.pt, from one epoch of Ultralytics' trainer."""
    from ultralytics import YOLO

    work = tmp_path_factory.mktemp("ultralytics")
    data = work / "data.yaml"
    data.write_text(f"path: {tiny_synth}\ntrain: images/train\nval: images/val\nnames: {dict(enumerate(CLASSES))}\n")
    YOLO("yolov8n.yaml").train(data=str(data), epochs=1, imgsz=128, batch=8, workers=0, plots=False, device="cpu",
                               project=str(work / "runs"), name="t", exist_ok=True, amp=False, pretrained=False,
                               val=False, verbose=False, seed=0)
    return work / "runs" / "t" / "weights" / "best.pt"


def _ultralytics_onnx(pt, imgsz: int):
    """The ONNX Ultralytics' own exporter writes for the same checkpoint."""
    from ultralytics import YOLO

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return YOLO(str(pt)).export(format="onnx", imgsz=imgsz, opset=17, simplify=True, verbose=False)


def _run(onnx_file, x):
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def test_a_pickle_is_refused_without_trust_pickle(best_pt, tmp_path):
    out = tmp_path / "ckpt"
    assert_one_line_error(run_cli("import-model", str(best_pt), "-o", str(out)), "is a pickle", "--trust-pickle")
    state = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, state)
    assert_one_line_error(run_cli("import-model", str(state), "--trust-pickle", "-o", str(out)),
                          "not an Ultralytics checkpoint")
    assert not out.exists()


def test_an_ultralytics_detector_goes_the_whole_way(best_pt, tiny_synth, tmp_path):
    from ultralytics import YOLO

    r = run_cli("import-model", str(best_pt), "--trust-pickle", "-o", str(tmp_path / "ckpt"))
    assert r.returncode == 0, r.stderr
    assert "detection, 4 classes, input 128x128, output layout yolov8" in r.stdout
    model, card = checkpoint.load(tmp_path / "ckpt" / "best.safetensors")  # no pickle from here on
    assert card.arch == "ultralytics:DetectionModel" and card.classes == CLASSES
    assert (card.color, card.mean, card.std, card.resize_mode, card.pad_value) == ("RGB", (0, 0, 0), (1, 1, 1),
                                                                                    "letterbox", 114)
    assert card.extra["training"]["ultralytics"]["imgsz"] == 128  # the run's settings, for fine-tuning
    theirs = YOLO(str(best_pt)).model.float().eval()
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(x), theirs(x)[0])  # the reloaded checkpoint is the user's model, bit for bit

    assert run_cli("export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "ours.onnx")).returncode == 0
    xs = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    ours, = _run(tmp_path / "ours.onnx", xs)
    reference, = _run(_ultralytics_onnx(best_pt, 128), xs)
    assert ours.shape == reference.shape == (1, 8, 336)
    assert np.abs(ours - reference).max() < 1e-3  # pixels (boxes) and probabilities

    # prune 30% and fine-tune one epoch with Ultralytics' own loss, on the schedule of the user's run
    r = run_cli("prune", str(tmp_path / "ckpt"), "--ratio", "0.3", "--data", str(tiny_synth), "--finetune-epochs", "1",
                "--report-duration", "0.2", "-q", "-o", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    assert "(from the Ultralytics run's train_args)" in r.stdout
    pruned, pruned_card = checkpoint.load(tmp_path / "p" / "best.safetensors")
    assert sum(p.numel() for p in pruned.parameters()) < 0.7 * sum(p.numel() for p in model.parameters())
    assert run_cli("export", str(tmp_path / "p" / "best.safetensors"), "-o", str(tmp_path / "p.onnx")).returncode == 0
    calib = str(tiny_synth / "images" / "val")
    out = build_and_stream(tmp_path / "p.onnx", tmp_path / "p.int8.onnx", "--precision", "int8", "--calib", calib)
    assert "agreement with FP32" in out


def test_a_pruned_ultralytics_model_reloads_bit_exact(best_pt, tmp_path):
    from edgekit.build.pruning.channels import output_layers, prune_channels, pruned_card

    assert run_cli("import-model", str(best_pt), "--trust-pickle", "-o", str(tmp_path / "c")).returncode == 0
    model, card = checkpoint.load(tmp_path / "c")
    prune_channels(model, card, 0.5, "l2", 8)
    names = {m: n for n, m in model.named_modules()}
    heads = sorted(names[m] for m in output_layers(model, card))  # class and box convs, and the DFL they feed
    assert heads == sorted([f"model.22.cv{k}.{i}.2" for k in (2, 3) for i in range(3)] + ["model.22.dfl.conv"])
    checkpoint.save(model, pruned_card(card, model, {"ratio": 0.5}, "v8n-p50"), tmp_path / "p" / "pruned")
    again, _ = checkpoint.load(tmp_path / "p" / "pruned.safetensors")
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))


def test_an_ultralytics_segmenter_is_instance_segmentation(tmp_path):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import SegmentationModel

    torch.manual_seed(0)
    yolo = YOLO("yolov8n-seg.yaml")
    yolo.model = SegmentationModel("yolov8n-seg.yaml", nc=2, verbose=False)
    yolo.model.names = {0: "part", 1: "defect"}
    yolo.model.args = {"imgsz": 160}
    pt = tmp_path / "seg.pt"
    yolo.save(str(pt))
    r = run_cli("import-model", str(pt), "--trust-pickle", "-o", str(tmp_path / "ckpt"))
    assert r.returncode == 0, r.stderr
    assert "instance_segmentation, 2 classes, input 160x160, output layout yolov8_seg" in r.stdout
    assert run_cli("export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "ours.onnx")).returncode == 0
    xs = np.random.default_rng(0).random((1, 3, 160, 160), dtype=np.float32)
    ours, reference = _run(tmp_path / "ours.onnx", xs), _run(_ultralytics_onnx(pt, 160), xs)
    assert [o.shape for o in ours] == [o.shape for o in reference] == [(1, 38, 525), (1, 32, 40, 40)]
    assert all(np.abs(a - b).max() < 1e-3 for a, b in zip(ours, reference))
    build_and_stream(tmp_path / "ours.onnx", tmp_path / "e.onnx")
