"""The torch backend on a CUDA GPU: same outputs as on the CPU, and CUDA-event timing in profile."""

import importlib

import numpy as np
import pytest

from edgekit.build.demo import SHIPPED

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA GPU")
    for module in ("edgekit.build.torch_backend", "edgekit.runtime.measure.profile"):
        try:  # a GPU machine may lack part of edgekit's build side (OpenCV, safetensors, ...)
            importlib.import_module(module)
        except ImportError as e:
            pytest.skip(f"{module} does not import here: {e}")
    return torch


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_cuda_outputs_match_cpu(cuda_torch, task):
    from edgekit.build.torch_backend import TorchBackend
    from edgekit.runtime.measure.profile import example_input

    with TorchBackend(SHIPPED[task], "cpu") as cpu, TorchBackend(SHIPPED[task], "cuda") as gpu:
        x = example_input(cpu.card, 2)
        name = cpu.card.output_name
        np.testing.assert_allclose(gpu.infer([x])[name], cpu.infer([x])[name], atol=2e-3, rtol=1e-3)


def test_profile_on_cuda_separates_copies_and_compute(cuda_torch):
    from edgekit.build.torch_backend import TorchBackend
    from edgekit.runtime.measure.profile import ProfileOptions, Subject, profile

    b, card, record = TorchBackend.open_checkpoint(SHIPPED["detection"], "cuda")
    with b:
        r = profile(Subject("det", b, card, record, "fp32"),
                    ProfileOptions(warmup_s=0.2, iterations=50, duration_s=0.0, power=False))
    assert r["backend"]["device"] == "cuda"
    assert r["device_ms"]["count"] == r["iterations"] >= 50
    assert r["h2d_ms"]["mean"] > 0 and r["d2h_ms"]["mean"] > 0
    # CUDA events bracket work inside one host call: device compute cannot exceed host wall time.
    assert r["device_ms"]["p50"] <= r["host_ms"]["p50"]
