"""GPU, TensorRT and Jetson tests: marked, and skipped with the reason where the part is absent.

They run where a GPU is: `pytest -m "gpu or tensorrt or jetson"` (jetson/selftest.sh runs them)."""

import pytest


def _cuda_binding():
    from edgekit.backends.cuda_mem import open_cuda
    from edgekit.errors import EdgekitError

    try:
        return open_cuda()
    except EdgekitError as e:
        pytest.skip(f"no CUDA binding with a GPU: {e}")


@pytest.fixture(scope="session")
def cuda():
    return _cuda_binding()


@pytest.fixture(scope="session")
def trt(cuda):
    return pytest.importorskip("tensorrt", reason="TensorRT is not installed")
