"""The models Triton's Python backend runs for a repository from `edgekit export-triton`
(https://github.com/triton-inference-server/python_backend): each model.py there makes one of these with Triton's
`args` and hands it every batch of requests. They call the very code run-stream runs: `preprocess` from the card,
the layout's decode, and (Infer, with --infer-python) edgekit's own backend on the engine.

A model with `max_batch_size` > 0 sees a leading batch axis on every tensor (a request may carry several frames);
a static one (0) sees the engine's full shapes and one frame per request. A request that fails gets its own error
response; the others in the batch are answered."""

import contextlib
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime import registry
from edgekit.runtime.card import ModelCard
from edgekit.runtime.layouts.base import DecodeParams
from edgekit.runtime.preprocess import Transform, preprocess
from edgekit.runtime.serving.triton_repo import CARD_PARAM, ENGINE_PARAM, FRAME, IMAGE, RESULT, TRANSFORM


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]  # only inside Triton's Python backend

    return pb_utils


def _failed(pb: Any, e: Exception) -> Any:
    """An error response that tells the client what went wrong, in one line."""
    text = str(e) if isinstance(e, EdgekitError) else f"{type(e).__name__}: {e}"
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(text))


def transform_row(t: Transform) -> List[float]:
    return [t.scale_x, t.scale_y, t.pad_x, t.pad_y, float(t.src_w), float(t.src_h)]


def transform_of(row: np.ndarray) -> Transform:
    r = [float(v) for v in np.asarray(row, np.float64).reshape(6)]
    return Transform(r[0], r[1], r[2], r[3], int(round(r[4])), int(round(r[5])))


class _Model:
    def __init__(self, args: Dict[str, Any]) -> None:
        self.config = json.loads(args["model_config"])
        params = self.config.get("parameters", {})
        self.card = ModelCard.from_json(params[CARD_PARAM]["string_value"], f"{self.config.get('name')}: {CARD_PARAM}")
        self.batching = int(self.config.get("max_batch_size", 0)) > 0
        self.input_names = [t["name"] for t in self.config.get("input", [])]
        self.output_names = [t["name"] for t in self.config.get("output", [])]

    def execute(self, requests: Sequence[Any]) -> List[Any]:
        pb = _pb()
        responses = []
        for request in requests:
            try:
                tensors = self.run(request)
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(n, a) for n, a in tensors.items()]))
            except Exception as e:  # noqa: BLE001  (the client gets the message; the other requests go on)
                responses.append(_failed(pb, e))
        return responses

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def inputs(self, request: Any) -> Dict[str, np.ndarray]:
        pb = _pb()
        found = {}
        for name in self.input_names:
            t = pb.get_input_tensor_by_name(request, name)
            if t is not None:
                found[name] = t.as_numpy()
        return found

    def finalize(self) -> None:
        pass


class Preprocess(_Model):
    """A raw BGR frame (FRAME uint8 [H, W, 3]) or an encoded image (IMAGE, the bytes of a JPEG/PNG/...) -> the
    engine's input tensor and TRANSFORM (how the frame maps onto it)."""

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        given = self.inputs(request)
        if (FRAME in given) == (IMAGE in given):
            raise EdgekitError(f"send one of {FRAME} (a BGR frame, uint8 [H, W, 3]) or {IMAGE} (an encoded image)")
        frames = self._frames(given)
        tensors, rows = [], []
        for frame in frames:
            x, t = preprocess(frame, self.card)
            tensors.append(x)
            rows.append(transform_row(t))
        out = np.concatenate(tensors, 0)
        transform = np.asarray(rows, np.float32)
        return {self.output_names[0]: out, TRANSFORM: transform}

    def _frames(self, given: Dict[str, np.ndarray]) -> List[np.ndarray]:
        import cv2

        if FRAME in given:
            a = given[FRAME]
            return list(a) if self.batching else [a]
        a = given[IMAGE]
        frames = []
        for row in (a if self.batching else [a]):
            img = cv2.imdecode(np.ascontiguousarray(row, np.uint8).reshape(-1), cv2.IMREAD_COLOR)
            if img is None:
                raise EdgekitError(f"{IMAGE}: not an image OpenCV can decode ({row.size} bytes)")
            frames.append(img)
        return frames


class Postprocess(_Model):
    """The engine's outputs and TRANSFORM -> RESULT (the task's JSON of each frame, as a line of run-stream's
    results.jsonl) and the task's typed tensors (Task.to_tensors), padded along their first axis to the longest
    of the request's frames (COUNT says how many rows are real)."""

    def __init__(self, args: Dict[str, Any]) -> None:
        super().__init__(args)
        self.task = registry.task(self.card.task)
        self.layout = registry.layout(self.card.output_layout)
        self.params = DecodeParams.of(self.card)
        self.served = [n for n in self.output_names if n != RESULT]

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        given = self.inputs(request)
        transforms = given.pop(TRANSFORM).reshape(-1, 6)
        jsons, typed = [], []
        for i, row in enumerate(transforms):
            result = self.layout.decode(self.layout.image(given, i), transform_of(row), self.card, self.params)
            jsons.append(json.dumps(self.task.to_json(result, self.card)).encode())
            typed.append(self.task.to_tensors(result, self.card))
        out: Dict[str, np.ndarray] = {RESULT: np.array(jsons, dtype=np.object_).reshape(-1, 1)}
        for name in self.served:
            out[name] = _stack([t[name] for t in typed])
        return out


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Arrays of one frame each -> [frames, ...], each padded with zeros along its first axis to the longest."""
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    rows = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), rows, *arrays[0].shape[1:]), arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, :a.shape[0]] = a
    return out


class Infer(_Model):
    """The engine run by edgekit's own backend inside Triton (export-triton --infer-python): for a server without a
    native backend for it. Requests Triton's dynamic batcher put together are run as one batch where the engine
    takes it, and the outputs split back. With N instances (each its own process) on a CPU backend, each gets its
    share of the cores, as run-stream's workers do."""

    def __init__(self, args: Dict[str, Any]) -> None:
        super().__init__(args)
        from edgekit.runtime.opening import open_model
        from edgekit.runtime.stream.runner import cores

        folder = Path(args["model_repository"]) / str(args["model_version"])
        engine = json.loads(self.config["parameters"][ENGINE_PARAM]["string_value"])["file"]
        self.opened = open_model(folder / engine, pipelined=True)
        self.backend = self.opened.backend
        instances = sum(int(g.get("count", 1)) for g in self.config.get("instance_group", [])) or 1
        n_cores = cores()
        _, threads = self.backend.parallel_plan(n_cores)
        if instances > 1 and threads:
            with contextlib.suppress(EdgekitError):  # (a backend of one worker: the engine as opened)
                self.backend = self.backend.worker(max(1, n_cores // instances))
        self.limit = self.backend.batch_limit()

    def execute(self, requests: Sequence[Any]) -> List[Any]:
        if not self.batching or len(requests) == 1:
            return super().execute(requests)
        pb = _pb()
        name = self.input_names[0]
        parts = [pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
        sizes = [len(p) for p in parts]
        if self.limit is not None and sum(sizes) > self.limit:
            return super().execute(requests)
        try:
            outputs = self.backend.infer([np.concatenate(parts, 0)])
        except Exception as e:  # noqa: BLE001
            return [_failed(pb, e) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensors = [pb.Tensor(k, np.ascontiguousarray(v[start:start + n])) for k, v in outputs.items()]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def run(self, request: Any) -> Dict[str, np.ndarray]:
        given = self.inputs(request)
        return self.backend.infer([given[self.input_names[0]]])

    def finalize(self) -> None:
        if self.backend is not self.opened.backend:
            self.backend.close()
        self.opened.close()


__all__: Tuple[str, ...] = ("Preprocess", "Postprocess", "Infer", "transform_row", "transform_of")
