"""Instance segmentation with the YOLOv8-seg layout against Ultralytics' own post-processing.

No trained YOLOv8-seg ships in a pip package, so a small module emits the layout: planted boxes, class scores
and mask coefficients over prototypes that draw known shapes (discs, a box-filling square, random blobs),
exported to ONNX and run by ONNX Runtime on letterboxed frames. edgekit's decoding is compared with a reference
written here on torch/torchvision from ultralytics/utils/ops.py (non_max_suppression, process_mask with upsample,
crop_mask, scale_boxes, scale_masks). Mask mAP is checked on `edgekit data synth` instance annotations against
faster-coco-eval called directly."""

import json
import warnings

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import torchvision

from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data import datasets
from edgekit.runtime.data.synth import render_image
from edgekit.runtime.data.writer import write_dataset
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.measure.evaluate import truth_of
from edgekit.runtime.measure.metrics import instance_map
from edgekit.runtime.preprocess import preprocess
from edgekit.runtime.tasks.instance import Instances
from tests.conftest import run_cli

CLASSES = ["a", "b"]
SIZE = 160  # network input; prototypes 40x40
NM = 32
ANCHORS = 20 * 20 + 10 * 10 + 5 * 5  # strides 8, 16, 32 at 160
DISCS = {0: (50.0, 70.0, 16.0), 1: (120.0, 100.0, 12.0), 2: (80.0, 110.0, 14.0)}  # channel: cx, cy, r (input px)
FILL = NM - 1  # the channel that is 1 everywhere: the mask is the box itself
# (box xyxy in input pixels, class, score, coefficients)
PLANTED = [
    ((34, 54, 66, 86), 0, 0.90, {0: 1.0}),  # disc in its box
    ((36, 55, 68, 87), 0, 0.60, {0: 1.0}),  # the same disc again: NMS removes it
    ((100, 20, 140, 60), 1, 0.85, {FILL: 1.0}),  # a square whose top third lies in the letterbox padding
    ((108, 88, 132, 112), 1, 0.80, {1: 1.0}),  # a smaller disc of the other class
    ((20, 90, 90, 125), 0, 0.75, "random"),  # a blob from the noise prototypes
    ((72, 102, 88, 118), 0, 0.65, {2: 1.0}),  # a disc larger than its box: the box crops it square
    ((60, 40, 90, 60), 1, 0.70, {FILL: -1.0}),  # a box whose mask is empty: Ultralytics drops it
    ((10, 10, 30, 30), 0, 0.20, {FILL: 1.0}),  # under the score threshold
]


def prototypes(gen: torch.Generator) -> torch.Tensor:
    """[32, 40, 40]: signed distances to the discs (positive inside), smooth noise, and a constant channel."""
    centres = (torch.arange(SIZE // 4, dtype=torch.float32) + 0.5) * 4 - 0.5  # where each prototype pixel sits
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    noise = F.interpolate(torch.randn(1, NM, 10, 10, generator=gen), size=(SIZE // 4, SIZE // 4), mode="bicubic")[0]
    p = noise.clone()
    for ch, (cx, cy, r) in DISCS.items():
        p[ch] = (r - torch.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)) / 4
    p[FILL] = 1.0
    return p


class TinyYoloV8Seg(torch.nn.Module):
    """What an exported YOLOv8-seg gives (Segment head at inference: boxes cx, cy, w, h in input pixels, class
    sigmoids, mask coefficients; prototypes at a quarter of the input), from planted values, plus a faint
    image-dependent term on the other anchors so the graph computes from its input."""

    def __init__(self, planted=PLANTED, seed: int = 0, noise_protos: bool = False) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        head = torch.zeros(4 + len(CLASSES) + NM, ANCHORS)
        head[:2] = torch.rand(2, ANCHORS, generator=gen) * SIZE
        head[2:4] = 4 + torch.rand(2, ANCHORS, generator=gen) * 20
        head[4:4 + len(CLASSES)] = torch.rand(len(CLASSES), ANCHORS, generator=gen) * 0.05  # background
        head[4 + len(CLASSES):] = torch.randn(NM, ANCHORS, generator=gen)
        for k, (box, cls, score, coef) in enumerate(planted):
            a = 7 + 12 * k  # spread over the anchors
            x1, y1, x2, y2 = box
            head[:4, a] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=torch.float32)
            head[4:4 + len(CLASSES), a] = 0.01
            head[4 + cls, a] = score
            c = torch.zeros(NM)
            if coef == "random":
                c[3:FILL] = torch.randn(FILL - 3, generator=gen)
            else:
                for ch, v in coef.items():
                    c[ch] = v
            head[4 + len(CLASSES):, a] = c
        self.register_buffer("head", head)
        background = torch.ones_like(head)  # the planted anchors stay exact: their boxes decide the crops
        background[:, [7 + 12 * k for k in range(len(planted))]] = 0
        self.register_buffer("background", background)
        protos = prototypes(gen)
        if noise_protos:
            protos = F.interpolate(torch.randn(1, NM, 8, 8, generator=gen), size=(SIZE // 4, SIZE // 4),
                                   mode="bicubic")[0]
        self.register_buffer("protos", protos)

    def forward(self, x: torch.Tensor):
        return (self.head + 1e-4 * x.mean() * self.background)[None], self.protos[None]


def export(module: torch.nn.Module, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(path), input_names=["images"],
                          output_names=["output0", "output1"], opset_version=17, dynamo=False)
    return str(path)


@pytest.fixture(scope="module")
def planted_onnx(tmp_path_factory):
    return export(TinyYoloV8Seg(), tmp_path_factory.mktemp("seg") / "tiny_yolov8_seg.onnx")


@pytest.fixture(scope="module")
def noise_onnx(tmp_path_factory):
    """Random boxes over random prototypes: masks with many edges, where any resampling difference shows."""
    gen = torch.Generator().manual_seed(1)
    planted = []
    for _ in range(40):
        x1, y1 = (torch.rand(2, generator=gen) * 120).tolist()
        w, h = (12 + torch.rand(2, generator=gen) * 40).tolist()
        cls, score = int(torch.randint(0, 2, (1,), generator=gen)), 0.3 + 0.7 * float(torch.rand(1, generator=gen))
        planted.append(((x1, y1, x1 + w, y1 + h), cls, score, "random"))
    return export(TinyYoloV8Seg(planted, seed=1, noise_protos=True),
                  tmp_path_factory.mktemp("seg") / "noise_yolov8_seg.onnx")


def card(**kw) -> ModelCard:
    return ModelCard(name="tiny-seg", task="instance_segmentation", arch="external", classes=CLASSES,
                     input_size=(SIZE, SIZE), iou_threshold=0.5, **kw)


# --- the reference: ultralytics/utils/ops.py -------------------------------------------------------------------
def crop_mask(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """ops.crop_mask (the comparison form, which every version has and Ultralytics uses on GPU)."""
    _, h, w = masks.shape
    x1, y1, x2, y2 = torch.chunk(boxes[:, :, None], 4, 1)
    r = torch.arange(w, dtype=x1.dtype)[None, None, :]
    c = torch.arange(h, dtype=x1.dtype)[None, :, None]
    return masks * ((r >= x1) * (r < x2) * (c >= y1) * (c < y2))


def scale_masks(masks: torch.Tensor, shape) -> torch.Tensor:
    """ops.scale_masks: cut the letterbox padding, resize bilinearly."""
    im1_h, im1_w = masks.shape[2:]
    im0_h, im0_w = shape
    if (im1_h, im1_w) == (im0_h, im0_w):
        return masks
    gain = min(im1_h / im0_h, im1_w / im0_w)
    pad_w, pad_h = (im1_w - im0_w * gain) / 2, (im1_h - im0_h * gain) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    bottom, right = im1_h - round(pad_h + 0.1), im1_w - round(pad_w + 0.1)
    return F.interpolate(masks[..., top:bottom, left:right].float(), shape, mode="bilinear", align_corners=False)


def ultralytics_reference(out0: np.ndarray, out1: np.ndarray, params: DecodeParams, frame_hw):
    """(boxes in frame pixels, scores, classes, frame masks) as Ultralytics' SegmentationPredictor gives them
    (retina_masks off) with the masks brought to the frame by scale_masks and thresholded at 0.5."""
    pred, protos = torch.from_numpy(out0[0]).T, torch.from_numpy(out1[0])
    nc = pred.shape[1] - 4 - NM
    box = torchvision.ops.box_convert(pred[:, :4], "cxcywh", "xyxy")
    conf, j = pred[:, 4:4 + nc].max(1)
    keep = conf > params.score_threshold
    box, conf, j, coef = box[keep], conf[keep], j[keep], pred[keep, 4 + nc:]
    i = torchvision.ops.batched_nms(box, conf, j, params.iou_threshold)[:params.max_detections]
    box, conf, j, coef = box[i], conf[i], j[i], coef[i]
    c, mh, mw = protos.shape
    masks = (coef @ protos.float().view(c, -1)).view(-1, mh, mw)  # process_mask
    ratios = torch.tensor([[mw / SIZE, mh / SIZE, mw / SIZE, mh / SIZE]])
    masks = crop_mask(masks, box * ratios)
    masks = F.interpolate(masks[None], (SIZE, SIZE), mode="bilinear", align_corners=False)[0].gt(0)
    has = masks.sum((-2, -1)) > 0  # the predictor keeps only predictions with masks
    box, conf, j, masks = box[has], conf[has], j[has], masks[has]
    gain = min(SIZE / frame_hw[0], SIZE / frame_hw[1])  # scale_boxes + clip_boxes
    pad = (round((SIZE - frame_hw[1] * gain) / 2 - 0.1), round((SIZE - frame_hw[0] * gain) / 2 - 0.1))
    box = (box - torch.tensor([pad[0], pad[1], pad[0], pad[1]])) / gain
    box[:, 0::2] = box[:, 0::2].clamp(0, frame_hw[1])
    box[:, 1::2] = box[:, 1::2].clamp(0, frame_hw[0])
    frame_masks = scale_masks(masks[None], frame_hw)[0] > 0.5
    return box.numpy(), conf.numpy(), j.numpy(), frame_masks.numpy()


def decode_both(onnx_path: str, frame_wh):
    c = card()
    frame = render_image(seed=2, index=0, size=frame_wh).image
    tensor, transform = preprocess(frame, c)
    out0, out1 = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"images": tensor})
    params = DecodeParams.of(c)
    found = registry.layout("yolov8_seg").decode({"output0": out0[0], "output1": out1[0]}, transform, c, params)
    ref = ultralytics_reference(out0, out1, params, (frame_wh[1], frame_wh[0]))
    return found, ref, out0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_decode_matches_ultralytics_and_draws_the_planted_shapes(planted_onnx):
    found, (boxes, scores, classes, masks), _ = decode_both(planted_onnx, (200, 120))  # 0.8x, 32 rows of padding
    # 7 boxes clear the threshold; NMS removes the repeated disc; the empty-mask box is dropped
    assert len(found) == len(boxes) == 5
    order = np.argsort(-found.scores, kind="stable")
    np.testing.assert_allclose(found.boxes[order], boxes, atol=1e-3)
    np.testing.assert_allclose(found.scores[order], scores, atol=1e-6)
    assert found.classes[order].tolist() == classes.tolist() == [0, 1, 1, 0, 0]
    assert found.masks.shape == (5, 120, 200) and found.masks.dtype == bool
    assert np.array_equal(found.masks[order], masks)  # pixel for pixel (see test_decode_on_noise_masks)

    # what a user sees, in frame pixels (input x 1.25, 40 rows of padding cut): each shape where it was planted.
    # process_mask zeroes the prototype pixels outside the box, and a zero beside a positive logit upsamples to
    # > 0 up to that zero's centre, so a mask may reach one prototype pixel (4 input, 5 frame pixels) past its box.
    def shape(kind: str, x: float, y: float, r: float) -> np.ndarray:
        img = np.zeros((120, 200), np.uint8)
        cx, cy, rr = round(x * 1.25), round((y - 32) * 1.25), round(r * 1.25)
        if kind == "disc":
            cv2.circle(img, (cx, cy), rr, 1, -1)
        else:
            img[max(0, cy - rr):cy + rr, cx - rr:cx + rr] = 1
        return img.astype(bool)

    def box_grown(b: np.ndarray) -> np.ndarray:
        img = np.zeros((120, 200), bool)
        x1, y1, x2, y2 = b
        img[max(0, int(y1) - 5):int(np.ceil(y2)) + 5, max(0, int(x1) - 5):int(np.ceil(x2)) + 5] = True
        return img

    expected = [shape("disc", *DISCS[0]), shape("square", 120, 40, 20), shape("disc", *DISCS[1])]
    for k, want in zip(order[:3], expected):
        got = found.masks[k]
        assert (got & want).sum() / want.sum() > 0.97  # covers the shape
        assert not (got & ~box_grown(found.boxes[k])).any()  # and stays by its box
    assert iou(found.masks[order[0]], expected[0]) > 0.85
    # the disc larger than its box is cut square by it: 16x16 input pixels, 20x20 in the frame
    cut = found.masks[order[4]]
    assert (cut & shape("square", 80, 110, 8)).sum() / 400 > 0.97
    assert not (cut & ~box_grown(found.boxes[order[4]])).any()


@pytest.mark.parametrize("frame_wh", [(200, 120), (400, 240), (100, 60)], ids=["0.8x", "0.4x", "1.6x"])
def test_decode_on_noise_masks(noise_onnx, frame_wh):
    """40 random blobs: the same boxes to 1e-3 px and the same masks pixel for pixel. Pixel-exact is expected,
    not only a high IoU: edgekit computes the bilinear taps in float32 as PyTorch's kernel does and sums in its
    order, so even values that land on a threshold (the 0.5 of a binary mask resized) fall the same way."""
    found, (boxes, scores, classes, masks), _ = decode_both(noise_onnx, frame_wh)
    assert len(found) == len(boxes) > 20
    order = np.argsort(-found.scores, kind="stable")
    np.testing.assert_allclose(found.boxes[order], boxes, atol=1e-3)
    assert found.classes[order].tolist() == classes.tolist()
    differing = (found.masks[order] != masks).sum((1, 2))
    assert differing.sum() <= 2, differing  # a logit within float rounding of 0 may flip
    assert min(iou(a, b) for a, b in zip(found.masks[order], masks)) >= 0.99


def test_recognised_by_its_two_outputs_and_refused_with_the_wrong_classes():
    seg, c = registry.layout("yolov8_seg"), card()
    outs = [TensorSpec("output0", (1, 4 + 2 + 32, ANCHORS), "float32"),
            TensorSpec("output1", (1, 32, 40, 40), "float32")]
    assert seg.recognises(outs, c) and seg.recognises(outs[::-1], c)
    assert not seg.recognises(outs[:1], c)  # a detector's single output
    assert not registry.layout("yolov8").recognises(outs, card(output_layout="yolov8_seg"))
    three = ModelCard(name="m", task="instance_segmentation", arch="external", classes=["a", "b", "c"],
                      input_size=(SIZE, SIZE))
    assert not seg.recognises(outs, three)
    seg.check(outs, c, "m.onnx")
    with pytest.raises(EdgekitError) as e:
        seg.check(outs, three, "m.onnx")
    assert "\n" not in str(e.value)
    assert str(e.value) == ("m.onnx: output 'output0' has 38 channels (shape [1, 38, 525]), which is 4 box values + "
                            "classes + 32 mask coefficients ('output1' has 32 prototypes), so 2 classes, but the card "
                            "names 3; pass --classes with 2 names")


# --- accuracy, agreement, JSON -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_instances(tmp_path_factory):
    out = tmp_path_factory.mktemp("inst") / "synth"
    write_dataset(out, seed=4, counts={"train": 6, "val": 0, "test": 0}, size=(96, 64), videos=0, progress=False)
    return out


def truths(root):
    ds = registry.task("instance_segmentation").load_dataset(root, "train")
    return ds, [truth_of(datasets.load_sample(ds, i)) for i in range(len(ds))]


def test_synth_writes_instance_masks_that_agree_with_boxes_and_class_masks(synth_instances):
    ds, gts = truths(synth_instances)
    seg = datasets.load_segmentation(synth_instances, "train")
    coco = json.loads((synth_instances / "annotations" / "train.json").read_text())
    assert set(coco["annotations"][0]) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd",
                                           "segmentation"}
    for i, t in enumerate(gts):
        class_map = datasets.load_sample(seg, i)[3]
        assert t["mask"].shape == (len(t["boxes"]), 64, 96)
        for m, (x1, y1, x2, y2), c in zip(t["mask"], t["boxes"].astype(int), t["classes"]):
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)  # the box is the mask's
            assert (class_map[m] == c + 1).all()
        assert (np.any(t["mask"], 0) == (class_map > 0)).all()  # every labelled pixel belongs to one object
    assert [a["area"] for a in coco["annotations"]] == [int(m.sum()) for t in gts for m in t["mask"]]


def perfect(t) -> Instances:
    n = len(t["boxes"])
    return Instances(t["boxes"].astype(np.float32), np.linspace(0.9, 0.5, n).astype(np.float32),
                     t["classes"], t["mask"].copy())


def coco_eval_directly(root, preds):
    """Mask mAP@0.5:0.95 and @0.5 from faster-coco-eval on the annotation file itself."""
    import contextlib
    import io

    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "train.json"))
        dets = [{"image_id": i, "category_id": int(c) + 1, "score": float(s), "segmentation": datasets.rle_encode(m)}
                for i, p in enumerate(preds, start=1) for s, c, m in zip(p.scores, p.classes, p.masks)]
        ev = COCOeval_faster(gt, gt.loadRes(dets), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def score(ds, gts, preds):
    task = registry.task("instance_segmentation")
    acc = task.accuracy(ModelCard(name="m", task=task.name, arch="external", classes=ds.classes,
                                  input_size=(64, 96)))
    for p, t in zip(preds, gts):
        acc.add(p, t)
    return acc.summary()


def test_mask_map_is_one_for_the_truth_and_drops_with_a_halved_mask(synth_instances):
    ds, gts = truths(synth_instances)
    preds = [perfect(t) for t in gts]
    m = score(ds, gts, preds)
    assert m["mask_mAP50"] == m["mask_mAP50_95"] == m["box_mAP50"] == m["box_mAP50_95"] == 1.0
    assert coco_eval_directly(synth_instances, preds) == (1.0, 1.0)

    big = max(((i, k) for i, t in enumerate(gts) for k in range(len(t["mask"]))),
              key=lambda ik: gts[ik[0]]["mask"][ik[1]].sum())
    halved = preds[big[0]].masks[big[1]]
    ys, xs = np.nonzero(halved)
    halved[:, : (xs.min() + xs.max() + 1) // 2] = False  # its left half gone: IoU about 0.5 with the truth
    m2 = score(ds, gts, preds)
    assert m2["mask_mAP50_95"] < 1.0 and m2["box_mAP50_95"] == 1.0  # the box is still right
    direct = coco_eval_directly(synth_instances, preds)
    assert (m2["mask_mAP50_95"], m2["mask_mAP50"]) == pytest.approx(direct, abs=1e-9)
    as_arrays = instance_map([{"masks": p.masks, "scores": p.scores, "classes": p.classes} for p in preds],
                             [{"masks": t["mask"], "classes": t["classes"]} for t in gts], len(ds.classes))
    assert (as_arrays["mask_mAP50_95"], as_arrays["mask_mAP50"]) == pytest.approx(direct, abs=1e-9)
    assert registry.task("instance_segmentation").accuracy_text(m2).startswith("mask mAP@0.5 ")


def test_agreement_is_the_f1_of_instances_matched_by_mask(synth_instances):
    task = registry.task("instance_segmentation")
    _, gts = truths(synth_instances)
    ref = perfect(max(gts, key=lambda t: len(t["boxes"])))
    n = len(ref)
    assert n >= 2
    assert task.agreement(ref, ref) == 1.0
    keep = np.arange(1, n)
    missing = Instances(ref.boxes[keep], ref.scores[keep], ref.classes[keep], ref.masks[keep])
    assert task.agreement(ref, missing) == pytest.approx(2 * (n - 1) / (2 * n - 1))
    other_class = Instances(ref.boxes, ref.scores, 1 - ref.classes.clip(0, 1), ref.masks)
    assert task.agreement(ref, other_class) < 1.0


def test_json_masks_are_coco_rle_that_decode_to_the_same_masks(planted_onnx):
    from faster_coco_eval.core import mask as coco_mask

    found, _, _ = decode_both(planted_onnx, (200, 120))
    line = json.loads(json.dumps(registry.task("instance_segmentation").to_json(found, card())))
    assert len(line["detections"]) == len(found)
    for d, m in zip(line["detections"], found.masks):
        assert d["mask"]["size"] == [120, 200]
        assert np.array_equal(datasets.rle_decode(d["mask"]), m)
        assert np.array_equal(coco_mask.decode(d["mask"]).astype(bool), m)  # pycocotools' decoder agrees
        assert d["mask"]["counts"] == coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
    img = np.zeros((120, 200, 3), np.uint8)
    registry.task("instance_segmentation").draw(img, found, card())
    assert (img[found.masks[0]] > 0).all()  # the overlay covers the mask


def test_rle_is_pycocotools_rle_on_edge_cases():
    from faster_coco_eval.core import mask as coco_mask

    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((5, 7), bool), rng.random((9, 11)) > 0.5]
    corner = np.zeros((6, 4), bool)
    corner[-1, -1] = corner[0, 0] = True  # runs that start and end on an object pixel
    masks.append(corner)
    for m in masks:
        rle = datasets.rle_encode(m)
        assert rle["counts"] == coco_mask.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert np.array_equal(datasets.rle_decode(rle), m)


def test_polygon_and_uncompressed_rle_annotations_load(tmp_path):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "val" / "a.png"), np.zeros((20, 30, 3), np.uint8))
    ring = np.zeros((20, 30), bool)
    ring[2:8, 3:9] = True
    ring[4:6, 5:7] = False  # a hole: RLE keeps it
    runs = datasets._rle_runs(datasets.rle_encode(ring)["counts"])
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 30, "height": 20}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 10, 10, 5], "iscrowd": 0,
                 "segmentation": [[10, 10, 20, 10, 20, 15, 10, 15]]},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [3, 2, 6, 6], "iscrowd": 0,
                 "segmentation": {"size": [20, 30], "counts": runs}}]}
    (tmp_path / "annotations" / "val.json").write_text(json.dumps(coco))
    ds = registry.task("instance_segmentation").load_dataset(tmp_path, "val")
    t = truth_of(datasets.load_sample(ds, 0))
    assert t["classes"].tolist() == [1, 0] and t["mask"].shape == (2, 20, 30)
    ys, xs = np.nonzero(t["mask"][0])  # pycocotools' rasterisation of the polygon
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (10, 20, 10, 15)
    assert np.array_equal(t["mask"][1], ring)


def test_detection_only_annotations_are_refused_in_one_line(tmp_path, synth_instances):
    import shutil

    root = tmp_path / "det"
    shutil.copytree(synth_instances, root)
    path = root / "annotations" / "train.json"
    coco = json.loads(path.read_text())
    for a in coco["annotations"]:
        del a["segmentation"]
    path.write_text(json.dumps(coco))
    with pytest.raises(EdgekitError, match="annotation 1 has no 'segmentation'"):
        registry.task("instance_segmentation").load_dataset(root, "train")
    assert len(datasets.load_detection(root, "train")) == 6  # detection still reads it


# --- end to end ----------------------------------------------------------------------------------------------------
def test_build_engine_recognises_the_layout_and_run_stream_writes_masks(planted_onnx, tmp_path):
    engine = tmp_path / "e.onnx"
    r = run_cli("build-engine", planted_onnx, "-o", str(engine), "--backend", "onnxruntime", "--task",
                "instance_segmentation", "--classes", "a,b")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "e.onnx.manifest.json").read_text())
    assert manifest["card"]["output"]["layout"] == "yolov8_seg"
    assert manifest["agreement"]["instance_f1"] == 1.0
    out = tmp_path / "run"
    r = run_cli("run-stream", str(engine), "synthetic://?size=160x120&fps=0", "--max-frames", "3", "-o", str(out),
                "-q")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert len(line["detections"]) == 5
        for d in line["detections"]:
            m = datasets.rle_decode(d["mask"])
            assert m.shape == (120, 160) and m.any()
