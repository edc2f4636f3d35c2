"""TensorRT's EfficientNMS_TRT plugin at the end of the graph (NVIDIA/TensorRT plugin/efficientNMSPlugin/README.md),
as YOLOv7's TensorRT end-to-end export writes it (WongKinYiu/yolov7 models/experimental.py, ONNX_TRT): four outputs,
the number of detections int32 [B, 1], boxes [B, max, 4] as corners (x1, y1, x2, y2 in input pixels, whatever the
plugin's input box coding), scores [B, max] and classes int32 [B, max]. Only the first num_detections rows of an
image are valid; the plugin has already thresholded, sorted and suppressed them. (The corners keep the order of
the plugin's input: networks trained in TensorFlow, EfficientDet among them, give y1, x1, y2, x2, which this layout
does not swap.)

Exporters name the outputs differently (num_dets/det_boxes/det_scores/det_classes in YOLOv7, num_detections/
detection_boxes/... in the plugin's documentation), so they are told apart by shape and dtype."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import TensorSpec
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams, Layout
from edgekit.runtime.layouts.shapes import class_indices, describe_outputs, fits, is_float, is_integer
from edgekit.runtime.preprocess import Transform
from edgekit.runtime.registry import register_layout
from edgekit.runtime.tasks.detection import Detections

Output = Tuple[str, Tuple[Any, ...], str]  # name, shape with the batch axis, dtype name








def roles(outputs: Sequence[Output]) -> Optional[Dict[str, str]]:
    """Output name by role (num, boxes, scores, classes), or None where the outputs are not this layout."""
    if len(outputs) != 4:
        return None
    reals = [o for o in outputs if is_float(o[2])]
    ints = [o for o in outputs if is_integer(o[2])]
    boxes = [o for o in reals if len(o[1]) == 3 and fits(o[1][2], 4)]
    scores = [o for o in reals if len(o[1]) == 2]
    if len(boxes) != 1 or len(scores) != 1 or len(ints) != 2:
        return None
    (_, bshape, _), (_, sshape, _) = boxes[0], scores[0]
    if not (fits(sshape[0], bshape[0]) and fits(sshape[1], bshape[1])):
        return None
    # With max 1 box, num_detections [B, 1] and classes [B, 1] look alike: a name saying "num" decides, then the
    # plugin's own order, num_detections first.
    ints = sorted(ints, key=lambda o: "num" not in o[0].lower())
    for num, cls in (ints, ints[::-1]):
        if (len(num[1]) == 2 and fits(num[1][1], 1) and fits(num[1][0], bshape[0])
                and len(cls[1]) == 2 and fits(cls[1][0], bshape[0]) and fits(cls[1][1], bshape[1])):
            return {"num": num[0], "boxes": boxes[0][0], "scores": scores[0][0], "classes": cls[0]}
    return None


@register_layout
class EfficientNMS(Layout):
    name = "efficient_nms"
    suppressed = True
    task = "detection"
    description = ("TensorRT EfficientNMS_TRT (YOLOv7 TensorRT end2end): num [B,1], corner boxes [B,max,4] in pixels, "
                   "scores, classes")

    def recognises(self, outputs: Sequence[TensorSpec], card: ModelCard) -> bool:
        return roles([(o.name, tuple(o.shape), o.dtype) for o in outputs]) is not None

    def check(self, outputs: Sequence[TensorSpec], card: ModelCard, source: str) -> None:
        specs = [(o.name, tuple(o.shape), o.dtype) for o in outputs]
        if roles(specs) is None:
            raise EdgekitError(f"{source}: outputs {describe_outputs(specs)}; an EfficientNMS_TRT detector has four: "
                               "num_detections int32 [N, 1], boxes [N, max, 4], scores [N, max], "
                               "classes int32 [N, max]")

    def decode(self, outputs: Mapping[str, np.ndarray], transform: Transform, card: ModelCard,
               params: DecodeParams) -> Detections:
        arrays = {name: np.asarray(a) for name, a in outputs.items()}
        found: List[Output] = [(n, (1,) + a.shape, a.dtype.name) for n, a in arrays.items()]
        role = roles(found)
        if role is None:
            raise EdgekitError(f"outputs {describe_outputs(found)} (one image's) are not EfficientNMS_TRT's four")
        boxes = arrays[role["boxes"]].astype(np.float32)
        n = int(np.clip(arrays[role["num"]].reshape(-1)[0], 0, len(boxes)))
        # The plugin thresholded at its own score_threshold when the engine was built; the card's (or a command's)
        # may be higher.
        scores = arrays[role["scores"]][:n].astype(np.float32)
        keep = np.flatnonzero(scores > params.score_threshold)[: params.max_detections]
        classes = class_indices(arrays[role["classes"]][:n][keep], card, role["classes"])
        return Detections(transform.boxes_to_source(boxes[:n][keep]), scores[keep], classes)
