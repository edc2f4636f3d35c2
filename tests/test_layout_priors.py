"""The priors layout against RetinaFace's own post-processing: small prior-box heads that emit loc/conf for planted
boxes (encoded against the priors with box_utils.encode, duplicates from neighbouring priors included), exported to
ONNX and run by ONNX Runtime on a letterboxed frame, decoded by edgekit and by the reference written from
biubug6/Pytorch_Retinaface (layers/functions/prior_box.py `PriorBox`, utils/box_utils.py `decode`, detect.py:
threshold, NMS, `boxes * scale`) on torchvision.ops.batched_nms, per class as SSD's `Detect` suppresses."""

import math
from itertools import product
from typing import Any, Dict, List, NamedTuple, Tuple

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from conftest import assert_one_line_error, build_and_stream, export_onnx, run_cli

import edgekit
from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.data.synth import render_image
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.layouts.priors import roles
from edgekit.runtime.preprocess import preprocess

INPUT = (72, 100)  # (h, w): not a multiple of the steps, so PriorBox's ceil() counts
FRAME = (300, 150)  # (w, h): letterboxed at 1/3 into 100x50, 11 rows of padding above and below
GAIN, PAD = 1 / 3, (0.0, 11.0)

# data/config.py cfg_mnet / cfg_re50, the layout's defaults
RETINAFACE = {"min_sizes": [[16, 32], [64, 128], [256, 512]], "steps": [8, 16, 32], "variance": [0.1, 0.2],
              "clip": False}
# an SSD-style head with priors of its own: four levels, and clip on (the 96-pixel prior is taller than the input)
SSD = {"min_sizes": [[12, 20], [32, 48], [64], [96]], "steps": [8, 16, 32, 64], "variance": [0.1, 0.2], "clip": True}
SSD_PARAMS = {"min_sizes": SSD["min_sizes"], "steps": SSD["steps"], "clip": True}


class Plant(NamedTuple):
    prior: Tuple[float, float, float]  # the prior's centre x, y and size in input pixels (before clip)
    box: Tuple[float, float, float, float]  # the target: centre x, y, width, height in input pixels
    probs: Dict[int, float]  # class (card index) -> probability after softmax
    kept: bool  # survives the threshold (0.25) and NMS (0.5)


FACES = [
    Plant((20, 28, 16), (20, 28, 14, 18), {0: 0.97}, True),
    Plant((28, 28, 16), (21, 28.5, 15, 17), {0: 0.90}, False),  # the same face from the next cell: IoU 0.83
    Plant((20, 28, 32), (20.5, 27.5, 14, 19), {0: 0.80}, False),  # ... and from the cell's larger prior
    Plant((60, 36, 32), (60, 40, 30, 34), {0: 0.93}, True),
    Plant((72, 40, 64), (75, 38, 40, 44), {0: 0.88}, True),  # IoU 0.32 with the one before: kept
    Plant((84, 20, 16), (84, 20, 12, 12), {0: 0.20}, False),  # under the threshold
]
OBJECTS = [  # car, person, sign
    Plant((20, 28, 12), (20, 28, 14, 10), {0: 0.90}, True),
    Plant((20, 28, 20), (21, 28, 15, 11), {0: 0.70}, False),  # a duplicate car
    Plant((56, 40, 32), (56, 40, 20, 36), {1: 0.85}, True),
    Plant((56, 40, 48), (57, 38, 18, 30), {2: 0.60}, True),  # a sign over the person: another class, kept
    Plant((36, 52, 20), (36, 52, 16, 12), {0: 0.50, 1: 0.40}, True),  # one prior, two classes over the threshold
    Plant((96, 32, 96), (80, 36, 36, 44), {2: 0.75}, True),  # on the clipped prior (96x72)
]


class Variant(NamedTuple):
    classes: List[str]
    cfg: Dict[str, Any]
    plants: List[Plant]
    layout_params: Dict[str, Any]
    softmax_in_graph: bool  # biubug6's 'test' phase, which convert_to_onnx.py exports
    landmarks: bool
    output_names: List[str]
    conf_first: bool


VARIANTS = {
    "retinaface head, logits": Variant(["face"], RETINAFACE, FACES, {}, False, False, ["loc", "conf"], False),
    # what convert_to_onnx.py writes: softmax in the graph, landmarks, and only the first output named
    "retinaface export": Variant(["face"], RETINAFACE, FACES, {"softmax": False}, True, True, ["output0"], False),
    # three classes and the background: conf [N, 4] looks like loc; the names tell them apart, not the order
    "ssd, 3 classes": Variant(["car", "person", "sign"], SSD, OBJECTS, SSD_PARAMS, False, False, ["conf", "loc"],
                              True),
}


def biubug6_priors(cfg: Dict[str, Any], image_size: Tuple[int, int]) -> torch.Tensor:
    """layers/functions/prior_box.py, PriorBox.forward, as written there."""
    feature_maps = [[math.ceil(image_size[0] / step), math.ceil(image_size[1] / step)] for step in cfg["steps"]]
    anchors: List[float] = []
    for k, f in enumerate(feature_maps):
        min_sizes = cfg["min_sizes"][k]
        for i, j in product(range(f[0]), range(f[1])):
            for min_size in min_sizes:
                s_kx = min_size / image_size[1]
                s_ky = min_size / image_size[0]
                dense_cx = [x * cfg["steps"][k] / image_size[1] for x in [j + 0.5]]
                dense_cy = [y * cfg["steps"][k] / image_size[0] for y in [i + 0.5]]
                for cy, cx in product(dense_cy, dense_cx):
                    anchors += [cx, cy, s_kx, s_ky]
    output = torch.Tensor(anchors).view(-1, 4)
    if cfg["clip"]:
        output.clamp_(max=1, min=0)
    return output


def biubug6_decode(loc: torch.Tensor, priors: torch.Tensor, variances: List[float]) -> torch.Tensor:
    """utils/box_utils.py, decode, as written there."""
    boxes = torch.cat((
        priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
        priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def reference(loc: np.ndarray, conf: np.ndarray, v: Variant, conf_thres: float, nms_thres: float,
              max_det: int) -> np.ndarray:
    """[x1, y1, x2, y2, score, class] in frame pixels: detect.py's decode and threshold, each class suppressed on
    its own (SSD's Detect; one class for RetinaFace), the letterbox undone and the boxes clipped to the frame."""
    in_h, in_w = INPUT
    priors = biubug6_priors(v.cfg, INPUT)
    boxes = biubug6_decode(torch.from_numpy(loc), priors, v.cfg["variance"])
    boxes = boxes * torch.Tensor([in_w, in_h, in_w, in_h])  # detect.py: boxes * scale / resize
    scores = torch.from_numpy(conf)
    if not v.softmax_in_graph:
        scores = torch.softmax(scores, -1)
    scores = scores[:, 1:]  # column 0 is the background (detect.py: conf[:, 1] for faces)
    rows, classes = (scores > conf_thres).nonzero(as_tuple=True)
    boxes, scores = boxes[rows], scores[rows, classes]
    keep = torchvision.ops.batched_nms(boxes, scores, classes, nms_thres)[:max_det]
    out = torch.cat((boxes[keep], scores[keep, None], classes[keep, None].float()), 1).numpy().astype(np.float64)
    out[:, [0, 2]] = ((out[:, [0, 2]] - PAD[0]) / GAIN).clip(0, FRAME[0])
    out[:, [1, 3]] = ((out[:, [1, 3]] - PAD[1]) / GAIN).clip(0, FRAME[1])
    return out


def to_frame(box: Tuple[float, float, float, float]) -> np.ndarray:
    cx, cy, w, h = box
    return np.array([cx - w / 2 - PAD[0], cy - h / 2 - PAD[1], cx + w / 2 - PAD[0], cy + h / 2 - PAD[1]]) / GAIN


class TinyPriorHead(torch.nn.Module):
    """loc and conf of a prior-box head: each planted box encoded against its prior as box_utils.encode does,
    the planted class probabilities as logits (log p), the other priors background with random offsets; a faint
    term computed from the image keeps the outputs the graph's own."""

    loc: torch.Tensor
    logits: torch.Tensor
    landmarks: torch.Tensor

    def __init__(self, v: Variant) -> None:
        super().__init__()
        self.v = v
        priors = biubug6_priors(v.cfg, INPUT).double().numpy()
        in_h, in_w = INPUT
        gen = torch.Generator().manual_seed(0)
        n, columns = len(priors), len(v.classes) + 1
        loc = 0.5 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
        logits = 0.5 * torch.randn(n, columns, generator=gen, dtype=torch.float64) - 4.0
        logits[:, 0] = 0.0  # background: each class ~0.02
        var0, var1 = v.cfg["variance"]
        for plant in v.plants:
            px, py, size = plant.prior
            unclipped = np.array([px / in_w, py / in_h, size / in_w, size / in_h])
            want = unclipped.clip(0, 1) if v.cfg["clip"] else unclipped
            (row,) = np.flatnonzero(np.abs(priors - want).max(1) < 1e-6)
            p = priors[row]
            cx, cy, w, h = plant.box
            g = np.array([cx / in_w, cy / in_h, w / in_w, h / in_h])
            loc[row] = torch.tensor(np.concatenate([(g[:2] - p[:2]) / (var0 * p[2:]), np.log(g[2:] / p[2:]) / var1]))
            probs = np.full(columns, 0.01)
            for cls, prob in plant.probs.items():
                probs[1 + cls] = prob
            probs[0] = 1 - probs[1:].sum()
            logits[row] = torch.from_numpy(np.log(probs))
        self.register_buffer("loc", loc.float())
        self.register_buffer("logits", logits.float())
        self.register_buffer("landmarks", torch.randn(n, 10, generator=gen))
        self.mix = torch.nn.Conv2d(3, 4 + columns, 1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.randn(self.mix.weight.shape, generator=gen))
            self.mix.bias.zero_()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        t = torch.tanh(self.mix(x.mean((2, 3), keepdim=True))).flatten(1)[:, None, :]  # [B, 1, 4 + C]
        loc = self.loc + 1e-4 * t[..., :4]
        conf = self.logits + 0.01 * t[..., 4:]
        if self.v.softmax_in_graph:
            conf = torch.softmax(conf, -1)
        outs = (conf, loc) if self.v.conf_first else (loc, conf)
        if self.v.landmarks:
            outs += (self.landmarks + 1e-4 * t[..., :1],)
        return outs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """variant name -> (ONNX file, ONNX Runtime session), exported once each."""
    cache: Dict[str, Any] = {}

    def get(name: str) -> Tuple[Any, Any]:
        if name not in cache:
            path = tmp_path_factory.mktemp("priors") / "tiny_priors.onnx"
            export_onnx(TinyPriorHead(VARIANTS[name]).eval(), path, INPUT, VARIANTS[name].output_names)
            cache[name] = path, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return cache[name]

    return get


def card(v: Variant, **kw: Any) -> ModelCard:
    fields: Dict[str, Any] = dict(name="tiny-priors", task="detection", arch="external", classes=v.classes,
                                  input_size=INPUT, output_layout="priors", layout_params=dict(v.layout_params))
    fields.update(kw)
    return ModelCard(**fields)


def frame() -> np.ndarray:
    return render_image(seed=5, index=0, size=FRAME).image


def run(session: Any, c: ModelCard) -> Tuple[Dict[str, np.ndarray], Any]:
    tensor, transform = preprocess(frame(), c)
    outs = session.run(None, {"images": tensor})
    return {o.name: a for o, a in zip(session.get_outputs(), outs)}, transform


def loc_conf(raw: Dict[str, np.ndarray], v: Variant) -> Tuple[np.ndarray, np.ndarray]:
    """The reference's own pick of loc and conf: the exporter's order."""
    arrays = list(raw.values())
    conf, loc = arrays[:2] if v.conf_first else arrays[1::-1]
    return loc[0], conf[0]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_decode_matches_retinaface_and_lands_on_the_planted_boxes(exported, name):
    v = VARIANTS[name]
    _, session = exported(name)
    c = card(v)
    raw, transform = run(session, c)
    assert len(raw) == (3 if v.landmarks else 2)
    params = DecodeParams.of(c)
    found = registry.layout("priors").decode({k: a[0] for k, a in raw.items()}, transform, c, params)
    loc, conf = loc_conf(raw, v)
    assert loc.shape == (len(biubug6_priors(v.cfg, INPUT)), 4)
    ref = reference(loc, conf, v, params.score_threshold, params.iou_threshold, params.max_detections)

    expected = [(p, cls) for p in v.plants if p.kept for cls, prob in p.probs.items() if prob > 0.25]
    assert len(found) == len(ref) == len(expected)
    order = np.argsort(-found.scores, kind="stable")
    np.testing.assert_allclose(found.boxes[order], ref[:, :4], atol=1e-3)
    np.testing.assert_allclose(found.scores[order], ref[:, 4], atol=1e-6)
    assert found.classes[order].tolist() == ref[:, 5].astype(int).tolist()
    # what a user sees: each planted object once, where it was planted, with its class and score
    for plant, cls in expected:
        target = to_frame(plant.box)
        hit = np.flatnonzero((np.abs(found.boxes - target).max(1) < 0.01) & (found.classes == cls))
        assert len(hit) == 1, (plant, cls, found)
        assert abs(float(found.scores[hit[0]]) - plant.probs[cls]) < 0.005
    print(f"priors, {name}: {len(found)} detections, max box difference "
          f"{np.abs(found.boxes[order] - ref[:, :4]).max():.2e} px")


def test_recognised_only_by_this_layout_and_only_with_its_prior_count(exported):
    faces, objects = VARIANTS["retinaface export"], VARIANTS["ssd, 3 classes"]
    detection = registry.layouts("detection")
    for v, name in ((faces, "retinaface export"), (VARIANTS["retinaface head, logits"], "retinaface head, logits"),
                    (objects, "ssd, 3 classes")):
        outputs = [TensorSpec(o.name, tuple(o.shape), "float32") for o in exported(name)[1].get_outputs()]
        assert [lay.name for lay in detection if lay.recognises(outputs, card(v))] == ["priors"], name
    layout = registry.layout("priors")
    # RetinaFace's defaults: 2 x (9 x 13 + 5 x 7 + 3 x 4) = 328 priors at 100x72; recognised without parameters
    plain = ModelCard(name="m", task="detection", arch="external", classes=["face"], input_size=INPUT)
    retina = [TensorSpec("loc", (1, 328, 4), "float32"), TensorSpec("conf", (1, 328, 2), "float32")]
    assert layout.recognises(retina, plain)
    assert layout.recognises(retina + [TensorSpec("landms", (1, 328, 10), "float32")], plain)
    # the SSD's own priors (320) are not the defaults' count: recognised only with its parameters
    ssd = [TensorSpec("conf", (1, 320, 4), "float32"), TensorSpec("loc", (1, 320, 4), "float32")]
    three = ModelCard(name="m", task="detection", arch="external", classes=objects.classes, input_size=INPUT)
    assert not layout.recognises(ssd, three) and layout.recognises(ssd, card(objects))
    assert not layout.recognises(retina, card(faces, input_size=(64, 96)))  # another input size: 252 priors
    assert not layout.recognises(retina, card(faces, classes=["face", "mask"]))  # 2 classes + background = 3
    assert layout.recognises(retina, card(faces, classes=["background", "face"], layout_params={"background": False}))
    others = {
        "yolov8": [TensorSpec("output0", (1, 5, 126), "float32")],
        "yolov5": [TensorSpec("output0", (1, 378, 6), "float32")],
        "end2end": [TensorSpec("output0", (1, 300, 6), "float32")],
        "yolov8_seg": [TensorSpec("output0", (1, 37, 126), "float32"), TensorSpec("output1", (1, 32, 18, 25),
                                                                                  "float32")],
        "efficient_nms": [TensorSpec("num_dets", (1, 1), "int32"), TensorSpec("det_boxes", (1, 100, 4), "float32"),
                          TensorSpec("det_scores", (1, 100), "float32"), TensorSpec("det_classes", (1, 100), "int32")],
        "torchvision": [TensorSpec("boxes", (12, 4), "float32"), TensorSpec("labels", (12,), "int64"),
                        TensorSpec("scores", (12,), "float32")],
        "loc/conf with 328 priors as int": [TensorSpec("loc", (1, 328, 4), "int32"),
                                            TensorSpec("conf", (1, 328, 2), "int32")],
        "loc/conf differing in N": [TensorSpec("loc", (1, 328, 4), "float32"),
                                    TensorSpec("conf", (1, 320, 2), "float32")],
    }
    for name, specs in others.items():
        assert not layout.recognises(specs, plain), name


def test_roles_by_name_then_by_the_heads_order():
    assert roles([("conf", (320, 4)), ("loc", (320, 4))], 4) == {"loc": "loc", "conf": "conf"}
    assert roles([("a", (320, 4)), ("b", (320, 4))], 4) == {"loc": "a", "conf": "b"}  # loc first, as heads return
    assert roles([("scores", (320, 2)), ("boxes", (320, 4))], 2) == {"loc": "boxes", "conf": "scores"}
    assert roles([("o", (328, 4)), ("p", (328, 2)), ("q", (328, 10))], 2) == {"loc": "o", "conf": "p",
                                                                              "landmarks": "q"}
    assert roles([("o", (328, 4)), ("p", (328, 2)), ("q", (328, 3))], 2) is None  # an odd landmark count


def test_check_says_what_does_not_fit_in_one_line(exported):
    faces = VARIANTS["retinaface head, logits"]
    layout = registry.layout("priors")
    retina = [TensorSpec("loc", (1, 328, 4), "float32"), TensorSpec("conf", (1, 328, 2), "float32")]
    layout.check(retina, card(faces), "m.onnx")
    cases = [
        ([TensorSpec("output0", (1, 5, 126), "float32")], card(faces),
         "m.onnx: outputs 'output0' [1, 5, 126]; a prior-box detector (SSD, RetinaFace) has two float outputs, loc "
         "[N, priors, 4] and conf [N, priors, classes] (and RetinaFace's landmarks [N, priors, 10])"),
        ([TensorSpec("loc", (1, 320, 4), "float32"), TensorSpec("conf", (1, 320, 2), "float32")], card(faces),
         "m.onnx: outputs 'loc' [1, 320, 4], 'conf' [1, 320, 2] have 320 priors, but min_sizes [[16, 32], [64, 128], "
         "[256, 512]], steps [8, 16, 32] at 100x72 give 328: give the model's own min_sizes and steps as "
         "output.params (--layout-param)"),
        (retina, card(faces, layout_params={"steps": [8, 16, 64]}),
         "m.onnx: outputs 'loc' [1, 328, 4], 'conf' [1, 328, 2] have 328 priors, but min_sizes [[16, 32], [64, 128], "
         "[256, 512]], steps [8, 16, 64] at 100x72 give 312: give the model's own min_sizes and steps as "
         "output.params (--layout-param)"),
        (retina, card(faces, classes=["face", "mask"]),
         "m.onnx: outputs 'loc' [1, 328, 4], 'conf' [1, 328, 2]: the card's 2 classes plus the background "
         "(background: true) make conf [N, priors, 3]; no output fits that next to loc [N, priors, 4]"),
        (retina, card(faces, layout_params={"background": False}),
         "m.onnx: outputs 'loc' [1, 328, 4], 'conf' [1, 328, 2]: the card's 1 class (background: false) make conf "
         "[N, priors, 1]; no output fits that next to loc [N, priors, 4]"),
        ([retina[0], TensorSpec("conf", (1, 328, 1), "float32")], card(faces, layout_params={"background": False}),
         "m.onnx: outputs 'loc' [1, 328, 4], 'conf' [1, 328, 1]: softmax over conf's one column scores every prior "
         "1; set softmax false, or background true where column 0 is the background"),
    ]
    for outputs, c, message in cases:
        assert not layout.recognises(outputs, c)
        with pytest.raises(EdgekitError) as e:
            layout.check(outputs, c, "m.onnx")
        assert str(e.value) == message


def test_bad_parameters_are_refused_by_the_card():
    faces = VARIANTS["retinaface head, logits"]
    bad = {
        "min_sizes": ([16, 32, 64], r"min_sizes must be one list of positive sizes in pixels per feature map"),
        "steps": ([8, 16], r"steps \[8, 16\] and min_sizes .* one entry per feature map each, got 2 and 3"),
        "variances": ([0.1], r"variances must be two positive numbers like \[0.1, 0.2\], got \[0.1\]"),
        "clip": ("yes", r"clip must be like False, got 'yes'"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(EdgekitError, match=r"^model card: output.params: " + message):
            card(faces, layout_params={key: value})
    with pytest.raises(EdgekitError, match=r"steps must be positive integers like \[8, 16, 32\], got \[8, 0, 32\]"):
        card(faces, layout_params={"steps": [8, 0, 32]})


def test_probabilities_decoded_as_logits_are_a_one_line_error(exported):
    v = VARIANTS["retinaface export"]
    raw, transform = run(exported("retinaface export")[1], card(v))
    c = card(v, layout_params={})  # softmax true: the graph's probabilities would be squashed into 0.27..0.73
    with pytest.raises(EdgekitError) as e:
        registry.layout("priors").decode({k: a[0] for k, a in raw.items()}, transform, c, DecodeParams.of(c))
    name = list(raw)[1]
    assert str(e.value) == (f"output '{name}' holds probabilities already (every row sums to 1): the graph applies "
                            "softmax itself, so the card needs output.params softmax: false")


def assert_same_as_reference(engine, v: Variant) -> None:
    img = frame()
    with edgekit.open(engine) as m:
        found = m(img)
        raw = m.infer(m.preprocess(img)[0])
        assert m.card.output_layout == "priors" and m.card.layout_params == v.layout_params
    loc, conf = loc_conf(raw, v)
    ref = reference(loc, conf, v, m.card.score_threshold, m.card.iou_threshold, m.card.max_detections)
    assert len(found) == len(ref) == sum(1 for p in v.plants if p.kept for prob in p.probs.values() if prob > 0.25)
    order = np.argsort(-found.scores, kind="stable")
    np.testing.assert_allclose(found.boxes[order], ref[:, :4], atol=1e-3)
    assert found.classes[order].tolist() == ref[:, 5].astype(int).tolist()


def test_build_engine_recognises_a_retinaface_export_with_its_defaults(exported, tmp_path):
    """A RetinaFace export as convert_to_onnx.py writes it: the prior parameters are RetinaFace's defaults, so only
    softmax false (the graph applies it) is given, and its preprocessing (BGR minus 104, 117, 123)."""
    onnx_file, _ = exported("retinaface export")
    engine = tmp_path / "face.engine.onnx"
    stdout = build_and_stream(onnx_file, engine, "--task", "detection", "--classes", "face", "--channel-order", "bgr",
                              "--mean", "0.40784", "0.45882", "0.48235", "--std", "0.0039216", "0.0039216", "0.0039216",
                              "--layout-param", "softmax=False")
    assert "output layout priors" in stdout
    assert_same_as_reference(engine, VARIANTS["retinaface export"])


def test_build_engine_takes_other_priors_from_their_params(exported, tmp_path):
    """Priors of the model's own: recognition counts the priors of the --layout-param values given, so no
    --layout is needed; without them the outputs fit nothing, in one line."""
    onnx_file, _ = exported("ssd, 3 classes")
    engine = tmp_path / "ssd.engine.onnx"
    common = ["build-engine", str(onnx_file), "-o", str(engine), "--backend", "onnxruntime", "--task", "detection",
              "--classes", "car,person,sign"]
    assert_one_line_error(run_cli(*common), "fit no detection layout", "--layout NAME")
    params = ["--layout-param", "min_sizes=[[12, 20], [32, 48], [64], [96]]", "--layout-param", "steps=[8, 16, 32, 64]",
              "--layout-param", "clip=True"]
    r = run_cli(*common, *params)
    assert r.returncode == 0, r.stderr
    assert "output layout priors" in r.stdout
    assert_same_as_reference(engine, VARIANTS["ssd, 3 classes"])
