import json

import cv2
import numpy as np

from edgekit.runtime.data import datasets
from edgekit.runtime.data.synth import CLASSES, VideoScene, render_image
from edgekit.runtime.data.writer import write_dataset


def test_same_seed_same_image_other_seed_other_image():
    a, b, c = render_image(7, 3), render_image(7, 3), render_image(8, 3)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)


def test_image_does_not_depend_on_how_many_were_generated(tmp_path):
    write_dataset(tmp_path / "a", seed=1, counts={"train": 2, "val": 1, "test": 1}, size=(96, 64), videos=0,
                  progress=False)
    write_dataset(tmp_path / "b", seed=1, counts={"train": 4, "val": 1, "test": 1}, size=(96, 64), videos=0,
                  progress=False)
    for rel in ("labels/train/000001.txt", "masks/train/000001.png", "images/train/000001.jpg"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_labels_agree_across_formats_and_masks(tiny_synth):
    coco = datasets.load_detection(tiny_synth, "train", "coco")
    yolo = datasets.load_detection(tiny_synth, "train", "yolo")
    seg = datasets.load_segmentation(tiny_synth, "train")
    assert coco.classes == yolo.classes == list(CLASSES)
    assert seg.classes == ["background", *CLASSES]
    per_image = []
    for i in range(len(coco)):
        img, cboxes, ccls, _ = datasets.load_sample(coco, i)
        _, yboxes, ycls, _ = datasets.load_sample(yolo, i)
        _, _, _, mask = datasets.load_sample(seg, i)
        assert np.array_equal(ccls, ycls)
        np.testing.assert_allclose(cboxes, yboxes, atol=0.05)
        for (x1, y1, x2, y2), c in zip(cboxes.astype(int), ccls):
            # the box is tight around pixels of its class in the mask
            assert (mask[y1:y2, x1:x2] == c + 1).any()
        per_image.append(len(ccls))
    # the generator places 1 to 6 shapes per image, the first always fits: a lost label shows here
    assert min(per_image) >= 1 and max(per_image) <= 6, per_image


def test_summary_and_video_ground_truth(tiny_synth):
    balance = json.loads((tiny_synth / "class_balance.json").read_text())
    assert balance["splits"]["train"]["images"] == 24
    assert sum(balance["splits"]["train"]["instances"].values()) > 24
    cap = cv2.VideoCapture(str(tiny_synth / "videos" / "stream_00.mp4"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 6
    gt = [json.loads(ln) for ln in (tiny_synth / "videos" / "stream_00.gt.jsonl").read_text().splitlines()]
    assert [g["frame"] for g in gt] == list(range(6))
    masks = np.load(tiny_synth / "videos" / "stream_00.masks.npz")["masks"]
    assert masks.shape == (6, 120, 160)


def test_video_objects_move():
    scene = VideoScene(0, (320, 240), speed=0.02)
    first = scene.next()
    for _ in range(10):
        last = scene.next()
    assert len(first.boxes) and not np.allclose(first.boxes[:1], last.boxes[:1])
