"""The CUDA memory/stream/event interface, on whichever binding is installed (cuda-python or pycuda)."""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_round_trip_through_device_memory(cuda):
    x = np.arange(1 << 16, dtype=np.float32)
    ptr = cuda.malloc(x.nbytes)
    back = cuda.pinned_empty(x.shape, np.float32)
    s = cuda.stream()
    cuda.htod_async(ptr, x, s)
    cuda.dtoh_async(back, ptr, s)
    cuda.synchronize(s)
    cuda.free(ptr)
    np.testing.assert_array_equal(back, x)


def test_events_time_device_work(cuda):
    x = np.ones(1 << 22, np.float32)  # 16 MB: a copy that takes measurable time
    ptr = cuda.malloc(x.nbytes)
    s = cuda.stream()
    start, end = cuda.event(), cuda.event()
    cuda.record(start, s)
    for _ in range(4):
        cuda.htod_async(ptr, x, s)
    cuda.record(end, s)
    ms = cuda.elapsed_ms(start, end)
    cuda.free(ptr)
    assert 0 < ms < 10_000


def test_device_info(cuda):
    name, cc = cuda.device_info()
    assert name and cc.count(".") == 1
