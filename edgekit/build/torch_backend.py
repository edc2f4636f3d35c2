"""Eager PyTorch backend (CPU or CUDA): the reference and baseline row in profiles and sweeps
(DESIGN.md section 3). Build side: it registers itself with the runtime side as a plugin (the
`edgekit.backends` entry point in pyproject.toml), so the runtime side never imports it and run-stream
and engine profiles never load torch. On CUDA, host-to-device copy, compute and device-to-host copy are
timed with CUDA events."""

import time
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime.backends.base import Backend, Capabilities, TensorSpec, Timing, runtime_module
from edgekit.runtime.card import ModelCard
from edgekit.runtime.manifest import BackendRecord


def _torch() -> Any:
    return runtime_module("torch", "torch", "build")


class TorchBackend(Backend):
    name = "torch"
    label = "PyTorch"
    capabilities = Capabilities(precisions=(), opens_checkpoints=True, extra="build")

    @classmethod
    def how_to_install(cls, jetpack_major: Any) -> str:
        return "pip install 'edgekit[build]' (checkpoints, training, export; Python 3.10+)"

    @classmethod
    def open_checkpoint(cls, path: Path, device: str) -> Tuple[Backend, ModelCard, BackendRecord]:
        backend = cls(path, device)
        return backend, backend.card, BackendRecord(name=cls.name, version=cls.version(), device=backend.device)

    @classmethod
    def runtime(cls) -> Any:
        return _torch()

    @classmethod
    def describe(cls, runtime: Any) -> str:
        cuda = runtime.cuda
        gpu = f"CUDA {runtime.version.cuda} on {cuda.get_device_name(0)}" if cuda.is_available() else "CPU"
        return f"torch {runtime.__version__} ({gpu})"

    @staticmethod
    def resolve_device(device: str) -> str:
        torch = _torch()
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise EdgekitError(f"--device {device}: choose cpu, cuda or auto")
        if device == "cuda" and not torch.cuda.is_available():
            raise EdgekitError("--device cuda: PyTorch sees no CUDA GPU here (use --device cpu)")
        return device

    def __init__(self, checkpoint_path: "str | Path", device: str = "cpu") -> None:
        torch = _torch()
        from edgekit.build.models import checkpoint

        self.torch = torch
        self.device = self.resolve_device(device)
        model, card = checkpoint.load(checkpoint_path)
        self.model = model.to(self.device).eval()
        self.card: ModelCard = card
        h, w = card.input_size
        self._inputs = [TensorSpec(card.input_name, ("batch", 3, h, w), "float32")]
        self._outputs = [TensorSpec(card.output_name, ("batch",), "float32")]
        self._events = ([torch.cuda.Event(enable_timing=True) for _ in range(4)] if self.device == "cuda" else [])
        self._timing = Timing()

    def infer(self, inputs: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
        torch = self.torch
        t0 = time.perf_counter_ns()
        with torch.inference_mode():
            if self.device == "cpu":
                out = self.model(torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32)))
                result = out.numpy()
                self._timing = Timing(host_ms=(time.perf_counter_ns() - t0) / 1e6)
                return {self.card.output_name: result}
            ev = self._events
            ev[0].record()
            x = torch.from_numpy(np.ascontiguousarray(inputs[0], np.float32)).to(self.device, non_blocking=True)
            ev[1].record()
            cudnn = torch.backends.cudnn
            # the reference backend computes in FP32: cuDNN's default TF32 convolutions (Ampere and newer) differ
            # from the CPU by ~2e-3 and would be a precision the report does not name
            with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                             allow_tf32=False):
                out = self.model(x)
            ev[2].record()
            result = out.cpu().numpy()
            ev[3].record()
            ev[3].synchronize()
        self._timing = Timing(host_ms=(time.perf_counter_ns() - t0) / 1e6, h2d_ms=ev[0].elapsed_time(ev[1]),
                              device_ms=ev[1].elapsed_time(ev[2]), d2h_ms=ev[2].elapsed_time(ev[3]))
        return {self.card.output_name: result}

    def close(self) -> None:
        if self.device == "cuda":  # give the GPU memory back to other engines in the same process
            self.model.to("cpu")
            self.torch.cuda.empty_cache()
