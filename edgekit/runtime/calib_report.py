"""`edgekit calib-set`'s diversity report: what the picked calibration frames hold against the whole video
(brightness) and, given a model, what the model sees in them (classes, object sizes, scores).

INT8 scale ranges come from the calibration frames alone: a light level, a class or an object size they lack is
clipped or coarsely quantized later. The report shows it before an engine is built; `warnings` names what a user
would act on. Runtime side: NumPy and OpenCV only (the model is opened through edgekit.runtime.api).

The video is decoded once for the analysis (scan_video: per-frame change and luminance) and once more for the
picks (calibration.iter_video_frames), as calib-set always did; the model runs on each pick as it is written.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.calibration import VideoScan

if TYPE_CHECKING:
    from edgekit.runtime.api import Model
    from edgekit.runtime.preprocess import Transform

SCHEMA = "edgekit.calib-diversity/1"
REPORT_NAME = "diversity.json"  # not an image extension: calibration.load and source_images never read it

DARK_BELOW, BRIGHT_ABOVE = 60.0, 190.0  # mean luminance, 0..255
BANDS = ("dark", "normal", "bright")
NEARLY_ALL = 0.9  # picks this share of one band or more are "nearly all" dark (bright) ...
VIDEO_NOT = 0.75  # ... and worth a warning where the video's share of that band is at most this
CONFIDENT = 0.5  # a max score per frame below this everywhere: INT8 calibrated on it can cap scores
SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2  # COCO's object-size bins, in network-input pixels
PRESENT_SHARE = 0.001  # a class appears in a class map where it covers at least this share of the frame


# --- figures --------------------------------------------------------------------------------------------------

def _r(value: float, digits: int = 1) -> float:
    return round(float(value), digits)


def spread(values: Sequence[float], digits: int = 1) -> Dict[str, Optional[float]]:
    """min, median and max (None for no values)."""
    if not len(values):
        return {"min": None, "median": None, "max": None}
    a = np.asarray(values, np.float64)
    return {"min": _r(a.min(), digits), "median": _r(np.median(a), digits), "max": _r(a.max(), digits)}


def brightness(luminance: Sequence[float]) -> Dict[str, Any]:
    """Frames, min/median/max mean luminance and the frames in each band (dark, normal, bright)."""
    a = np.asarray(luminance, np.float64)
    dark, bright = int((a < DARK_BELOW).sum()), int((a > BRIGHT_ABOVE).sum())
    return {"frames": len(a), **spread(a), "bands": {"dark": dark, "normal": len(a) - dark - bright,
                                                      "bright": bright}}


def result_kind(result: Any) -> str:
    """'boxes' for a result with boxes, scores and classes (detection, instance segmentation), 'class map' for
    a class index per pixel (segmentation); anything else is refused."""
    if all(hasattr(result, a) for a in ("boxes", "scores", "classes")):
        return "boxes"
    classes = getattr(result, "classes", None)
    if isinstance(classes, np.ndarray) and classes.ndim == 2:
        return "class map"
    raise EdgekitError(f"the diversity report reads boxes or class maps; the model gives {type(result).__name__}")


class ModelFigures:
    """What a model sees in the picked frames, one frame at a time: the frames (and boxes, or pixel shares) of
    each class; for boxes, their size in network-input pixels and the highest score of each frame."""

    def __init__(self, model: "Model", path: "str | Path") -> None:
        self.model, self.card, self.path = model, model.card, str(path)
        h, w = self.card.input_size
        try:  # run once on a grey frame: a model that does not run, or gives no boxes or class map, is refused
            self.kind = result_kind(model(np.full((h, w, 3), 114, np.uint8)))  # before any work starts
        except EdgekitError as e:
            raise EdgekitError(f"{self.path}: {e}") from None
        n = self.card.num_classes
        self.frames_with = np.zeros(n, np.int64)
        self.boxes = np.zeros(n, np.int64)
        self.pixels = np.zeros(n, np.float64)
        self.total_pixels = 0
        self.input_areas: List[float] = []
        self.area_shares: List[float] = []
        self.max_scores: List[Optional[float]] = []

    def add(self, frame: np.ndarray) -> Dict[str, Any]:
        """Run the model on one frame; its figures for the report's per-frame entry."""
        tensor, transform = self.model.preprocess(frame)
        result = self.model.decode(self.model.infer(tensor), transform)
        return self._add_map(result.classes) if self.kind == "class map" else self._add_boxes(result, transform)

    def _add_map(self, classes: np.ndarray) -> Dict[str, Any]:
        n = self.card.num_classes
        counts = np.bincount(classes.ravel().astype(np.int64), minlength=n)[:n]  # (255, "ignore": not counted)
        self.pixels += counts
        self.total_pixels += classes.size
        present = np.flatnonzero(counts >= PRESENT_SHARE * classes.size)
        self.frames_with[present] += 1
        return {"classes": [self.card.classes[i] for i in present]}

    def _add_boxes(self, result: Any, transform: "Transform") -> Dict[str, Any]:
        n = self.card.num_classes
        classes = np.asarray(result.classes, np.int64)
        keep = (classes >= 0) & (classes < n)
        boxes, scores, classes = np.asarray(result.boxes, np.float64)[keep], np.asarray(result.scores)[keep], \
            classes[keep]
        present = np.unique(classes)
        self.frames_with[present] += 1
        self.boxes += np.bincount(classes, minlength=n)[:n]
        w, h = (boxes[:, 2] - boxes[:, 0]).clip(0), (boxes[:, 3] - boxes[:, 1]).clip(0)
        self.input_areas.extend((w * transform.scale_x * h * transform.scale_y).tolist())
        self.area_shares.extend((w * h / float(transform.src_w * transform.src_h)).tolist())
        top = _r(scores.max(), 4) if len(scores) else None
        self.max_scores.append(top)
        return {"detections": int(len(scores)), "max_score": top, "classes": [self.card.classes[i] for i in present]}

    def summary(self) -> Dict[str, Any]:
        h, w = self.card.input_size
        out: Dict[str, Any] = {"path": self.path, "name": self.card.name, "task": self.card.task,
                               "precision": self.model.opened.precision, "input": f"{w}x{h}", "result": self.kind}
        if self.kind == "class map":
            share = self.pixels / max(self.total_pixels, 1)
            out["classes"] = {c: {"frames": int(k), "pixel_share": _r(s, 4)}
                              for c, k, s in zip(self.card.classes, self.frames_with, share)}
            out["present_share"] = PRESENT_SHARE
            return out
        out["score_threshold"] = self.model.params.score_threshold
        out["classes"] = {c: {"frames": int(k), "boxes": int(b)}
                          for c, k, b in zip(self.card.classes, self.frames_with, self.boxes)}
        areas = np.asarray(self.input_areas, np.float64)
        out["object_scale"] = {
            "boxes": len(areas), "small": int((areas < SMALL_AREA).sum()),
            "medium": int(((areas >= SMALL_AREA) & (areas < LARGE_AREA)).sum()),
            "large": int((areas >= LARGE_AREA).sum()),
            "bins": f"box area in {w}x{h} network-input pixels: small < 32x32, medium < 96x96, large (COCO)",
            "area_share_of_frame": spread(self.area_shares, 4),
        }
        scored = [s for s in self.max_scores if s is not None]
        out["max_score_per_frame"] = {
            "frames": len(self.max_scores), "without_detection": len(self.max_scores) - len(scored),
            **spread(scored, 4),
            "bands": {"below 0.5": sum(s < CONFIDENT for s in scored),
                      "0.5 to 0.75": sum(CONFIDENT <= s < 0.75 for s in scored),
                      "0.75 and above": sum(s >= 0.75 for s in scored)},
        }
        return out


class DiversityReport:
    """The report of one calib-set run: add() each frame as it is written, then summary() and warnings()."""

    def __init__(self, video: Path, asked: int, scan: VideoScan, model: Optional[ModelFigures] = None) -> None:
        self.video, self.asked, self.scan, self.model = video, asked, scan, model
        self.frames: List[Dict[str, Any]] = []
        self.luminance: List[float] = []  # of the picks, unrounded (the bands' edges)

    def add(self, index: int, frame: np.ndarray, file: str) -> None:
        """One picked frame, as written to `file`."""
        self.luminance.append(self.scan.luminance[index])
        entry: Dict[str, Any] = {"file": file, "index": index, "luminance": _r(self.scan.luminance[index])}
        if self.model is not None:
            entry.update(self.model.add(frame))
        self.frames.append(entry)

    def summary(self) -> Dict[str, Any]:
        report: Dict[str, Any] = {
            "schema": SCHEMA, "video": str(self.video), "video_frames": len(self.scan), "asked": self.asked,
            "picked": len(self.frames),
            "brightness": {"measure": f"mean luminance 0-255; dark < {DARK_BELOW:g}, bright > {BRIGHT_ABOVE:g}",
                           "picks": brightness(self.luminance),
                           "video": brightness(self.scan.luminance)},
            "model": self.model.summary() if self.model is not None else None,
            "frames": self.frames,
        }
        report["warnings"] = warnings(report)
        return report


# --- what a user reads --------------------------------------------------------------------------------------

def _shares(b: Dict[str, Any]) -> Dict[str, float]:
    return {band: b["bands"][band] / b["frames"] if b["frames"] else 0.0 for band in BANDS}


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _names(names: List[str], shown: int = 12) -> str:
    """The names, the first `shown` of a long list (a COCO model knows 80 classes; the JSON lists them all)."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more (see {REPORT_NAME})" if more > 0 else "")


def warnings(report: Dict[str, Any]) -> List[str]:
    """What a user would act on, one line each (without the 'edgekit: warning: ' the CLI puts before them)."""
    out = []
    picked, asked = report["picked"], report["asked"]
    if picked < asked:
        out.append(f"{report['video']}: {_count(picked, 'frame')} picked, fewer than the {asked} asked (the video has "
                   f"{report['video_frames']} frames that decode)")
    picks, video = report["brightness"]["picks"], report["brightness"]["video"]
    p, v = _shares(picks), _shares(video)
    for band in ("dark", "bright"):
        if picked and p[band] >= NEARLY_ALL and v[band] <= VIDEO_NOT:
            out.append(f"{p[band]:.0%} of the picked frames are {band} but {v[band]:.0%} of the video's frames "
                       f"are: INT8 calibrated on them may clip or coarsely quantize the other scenes; pick more "
                       "frames (-n)")
    model = report["model"]
    if not model or not picked:
        return out
    missing = [c for c, f in model["classes"].items() if f["frames"] == 0]
    if missing:
        if "score_threshold" in model:
            seen = f"scored {model['score_threshold']:g} or more"
        else:
            seen = f"on {PRESENT_SHARE:.1%} of a frame or more"
        out.append(f"{len(missing)} of the model's {len(model['classes'])} classes never appear in the {picked} "
                   f"picked frames ({seen}): {_names(missing)}; INT8 calibrated without them may lose them: "
                   "add footage that shows them")
    scores = model.get("max_score_per_frame")
    if scores is not None and (scores["max"] is None or scores["max"] < CONFIDENT):
        highest = f"the highest is {scores['max']:g}" if scores["max"] is not None else \
            f"no detection at all at the score threshold {model['score_threshold']:g}"
        out.append(f"no picked frame has a detection scored {CONFIDENT:g} or more ({highest}): INT8 calibrated "
                   "on such frames can cap the scores (e.g. every score at sigmoid(0) = 0.5); add frames where "
                   "the model finds objects confidently")
    return out


def lines(report: Dict[str, Any]) -> List[str]:
    """The report in a few lines for the terminal."""
    def band_text(b: Dict[str, Any]) -> str:
        s = _shares(b)
        if not b["frames"]:
            return "none"
        return (", ".join(f"{band} {s[band]:.0%}" for band in BANDS)
                + f"; min {b['min']:g}, median {b['median']:g}, max {b['max']:g}")

    br = report["brightness"]
    out = [f"brightness ({br['measure']}):",
           f"  picks, {_count(br['picks']['frames'], 'frame')}: {band_text(br['picks'])}",
           f"  video, {_count(br['video']['frames'], 'frame')}: {band_text(br['video'])}"]
    model = report["model"]
    if not model:
        return out
    out.append(f"model {model['path']} ({model['task']}, {model['precision']}, {model['input']} input):")
    boxes = "score_threshold" in model
    seen = sorted(((f["frames"], c) for c, f in model["classes"].items() if f["frames"]), key=lambda t: -t[0])
    never = len(model["classes"]) - len(seen)
    shown = [f"{c} {k}" + ("" if boxes else f" ({model['classes'][c]['pixel_share']:.1%})") for k, c in seen]
    out.append(f"  frames with each class (of {report['picked']}"
               + (f", score >= {model['score_threshold']:g}): " if boxes else "; share of all pixels): ")
               + (_names(shown) if shown else "none") + (f"; {never} never" if never else ""))
    if boxes:
        sc, ms = model["object_scale"], model["max_score_per_frame"]
        out.append(f"  object scale ({_count(sc['boxes'], 'box', 'boxes')}, in {model['input']} input pixels): "
                   f"small {sc['small']}, medium {sc['medium']}, large {sc['large']}")
        figures = f"min {ms['min']:g}, median {ms['median']:g}, max {ms['max']:g}; " if ms["max"] is not None else ""
        out.append(f"  max score per frame: {figures}{_count(ms['without_detection'], 'frame')} without a detection")
    return out
