"""The runtime side as a Python API, small enough for a ten-line loop (jetson-inference's idea):

    import edgekit

    model = edgekit.open("det.int8.onnx")          # an engine, an edgekit ONNX or a checkpoint
    with edgekit.frames("video.mp4") as frames:     # a file, folder, camera, csi://0, rtsp://..., synthetic://
        for frame in frames:                        # BGR uint8 frames
            result = model(frame)                   # the task's result in frame pixels (Detections, ClassMap)
            model.draw(frame, result)               # boxes or a mask overlay, in place
            print(model.to_json(result))

`edgekit run-stream` runs the same calls, one stage per thread."""

from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from edgekit.runtime import registry
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.opening import Opened, open_model
from edgekit.runtime.preprocess import Transform, preprocess
from edgekit.runtime.serving import is_served
from edgekit.runtime.stream.sources import open_source


class Model:
    """A model ready for frames: preprocessing from its card, its backend, and its layout's decoding."""

    def __init__(self, opened: Opened, score_threshold: Optional[float] = None,
                 iou_threshold: Optional[float] = None) -> None:
        self.opened = opened
        self.card = opened.card
        self.task = registry.task(self.card.task)
        self.layout = registry.layout(self.card.output_layout)
        self.params = DecodeParams.of(self.card, score_threshold, iou_threshold)

    # --- the stages, one call each (run-stream runs them in separate threads) -----------------------
    def preprocess(self, frame: np.ndarray) -> Tuple[np.ndarray, Transform]:
        """A BGR frame -> the network input ([1, 3, H, W] float, or [1, H, W, 3] uint8 where the card says the
        preprocessing is fused into the graph) and how the frame maps onto it."""
        return preprocess(frame, self.card)

    def infer(self, tensor: np.ndarray) -> Dict[str, np.ndarray]:
        """Raw outputs by name."""
        return self.opened.infer(tensor)

    def decode(self, outputs: Dict[str, np.ndarray], transform: Transform, index: int = 0,
               params: Optional[DecodeParams] = None) -> Any:
        """Image `index` of a batch of raw outputs -> the task's result in frame coordinates."""
        return self.layout.decode(self.layout.image(outputs, index), transform, self.card, params or self.params)

    # --- the whole of it ----------------------------------------------------------------------------
    def __call__(self, frame: np.ndarray) -> Any:
        tensor, transform = self.preprocess(frame)
        return self.decode(self.infer(tensor), transform)

    def draw(self, frame: np.ndarray, result: Any) -> None:
        self.task.draw(frame, result, self.card)

    def to_json(self, result: Any) -> Dict[str, Any]:
        return self.task.to_json(result, self.card)

    @property
    def last_timing(self) -> Any:
        """Host (and, on a GPU, device) time of the last inference."""
        return self.opened.backend.last_timing

    def close(self) -> None:
        self.opened.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open(path: "str | Path", score_threshold: Optional[float] = None, iou_threshold: Optional[float] = None,
         device: str = "auto") -> Model:
    """Open an engine (its manifest checked against this machine), an edgekit ONNX, a checkpoint, or a model served
    by Triton Inference Server (triton://HOST:GRPC_PORT/MODEL, from edgekit export-triton)."""
    if is_served(path):
        from edgekit.runtime.serving.triton_client import open_triton

        return Model(open_triton(path), score_threshold, iou_threshold)
    return Model(open_model(path, device=device), score_threshold, iou_threshold)


class frames:  # a lower-case class: used like a function, `with edgekit.frames(uri) as frames:`
    """BGR frames of a source URI: a video file, an image folder, a camera index or /dev/videoN, csi://N,
    rtsp://... (reconnecting) or synthetic://. Iterate it; close it (or use `with`) when done."""

    def __init__(self, uri: str, loop: bool = False, **source_options: Any) -> None:
        self.source = open_source(uri, loop=loop, **source_options)

    def __iter__(self) -> Iterator[np.ndarray]:
        for captured in self.source.frames():
            yield captured.frame

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "frames":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
