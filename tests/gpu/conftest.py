"""GPU, TensorRT and Jetson tests: marked, and skipped with the reason where the part is absent.

They run where a GPU is: `pytest -m "gpu or tensorrt or jetson"` (jetson/selftest.sh runs them)."""

import pytest


def _cuda_binding():
    from edgekit.errors import EdgekitError
    from edgekit.runtime.backends.cuda_mem import open_cuda

    try:
        return open_cuda()
    except EdgekitError as e:
        pytest.skip(f"no CUDA binding with a GPU: {e}")


@pytest.fixture(scope="session", params=["cuda-python", "pycuda"])
def cuda(request):
    """Each CUDA binding that is installed (the TensorRT backend works with either)."""
    from edgekit.runtime.backends.cuda_mem import CudaPython, PyCuda

    cls = {"cuda-python": CudaPython, "pycuda": PyCuda}[request.param]
    try:
        return cls()
    except ImportError:
        pytest.skip(f"{request.param} is not installed")
    except Exception as e:  # installed, but no GPU or driver
        pytest.skip(f"{request.param}: no usable GPU: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


@pytest.fixture(scope="session")
def any_cuda():
    return _cuda_binding()


@pytest.fixture(scope="session")
def trt(any_cuda):
    return pytest.importorskip("tensorrt", reason="TensorRT is not installed")
