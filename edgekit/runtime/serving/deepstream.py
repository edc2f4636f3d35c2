"""`edgekit export-deepstream ENGINE -o DIR`: a folder for NVIDIA DeepStream's Gst-nvinfer element, written from
the documentation and NVIDIA's sources (no DeepStream runs here): `config_infer_primary.txt` (a GLib key file with a
[property] and, for detectors, a [class-attrs-all] group), `labels.txt`, the model file(s) and a README.md.

What it relies on, and where from:

* The keys and their values: the Gst-nvinfer page,
  https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html, and the element's own
  parser, sources/gst-plugins/gst-nvinfer/gstnvinfer_property_parser.h/.cpp (DeepStream 6.2's sources, as mirrored
  in https://github.com/hiennguyen9874/deepstream-sources; the 8.0 header's key list:
  https://docs.nvidia.com/metropolis/deepstream/dev-guide/sdk-api/gstnvinfer__property__parser_8h.html):
  network-mode 0 FP32 / 1 INT8 / 2 FP16; network-type 0 detector, 2 segmentation, 3 instance segmentation;
  cluster-mode 2 NMS, 4 none; model-color-format 0 RGB / 1 BGR; infer-dims c;h;w; lists separated by ';'; file
  paths relative to the config file's folder.
* Preprocessing: the page's `y = net-scale-factor * (x - mean)`, mean = offsets[c], x a 0..255 pixel. The parser reads
  net-scale-factor as one double (g_key_file_get_double), so a card whose per-channel std differ cannot be expressed
  exactly: the scale that keeps the worst channel closest is written, with a warning (in the file and the result).
* INT8: nvinfer (sources/libs/nvdsinfer/nvdsinfer_model_builder.cpp) sets TensorRT's INT8 flag only when an
  int8-calib-file is given; without one it logs "INT8 calibration file not specified. Trying FP16 mode." TensorRT must
  not get a calibration table for a Q/DQ model (TENSORRT.md), so the Q/DQ ONNX goes without one, with that warning.
* Segmentation: nvinfer's SegmentPostprocessor::fillSegmentationOutput (nvdsinfer_context_impl_output_parsing.cpp)
  takes the first output as [C, H, W] per frame and gives each pixel the channel with the largest value above
  segmentation-threshold (never negative), else -1: logits whose best value is <= 0 come out unlabelled.
* Detection: nvinfer parses a detector's outputs with a parse-bbox-func-name from a custom-lib-path library. NVIDIA's
  libraries (DeepStream's sources/libs/nvdsinfer_customparser/nvdsinfer_custombboxparser.cpp, built as
  libnvds_infercustomparser.so;
  https://github.com/NVIDIA-AI-IOT/deepstream_tao_apps/blob/master/post_processor/nvdsinfer_custombboxparser_tao.cpp,
  built as libnvds_infercustomparser_tao.so) parse no edgekit layout as edgekit decodes it:
  NvDsInferParseCustomEfficientDetTAO reads EfficientNMS_TRT's four outputs by the plugin's names but its boxes as y1,
  x1, y2, x2 (edgekit's efficient_nms layout is x1, y1, x2, y2); NvDsInferParseCustomBatchedYoloV5NMSTLT reads x1, y1,
  x2, y2 but the classes as float (EfficientNMS_TRT's are int32); "NvDsInferParseCustomEfficientNMS" is not NVIDIA's
  but a function the YOLOv7 DeepStream guides add to that sample library and rebuild. So a detector needs a parser the
  user names (CustomParser): without one the export is refused in one line. Layouts already suppressed in the graph
  get cluster-mode 4 (none); raw heads get nvinfer's NMS with the card's thresholds.
"""

import configparser
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from edgekit.errors import EdgekitError
from edgekit.runtime import manifest as mf
from edgekit.runtime import registry
from edgekit.runtime.artifacts import atomic_dir, write_text
from edgekit.runtime.backends.base import TENSORRT_QDQ
from edgekit.runtime.card import ModelCard
from edgekit.runtime.text import printable

DOCS_URL = "https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html"
CONFIG_FILE = "config_infer_primary.txt"
LABELS_FILE = "labels.txt"
README_FILE = "README.md"
HEADER = "# Gst-nvinfer configuration written by `edgekit export-deepstream`"

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
NETWORK_TYPE = {"detection": 0, "segmentation": 2, "instance_segmentation": 3}
CLUSTER_NMS, CLUSTER_NONE = 2, 4
COLOR_FORMAT = {"RGB": 0, "BGR": 1}
RAW_HEADS = ("yolov8", "yolov5", "yolox", "priors")

# Every key written must be one the element parses (gstnvinfer_property_parser.h): checked before anything is written.
PROPERTY_KEYS = frozenset((
    "gpu-id", "gie-unique-id", "process-mode", "interval", "labelfile-path", "batch-size", "network-mode",
    "model-engine-file", "int8-calib-file", "onnx-file", "network-type", "infer-dims", "model-color-format",
    "net-scale-factor", "offsets", "maintain-aspect-ratio", "symmetric-padding", "network-input-order",
    "output-blob-names", "num-detected-classes", "cluster-mode", "custom-lib-path", "parse-bbox-func-name",
    "segmentation-threshold", "segmentation-output-order", "workspace-size",
))
CLASS_ATTRS_KEYS = frozenset(("pre-cluster-threshold", "post-cluster-threshold", "nms-iou-threshold", "topk",
                              "eps", "group-threshold", "minBoxes", "dbscan-min-score"))


@dataclass(frozen=True)
class CustomParser:
    """A bounding-box parser for nvinfer: the function's name and the shared library that exports it."""

    function: str
    library: str


@dataclass
class DeepStreamExport:
    folder: Path
    config: Path
    files: List[str]  # every file written, relative to the folder
    model_key: str  # onnx-file or model-engine-file
    model_file: str
    network_mode: int
    network_type: int
    warnings: List[str] = field(default_factory=list)


@dataclass
class _Source:
    path: Path
    card: ModelCard
    precision: str
    backend: str
    max_batch: int
    outputs: List[str]
    model_key: str  # the nvinfer key naming the model file
    model: Path  # the file DeepStream gets
    calib_cache: Optional[Path] = None
    notes: List[str] = field(default_factory=list)  # what the file's comments and the README say about the model
    warnings: List[str] = field(default_factory=list)


def export_deepstream(engine: "str | Path", out: "str | Path", overwrite: bool = False,
                      parser: Optional[CustomParser] = None) -> DeepStreamExport:
    """Write DIR (`out`: new or empty; a non-empty one only with `overwrite`, replaced whole once complete) for
    nvinfer from an engine of `edgekit build-engine` (or an edgekit ONNX, as FP32). A one-line EdgekitError for what
    nvinfer cannot run as edgekit does."""
    engine, out = Path(engine), Path(out)
    if parser is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", parser.function):
        raise EdgekitError(f"--parse-bbox-func {printable(parser.function)!r}: not a C function name")
    src = _read_source(engine)
    card = src.card
    _check_input(card, engine)
    network_type = _network_type(card, engine, parser)
    if _inside(src.path, out) or (src.calib_cache is not None and _inside(src.calib_cache, out)):
        raise EdgekitError(f"{out}: holds the engine it would be made from; choose another -o folder")
    scale, offsets, scale_error = normalization(card)
    warnings = list(src.warnings)
    if scale_error > 0:
        warnings.append(
            f"the card's per-channel std {[round(s, 6) for s in card.std]} cannot be given to nvinfer, which has one "
            f"net-scale-factor: {scale:.8g} puts the network input up to {scale_error:.2%} off in the channel whose "
            "std is furthest from the others (check accuracy on the device)")
    if network_type == NETWORK_TYPE["segmentation"]:
        warnings.append("nvinfer labels a pixel only where its best logit exceeds segmentation-threshold (0 at the "
                        "least): pixels whose logits are all <= 0 come out unlabelled (-1) where edgekit takes the "
                        "argmax")
    model_name = src.model.name
    props: List[Tuple[str, str]] = [
        ("gpu-id", "0"),
        ("gie-unique-id", "1"),
        ("process-mode", "1"),
        (src.model_key, model_name),
    ]
    if src.calib_cache is not None:
        props.append(("int8-calib-file", src.calib_cache.name))
    h, w = card.input_size
    props += [
        ("labelfile-path", LABELS_FILE),
        ("batch-size", str(src.max_batch)),
        ("network-mode", str(NETWORK_MODE[src.precision])),
        ("network-type", str(network_type)),
        ("infer-dims", f"3;{h};{w}"),
        ("model-color-format", str(COLOR_FORMAT[card.color])),
        ("net-scale-factor", _num(scale)),
        ("offsets", ";".join(_num(o) for o in offsets)),
        ("maintain-aspect-ratio", "1" if card.resize_mode == "letterbox" else "0"),
    ]
    if card.resize_mode == "letterbox":
        props.append(("symmetric-padding", "1" if card.pad_placement == "center" else "0"))
    props += [("output-blob-names", ";".join(src.outputs)), ("num-detected-classes", str(card.num_classes))]
    attrs: List[Tuple[str, str]] = []
    if network_type == NETWORK_TYPE["detection"]:
        assert parser is not None
        suppressed = registry.layout(card.output_layout).suppressed
        props += [("cluster-mode", str(CLUSTER_NONE if suppressed else CLUSTER_NMS)),
                  ("parse-bbox-func-name", parser.function), ("custom-lib-path", parser.library)]
        attrs = [("pre-cluster-threshold", _num(card.score_threshold)), ("topk", str(card.max_detections))]
        if not suppressed:
            attrs.insert(1, ("nms-iou-threshold", _num(card.iou_threshold)))
    else:
        props.append(("segmentation-threshold", "0"))
    _check_keys(props, attrs)
    text = _config_text(src, props, attrs, warnings, scale_error, parser)
    if any("\n" in c or "\r" in c for c in card.classes):
        raise EdgekitError(f"{engine}: a class name holds a line break, which labels.txt (one name a line) cannot")
    labels = "".join(f"{c}\n" for c in card.classes)
    files = [CONFIG_FILE, LABELS_FILE, model_name, README_FILE]
    with atomic_dir(out, overwrite=overwrite or is_earlier_export(out)) as tmp:
        shutil.copyfile(src.model, tmp / model_name)
        if src.calib_cache is not None:
            shutil.copyfile(src.calib_cache, tmp / src.calib_cache.name)
            files.insert(3, src.calib_cache.name)
        write_text(tmp / LABELS_FILE, labels)
        write_text(tmp / CONFIG_FILE, text)
        write_text(tmp / README_FILE, _readme(src, network_type, src.max_batch, warnings, parser))
        read_nvinfer_config(tmp / CONFIG_FILE)  # parsed back before it is published
    return DeepStreamExport(out, out / CONFIG_FILE, files, src.model_key, model_name, NETWORK_MODE[src.precision],
                            network_type, warnings)


def is_earlier_export(folder: Path) -> bool:
    """Whether `folder` is what this verb wrote before (its config file, a regular file, starts with the header
    this module writes): re-exporting replaces it without --overwrite, as run-stream replaces an earlier run."""
    config = folder / CONFIG_FILE
    if folder.is_symlink() or config.is_symlink() or not config.is_file():
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return f.readline().startswith(HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def read_nvinfer_config(path: "str | Path") -> Dict[str, Dict[str, str]]:
    """An nvinfer configuration file (a GLib key file) as group -> key -> value, keys case-sensitive, values as
    written (lists stay ';'-separated). A one-line error where it is not a key file."""
    cp = configparser.RawConfigParser(delimiters=("=",), comment_prefixes=("#",), inline_comment_prefixes=None,
                                      strict=True, empty_lines_in_values=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  (GLib keys are case-sensitive: minBoxes)
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        raise EdgekitError(f"{path}: not an nvinfer configuration file ({printable(str(e).splitlines()[0])})") from None
    return {name: dict(cp.items(name)) for name in cp.sections()}


def normalization(card: ModelCard) -> Tuple[float, List[float], float]:
    """nvinfer's `y = s * (x - offsets[c])` closest to the card's `(x / 255 - mean[c]) / std[c]`: (s, offsets,
    worst relative error of s over the channels; 0 where the stds are equal). offsets[c] = 255 mean[c] exactly; s is
    1 / (255 std) for equal stds, else the value that keeps the worst channel's relative error smallest."""
    offsets = [255.0 * m for m in card.mean]
    per_channel = [255.0 * s for s in card.std]  # the card divides channel c by this
    lo, hi = min(per_channel), max(per_channel)
    if hi - lo <= 1e-12 * hi:
        return 1.0 / per_channel[0], offsets, 0.0
    return 2.0 / (lo + hi), offsets, (hi - lo) / (hi + lo)


def _num(value: float) -> str:
    return f"{value:.10g}"


def _inside(path: Path, folder: Path) -> bool:
    p, f = path.resolve(), folder.resolve()
    return p == f or f in p.parents


def _read_source(engine: Path) -> _Source:
    from edgekit.runtime.opening import engine_file

    engine_file(engine, "export-deepstream")
    if mf.path_for(engine).is_file():
        return _from_manifest(engine, mf.read(engine))
    if engine.suffix != ".onnx":
        raise EdgekitError(f"{engine}: no manifest beside it ({mf.path_for(engine).name}); export-deepstream takes "
                           "an engine from edgekit build-engine or an edgekit ONNX")
    return _from_plain_onnx(engine)


def _from_manifest(engine: Path, m: mf.Manifest) -> _Source:
    outputs = [t.name for t in m.io.outputs]
    built = f"built by edgekit {m.edgekit_version} with {m.backend.name} {m.backend.version}"
    if m.backend.name == "tensorrt":
        src = _Source(engine, m.card, m.precision, "tensorrt", m.max_batch, outputs, "model-engine-file", engine)
        src.notes.append(f"{engine.name}: the {m.precision.upper()} TensorRT engine {built}"
                         + (f" on {m.backend.gpu}" if m.backend.gpu else "") + "; DeepStream's TensorRT must be that "
                         "version, on that GPU model, or nvinfer cannot deserialize it")
        if m.backend.calibration_cache:
            cache = engine.parent / Path(m.backend.calibration_cache).name  # written beside the engine
            if cache.is_file():
                src.calib_cache = cache
                src.notes.append(f"{cache.name}: TensorRT's calibration table from the build (used only where "
                                 "nvinfer builds an engine itself)")
        return src
    if m.backend.name != "onnxruntime":
        raise EdgekitError(f"{engine}: a {printable(m.backend.name)} engine; DeepStream runs TensorRT engines and "
                           "builds its own from an ONNX (build-engine --backend tensorrt or onnxruntime)")
    if m.precision != "int8":
        src = _Source(engine, m.card, m.precision, "onnxruntime", m.max_batch, outputs, "onnx-file", engine)
        src.notes.append(f"{engine.name}: the ONNX of the {m.precision.upper()} engine ({built}); nvinfer builds its "
                         f"TensorRT engine from it in {m.precision.upper()} on first start")
        return src
    qdq = m.side_file(engine, TENSORRT_QDQ)
    if qdq is None and (m.build_flags().provider or "cpu") == "tensorrt":
        qdq = engine  # ONNX Runtime's TensorRT provider runs the symmetric Q/DQ file itself
    if qdq is None or not qdq.is_file():
        raise EdgekitError(f"{engine}: an INT8 ONNX Runtime engine without the TensorRT Q/DQ ONNX beside it "
                           f"({engine.name}.trt-qdq.onnx) that DeepStream builds from; rebuild it with: "
                           f"{mf.rebuild_command(m, engine)}")
    src = _Source(engine, m.card, "int8", "onnxruntime", m.max_batch, outputs, "onnx-file", qdq)
    src.notes.append(f"{qdq.name}: the symmetric INT8 Q/DQ ONNX build-engine wrote for TensorRT beside {engine.name} "
                     f"({built}; the engine itself is ONNX Runtime's CPU file); no int8-calib-file: the scales are in "
                     "the graph")
    src.warnings.append("nvinfer sets TensorRT's INT8 flag only with an int8-calib-file (nvdsinfer_model_builder.cpp); "
                        "for this Q/DQ ONNX it may log 'INT8 calibration file not specified. Trying FP16 mode.': if "
                        "so, build the engine on the device (build-engine --backend tensorrt --precision int8) and "
                        "export that")
    return src


def _from_plain_onnx(engine: Path) -> _Source:
    from edgekit.runtime.opening import open_model

    with open_model(engine) as opened:
        card, precision = opened.card, opened.precision
        outputs = [t.name for t in opened.backend.outputs]
    if not precision.startswith("fp32"):  # "fp32 (plain ONNX)"; an INT8 graph whose manifest was lost is not FP32
        raise EdgekitError(f"{engine}: a plain ONNX that runs as {printable(precision)}, without the manifest that "
                           "says which file DeepStream should build from; export its engine from build-engine")
    src = _Source(engine, card, "fp32", "onnxruntime", 1, outputs, "onnx-file", engine)
    src.notes.append(f"{engine.name}: the edgekit ONNX (no manifest: FP32, batch 1); nvinfer builds its TensorRT "
                     "engine from it on first start")
    return src


def _check_input(card: ModelCard, engine: Path) -> None:
    if card.input_format == "nhwc_uint8":
        raise EdgekitError(f"{engine}: its input takes uint8 [N, H, W, 3] frames (preprocessing fused into the graph), "
                           "but nvinfer feeds float planar tensors it normalises itself; export without "
                           "--fuse-preprocess and build that")


def _network_type(card: ModelCard, engine: Path, parser: Optional[CustomParser]) -> int:
    layout = card.output_layout
    if card.task == "detection":
        if parser is None:
            raise EdgekitError(f"{engine}: DeepStream ships no parser for edgekit's {layout} outputs "
                               f"({_why_no_parser(layout)}); pass --parse-bbox-func NAME --custom-lib LIB.so naming a "
                               "bounding-box parser built for them")
        return NETWORK_TYPE["detection"]
    if card.task == "segmentation" and layout == "logits":
        return NETWORK_TYPE["segmentation"]
    if card.task == "segmentation":
        raise EdgekitError(f"{engine}: nvinfer's segmentation output takes per-class scores [N, C, H, W] (each pixel "
                           f"the channel with the best score); the {layout} layout is not that: export the model "
                           "with class logits")
    raise EdgekitError(f"{engine}: a {card.task} model ({layout}); export-deepstream writes detectors and semantic "
                       "segmentation (class logits)")


def _why_no_parser(layout: str) -> str:
    if layout == "efficient_nms":
        return ("NVIDIA's NvDsInferParseCustomEfficientDetTAO reads EfficientNMS_TRT boxes as y1, x1, y2, x2, these "
                "are x1, y1, x2, y2")
    if layout in RAW_HEADS:
        return "a raw head before NMS; edgekit export --nms engine appends NMS, which still needs a parser"
    return "NVIDIA's parsers are for TAO models"


def _check_keys(props: Sequence[Tuple[str, str]], attrs: Sequence[Tuple[str, str]]) -> None:
    unknown = [k for k, _ in props if k not in PROPERTY_KEYS] + [k for k, _ in attrs if k not in CLASS_ATTRS_KEYS]
    if unknown:  # a programming error, not the user's: no file nvinfer would reject is written
        raise AssertionError(f"keys nvinfer does not parse: {unknown}")
    for key, value in [*props, *attrs]:
        if "\n" in value or "\r" in value or value != value.strip() or not value:
            raise EdgekitError(f"{key}: the value {printable(value)!r} cannot be written to a key file")


def _config_text(src: _Source, props: Sequence[Tuple[str, str]], attrs: Sequence[Tuple[str, str]],
                 warnings: Sequence[str], scale_error: float, parser: Optional[CustomParser]) -> str:
    card = src.card
    lines = [f"{HEADER} from the documentation, not run here:",
             f"#   {DOCS_URL}",
             "# (keys as gstnvinfer_property_parser.h names them; file paths are relative to this file's folder)",
             f"# Model: {card.name}, {card.task}, output layout {card.output_layout}, from {src.path.name}"]
    lines += [f"#   {n}" for n in src.notes]
    mean = ", ".join(_num(v) for v in card.mean)
    std = ", ".join(_num(v) for v in card.std)
    lines += [f"# Preprocessing from the card: (x / 255 - [{mean}]) / [{std}] on {card.color} {card.input_size[1]}x"
              f"{card.input_size[0]}; nvinfer computes net-scale-factor * (x - offsets[c]).",
              "#   " + ("exact" if scale_error == 0 else f"approximate: one scale factor for all channels, up to "
                                                           f"{scale_error:.2%} off"),
              f"#   resize {card.resize_mode}" + (f", image {card.pad_placement}ed (symmetric-padding); nvinfer pads "
                                                 f"with black where edgekit pads with {card.pad_value}"
                                                 if card.resize_mode == "letterbox" else "")]
    if parser is not None:
        lines.append(f"# Bounding boxes: {parser.function} from {parser.library} (given to export-deepstream); "
                     "cluster-mode " + ("4: NMS is in the graph" if registry.layout(card.output_layout).suppressed
                                        else "2: nvinfer's NMS with the card's thresholds"))
    lines += [f"# WARNING: {w}" for w in warnings]
    lines += ["", "[property]"] + [f"{k}={v}" for k, v in props]
    if attrs:
        lines += ["", "# The card's postprocess thresholds, for every class", "[class-attrs-all]"]
        lines += [f"{k}={v}" for k, v in attrs]
    return "\n".join(lines) + "\n"


def _readme(src: _Source, network_type: int, batch: int, warnings: Sequence[str],
            parser: Optional[CustomParser]) -> str:
    card = src.card
    sink = "nvsegvisual ! nvvideoconvert ! nveglglessink" if network_type == NETWORK_TYPE["segmentation"] else \
        "nvvideoconvert ! nvdsosd ! nveglglessink"
    warn = "".join(f"* {w}\n" for w in warnings) or "* none\n"
    derived = "".join(f"* {n}\n" for n in src.notes)
    cluster = "4 (none: NMS is in the graph)" if registry.layout(card.output_layout).suppressed else "2 (NMS)"
    parse = (f"* bounding boxes: `{parser.function}` from `{parser.library}`, as given to export-deepstream; "
             f"`cluster-mode` {cluster}; `pre-cluster-threshold`, `nms-iou-threshold`, `topk` from the card's "
             "postprocess settings\n"
             if parser is not None else "* `segmentation-threshold` 0: each pixel gets its best class logit's index\n")
    return f"""# DeepStream (Gst-nvinfer) configuration for {card.name}

Written by `edgekit export-deepstream` from `{src.path.name}` ({src.precision}, {src.backend}) **from NVIDIA's
documentation and sources; it was not run here** (no DeepStream, no GPU): check the first run's log on the device.
Reference: {DOCS_URL}

    gst-launch-1.0 filesrc location=video.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 \\
        nvstreammux name=m batch-size={batch} width=1280 height=720 ! \\
        nvinfer config-file-path={CONFIG_FILE} ! {sink}

or in a deepstream-app configuration: `[primary-gie]` with `enable=1` and `config-file={CONFIG_FILE}`.

## What comes from where

{derived}* `{LABELS_FILE}`: the card's {card.num_classes} classes, one per line, in class-index order
* `network-mode` {NETWORK_MODE[src.precision]} ({src.precision}), `batch-size` {batch} (the engine's largest batch)
* `net-scale-factor`, `offsets`, `model-color-format`: the card's normalisation and channel order ({card.color})
* `maintain-aspect-ratio`, `symmetric-padding`: the card's resize ({card.resize_mode}, pad {card.pad_placement})
{parse}
## Warnings

{warn}"""
