"""Models users bring as PyTorch: a torchvision segmenter and a user's own nn.Module, each with a state dict
from "their training", through import-model -> export -> build-engine -> run-stream with no hand-written card."""

import json
import textwrap

import pytest
import torch
from conftest import assert_one_line_error, build_and_stream, run_cli

from edgekit.build.models import checkpoint

LRASPP = "torchvision:lraspp_mobilenet_v3_large(num_classes=3, weights_backbone=None)"
IMAGENET = ("--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225")


@pytest.fixture(scope="module")
def lraspp_weights(tmp_path_factory):
    """A state dict as a user's training saves it (torch.save(model.state_dict()))."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model("lraspp_mobilenet_v3_large", num_classes=3, weights_backbone=None)
    path = tmp_path_factory.mktemp("user") / "lraspp_best.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_a_torchvision_segmenter_goes_the_whole_way(lraspp_weights, tmp_path):
    weights, original = lraspp_weights
    r = run_cli("import-model", LRASPP, "--weights", str(weights), "--task", "segmentation", "--classes",
                "background,road,car", "--input-size", "160x128", *IMAGENET, "-o", str(tmp_path / "ckpt"))
    assert r.returncode == 0, r.stderr
    assert "output layout logits (the model's 'out' output)" in r.stdout
    model, card = checkpoint.load(tmp_path / "ckpt" / "lraspp_best.safetensors")
    assert card.arch == "torchvision:lraspp_mobilenet_v3_large" and card.arch_args["num_classes"] == 3
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():  # the reloaded checkpoint is the user's model, bit for bit
        assert torch.equal(model(x), original.eval()(x)["out"])
    r = run_cli("export", str(tmp_path / "ckpt" / "lraspp_best.safetensors"), "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr
    stdout = build_and_stream(tmp_path / "m.onnx", tmp_path / "m.fp32.onnx")
    assert "agreement with FP32" in stdout


def test_a_users_own_module(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "mynets.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn


        class Net(nn.Module):
            """A user's detector emitting the YOLOv8 layout [B, 4 + classes, anchors]."""

            def __init__(self, classes: int) -> None:
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 8, 1), nn.ReLU(), nn.Conv2d(16, 4 + classes, 1))

            def forward(self, x):
                y = self.body(x).flatten(2)
                return torch.cat([y[:, :4].sigmoid() * 64, y[:, 4:].sigmoid()], 1)


        def make(classes=2):
            return Net(classes)
    '''))
    torch.manual_seed(0)
    import sys

    sys.path.insert(0, str(code))
    try:
        import mynets

        weights = tmp_path / "net.pt"
        torch.save(mynets.make(classes=3).state_dict(), weights)
    finally:
        sys.path.remove(str(code))
    args = ("import-model", "python:mynets:make(classes=3)", "--code-path", str(code), "--weights", str(weights),
            "--task", "detection", "--classes", "a,b,c", "--input-size", "64", "-o", str(tmp_path / "ckpt"))
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "output layout yolov8" in r.stdout
    card = json.loads(json.dumps(checkpoint.load(tmp_path / "ckpt" / "net.safetensors")[1].to_dict()))
    assert card["source"]["code_path"] == str(code)
    assert run_cli("export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "m.onnx")).returncode == 0
    assert "detection_f1 1.0000" in build_and_stream(tmp_path / "m.onnx", tmp_path / "e.onnx")
    r = run_cli("prune", str(tmp_path / "ckpt"), "--ratio", "0.3", "--data", str(tmp_path), "-o", str(tmp_path / "p"))
    assert_one_line_error(r, "edgekit trains its own detectors and Ultralytics'", "--finetune-epochs 0")
    assert not (tmp_path / "p").exists()


def test_bad_imports_are_one_line_and_write_nothing(lraspp_weights, tmp_path):
    weights, original = lraspp_weights
    out = tmp_path / "ckpt"
    base = ("--task", "segmentation", "--classes", "a,b,c", "--input-size", "160x128", "-o", str(out))
    pickled = tmp_path / "whole_model.pt"
    torch.save(original, pickled)
    assert_one_line_error(run_cli("import-model", LRASPP, "--weights", str(pickled), *base),
                          "not a plain state dict", "torch.save(model.state_dict(), path)")
    five = LRASPP.replace("num_classes=3", "num_classes=5")
    assert_one_line_error(run_cli("import-model", five, "--weights", str(weights), *base),
                          "weight 'classifier.low_classifier.weight' has shape (3, 40, 1, 1)",
                          "the model's is (5, 40, 1, 1)")
    assert_one_line_error(run_cli("import-model", "python:nowhere.nets:make()", *base), "cannot import nowhere.nets")
    assert_one_line_error(run_cli("import-model", "torchvision:no_such_net()", *base), "building it failed")
    assert_one_line_error(run_cli("import-model", "keras:resnet50", *base), "expected torchvision:NAME")
    assert_one_line_error(run_cli("import-model", LRASPP, "--weights", str(weights), "--task", "segmentation",
                                  "--classes", "a,b", "--input-size", "160x128", "-o", str(out)),
                          "outputs output0 [1, 3, 128, 160] float32 fit no segmentation layout", "with 2 classes")
    assert not out.exists()


def test_an_imported_model_prunes_and_reloads_bit_exact(lraspp_weights, tmp_path):
    """Torch-Pruning on a user's model: its output layers found from the graph (LRASPP has two classifiers),
    the pruned shapes replayed onto the model built again from its source, the weights loaded as they were."""
    from edgekit.build.pruning.channels import output_layers, prune_channels, pruned_card

    weights, _ = lraspp_weights
    r = run_cli("import-model", LRASPP, "--weights", str(weights), "--task", "segmentation", "--classes",
                "background,road,car", "--input-size", "160x128", *IMAGENET, "-o", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    model, card = checkpoint.load(tmp_path / "c")
    heads = output_layers(model, card)
    names = {m: n for n, m in model.named_modules()}
    assert sorted(names[m] for m in heads) == ["model.classifier.high_classifier", "model.classifier.low_classifier"]
    before = sum(p.numel() for p in model.parameters())
    prune_channels(model, card, 0.3, "l2", 8)
    assert sum(p.numel() for p in model.parameters()) < 0.8 * before
    checkpoint.save(model, pruned_card(card, model, {"ratio": 0.3}, "lraspp-p30"), tmp_path / "p" / "pruned")
    again, again_card = checkpoint.load(tmp_path / "p" / "pruned.safetensors")
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))
    # and the command a user types, then the rest of the way
    r = run_cli("prune", str(tmp_path / "c"), "--ratio", "0.3", "--finetune-epochs", "0", "--report-duration", "0.2",
                "-o", str(tmp_path / "pruned"), "-q")
    assert r.returncode == 0, r.stderr
    assert run_cli("export", str(tmp_path / "pruned" / "pruned.safetensors"), "-o",
                   str(tmp_path / "p.onnx")).returncode == 0
    calib = tmp_path / "calib"
    calib.mkdir()
    import cv2
    import numpy as np

    for i in range(4):
        cv2.imwrite(str(calib / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (128, 160, 3), np.uint8))
    r = run_cli("build-engine", str(tmp_path / "p.onnx"), "-o", str(tmp_path / "p.int8.onnx"), "--backend",
                "onnxruntime", "--precision", "int8", "--calib", str(calib), "--calib-size", "4")
    assert r.returncode == 0, r.stderr
    s = run_cli("run-stream", str(tmp_path / "p.int8.onnx"), "synthetic://?size=320x240&fps=0", "--max-frames", "3",
                "-o", str(tmp_path / "s"), "-q", "--no-video")
    assert s.returncode == 0, s.stderr


def test_an_imported_segmenter_is_pruned_and_fine_tuned(tiny_synth, tmp_path):
    """prune's default path fine-tunes through the training loop: for a user's segmenter too, with its own
    preprocessing and outputs kept; a user's detector is refused in one line (edgekit's detection loss
    knows edgekit's heads only)."""
    from edgekit.runtime.data import datasets

    names = datasets.load_segmentation(tiny_synth, "train").classes
    source = LRASPP.replace("num_classes=3", f"num_classes={len(names)}")
    r = run_cli("import-model", source, "--task", "segmentation", "--classes", ",".join(names), "--input-size",
                "128x96", *IMAGENET, "--name", "lraspp", "-o", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    r = run_cli("prune", str(tmp_path / "c"), "--ratio", "0.3", "--finetune-epochs", "1", "--data", str(tiny_synth),
                "--max-train-images", "8", "--max-val-images", "4", "--report-duration", "0.2", "--device", "cpu",
                "-o", str(tmp_path / "p"), "-q")
    assert r.returncode == 0, r.stderr
    model, card = checkpoint.load(tmp_path / "p" / "best.safetensors")
    assert card.arch.startswith("torchvision:") and card.mean == (0.485, 0.456, 0.406) and card.extra["pruning"]
    assert card.extra["source"]["output"] == "out"


def test_ignore_layers_keeps_them_whole(lraspp_weights, tmp_path):
    from edgekit.build.pruning.channels import prune_channels

    weights, _ = lraspp_weights
    r = run_cli("import-model", LRASPP, "--weights", str(weights), "--task", "segmentation", "--classes", "a,b,c",
                "--input-size", "160x128", "-o", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    model, card = checkpoint.load(tmp_path / "c")
    kept = "model.backbone.4.block.0.0"
    channels = dict(model.named_modules())[kept].out_channels
    prune_channels(model, card, 0.5, "l2", 8, keep=[kept])
    assert dict(model.named_modules())[kept].out_channels == channels
    r = run_cli("prune", str(tmp_path / "c"), "--ratio", "0.3", "--finetune-epochs", "0", "--ignore-layers",
                "model.backbone.4.blok", "-o", str(tmp_path / "p"))
    assert_one_line_error(r, "--ignore-layers model.backbone.4.blok: the model has no such layer", "did you mean")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("source, code", [
    ("smp:Unet(encoder_name='resnet18', encoder_weights=None, classes=3)", None),
    ("python:timmhead:make(classes=3)", '''
import timm
import torch.nn.functional as F
from torch import nn


class TimmHead(nn.Module):
    """A timm backbone's features with the user's own segmentation head."""

    def __init__(self, classes):
        super().__init__()
        self.backbone = timm.create_model("mobilenetv3_small_050", pretrained=False, features_only=True)
        self.head = nn.Conv2d(self.backbone.feature_info.channels()[-1], classes, 1)

    def forward(self, x):
        return F.interpolate(self.head(self.backbone(x)[-1]), size=x.shape[2:], mode="bilinear")


def make(classes):
    return TimmHead(classes)
'''),
])
def test_library_and_timm_backed_segmenters(tmp_path, source, code):
    pytest.importorskip("timm")
    pytest.importorskip("segmentation_models_pytorch")
    extra = []
    if code:
        (tmp_path / "timmhead.py").write_text(code)
        extra = ["--code-path", str(tmp_path)]
    r = run_cli("import-model", source, *extra, "--task", "segmentation", "--classes", "a,b,c", "--input-size", "96x64",
                *IMAGENET, "--name", "m", "-o", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert "output layout logits" in r.stdout
    assert run_cli("export", str(tmp_path / "c"), "-o", str(tmp_path / "m.onnx")).returncode == 0
    assert "mask_iou 1.0000, pixel agreement 1.0000" in build_and_stream(tmp_path / "m.onnx", tmp_path / "e.onnx")


def test_a_users_module_with_two_outputs(tmp_path):
    """A user's instance segmenter in the YOLOv8-seg layout (boxes + coefficients, and prototypes): both outputs
    exported under their own names and recognised together."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "segnets.py").write_text(textwrap.dedent('''
        import torch
        import torch.nn.functional as F
        from torch import nn


        class Seg(nn.Module):
            def __init__(self, classes):
                super().__init__()
                self.stem = nn.Conv2d(3, 16, 3, 4, 1)
                self.head = nn.Conv2d(16, 4 + classes + 32, 1)
                self.protos = nn.Conv2d(16, 32, 1)

            def forward(self, x):
                f = F.relu(self.stem(x))
                y = self.head(F.avg_pool2d(f, 2)).flatten(2)
                boxes = y[:, :4].sigmoid() * x.shape[-1]
                return torch.cat([boxes, y[:, 4:6].sigmoid(), y[:, 6:]], 1), self.protos(f)


        def make(classes=2):
            return Seg(classes)
    '''))
    r = run_cli("import-model", "python:segnets:make(classes=2)", "--code-path", str(code), "--task",
                "instance_segmentation", "--classes", "a,b", "--input-size", "64", "-o", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert "output layout yolov8_seg" in r.stdout
    assert run_cli("export", str(tmp_path / "c"), "-o", str(tmp_path / "m.onnx")).returncode == 0
    assert "instance_f1" in build_and_stream(tmp_path / "m.onnx", tmp_path / "e.onnx")


def test_a_torchvision_detector_goes_the_whole_way(tmp_path):
    """torchvision's SSDlite takes a list of images and returns a dict per image, suppressed in its graph: it
    imports as a model of one image returning boxes, labels and scores (the torchvision layout), its export is
    checked decoded (the number of boxes may differ by a near-tie), and it prunes, builds and streams."""
    torchvision = pytest.importorskip("torchvision")
    source = "torchvision:ssdlite320_mobilenet_v3_large(num_classes=4, weights=None, weights_backbone=None)"
    torch.manual_seed(0)
    net = torchvision.models.get_model("ssdlite320_mobilenet_v3_large", num_classes=4, weights=None,
                                       weights_backbone=None)
    weights = tmp_path / "ssd_best.pt"
    torch.save(net.state_dict(), weights)
    r = run_cli("import-model", source, "--weights", str(weights), "--task", "detection", "--classes", "a,b,c",
                "--input-size", "160", "-o", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    assert "output layout torchvision (the detections of its one image)" in r.stdout
    model, card = checkpoint.load(tmp_path / "c")
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        boxes, labels, scores = model(x)
        own = net.eval()([x[0]])[0]
    assert torch.equal(boxes, own["boxes"]) and torch.equal(labels, own["labels"]) and len(boxes) > 0
    r = run_cli("prune", str(tmp_path / "c"), "--ratio", "0.3", "--finetune-epochs", "0", "--report-duration", "0.2",
                "-q", "-o", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    r = run_cli("export", str(tmp_path / "p" / "pruned.safetensors"), "-o", str(tmp_path / "p.onnx"))
    assert r.returncode == 0, r.stderr
    assert "decoded results: detection_f1" in r.stdout
    build_and_stream(tmp_path / "p.onnx", tmp_path / "p.engine.onnx")
