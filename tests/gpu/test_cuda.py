"""The CUDA memory/stream/event interface (cuda_mem.py) on each binding that is installed (cuda-python, pycuda):
copies, event timing, release of what it allocates, buffer reuse over many calls, and the primary context from a
worker thread (run-stream infers on a pipeline thread). Needs a CUDA GPU, not TensorRT."""

import threading

import numpy as np
import pytest

from edgekit.runtime.backends.cuda_mem import BufferPool, self_test

pytestmark = pytest.mark.gpu
MB = 1 << 20


def _rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_round_trip_through_device_memory(cuda):
    x = np.arange(1 << 16, dtype=np.float32)
    ptr = cuda.malloc(x.nbytes)
    back = cuda.pinned_empty(x.shape, np.float32)
    s = cuda.stream()
    cuda.htod_async(ptr, x, s)
    cuda.dtoh_async(back, ptr, s)
    cuda.synchronize(s)
    np.testing.assert_array_equal(back, x)
    cuda.destroy_stream(s)
    cuda.host_free(back)
    cuda.free(ptr)


def test_self_test_copies_1_kb(cuda):
    assert "1024-byte host->device->host copy on" in self_test(cuda)


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
    for e in (start, end):
        cuda.destroy_event(e)
    cuda.destroy_stream(s)
    assert 0 < ms < 10_000


def test_device_info(cuda):
    name, cc = cuda.device_info()
    assert name and cc.count(".") == 1
    free, total = cuda.mem_info()
    assert 0 < free <= total


def test_streams_events_and_buffers_are_released(cuda):
    """What the interface allocates, it frees: 300 rounds of stream, event, 1 MB pinned and 1 MB device buffer
    leave device and host memory where they were (a leak would be 300 MB of each)."""
    def churn(n):
        for _ in range(n):
            s, e = cuda.stream(), cuda.event()
            buf, ptr = cuda.host_alloc(MB), cuda.malloc(MB)
            cuda.htod_async(ptr, buf, s)
            cuda.record(e, s)
            cuda.synchronize(s)
            cuda.free(ptr)
            cuda.host_free(buf)
            cuda.destroy_event(e)
            cuda.destroy_stream(s)

    churn(20)
    free0, rss0 = cuda.mem_info()[0], _rss()
    churn(300)
    assert abs(cuda.mem_info()[0] - free0) < 16 * MB
    assert _rss() - rss0 < 64 * MB


def test_buffers_are_reused_over_1000_infer_like_calls(cuda):
    """An infer's copies through BufferPool (stage the input in page-locked memory, copy it to the device and back
    into the output's page-locked buffer), with the batch changing every call: after the first calls no buffer is
    allocated again, and device and host memory stay flat over 1000 calls."""
    pool = BufferPool(cuda)
    s = cuda.stream()
    shapes = [(1, 3, 160, 160), (4, 3, 160, 160), (2, 3, 160, 160), (3, 3, 160, 160)]

    def call(i):
        shape = shapes[i % len(shapes)]
        staged = pool.host("images", shape, np.float32)
        staged[...] = i % 7
        ptr, _ = pool.device("images", staged.nbytes)
        out = pool.host("output0", shape, np.float32)
        out_ptr, _ = pool.device("output0", out.nbytes)
        with cuda.active():
            cuda.htod_async(ptr, staged, s)
            cuda.dtoh_async(out, ptr, s)
            cuda.synchronize(s)
        assert out.shape == shape and out[0, 0, 0, 0] == i % 7 and out[-1, -1, -1, -1] == i % 7
        assert out_ptr

    for i in range(8):  # every shape once: the largest is allocated
        call(i)
    allocations, free0, rss0 = pool.allocations, cuda.mem_info()[0], _rss()
    for i in range(1000):
        call(i)
    assert pool.allocations == allocations == 8  # 4 buffers (input, output; host, device), each grown once
    assert abs(cuda.mem_info()[0] - free0) < 4 * MB
    assert _rss() - rss0 < 32 * MB  # 1000 new 1.2 MB buffers would be over a gigabyte
    pool.close()
    pool.close()
    cuda.destroy_stream(s)
    assert cuda.mem_info()[0] >= free0


def test_primary_context_serves_worker_threads(cuda):
    """Memory made on the main thread is used from worker threads, and the other way round (pycuda: the primary
    context pushed per call; pycuda.autoinit's context would be current on the importing thread only)."""
    x = np.arange(1 << 14, dtype=np.float32)
    ptr = cuda.malloc(x.nbytes)
    s = cuda.stream()
    cuda.htod_async(ptr, x, s)
    cuda.synchronize(s)
    results, errors, made = [], [], []

    def work():
        try:
            ws = cuda.stream()
            back = cuda.pinned_empty(x.shape, np.float32)
            with cuda.active():
                cuda.dtoh_async(back, ptr, ws)
                cuda.synchronize(ws)
            results.append(back.copy())
            cuda.host_free(back)
            cuda.destroy_stream(ws)
            made.append(cuda.malloc(4096))
        except Exception as e:  # collected for the main thread's assertion
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 4 and all(np.array_equal(r, x) for r in results)
    for p in made:  # freed on the main thread
        cuda.free(p)
    cuda.free(ptr)
    cuda.destroy_stream(s)
