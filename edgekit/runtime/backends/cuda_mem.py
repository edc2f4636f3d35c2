"""The one small CUDA memory/stream/event interface the TensorRT backend needs, over cuda-python
(`cuda.bindings.runtime` from 12.6.1, `cuda.cudart` before; 13.0 removed the old names) or pycuda.
Neither comes with JetPack by default; whichever is installed is used."""

import ctypes
import importlib
from typing import Any, List, Optional, Tuple

import numpy as np

from edgekit.errors import EdgekitError


class CudaApi:
    """Device buffers, async copies on one stream, and events for device timing."""

    name = ""

    def malloc(self, nbytes: int) -> int: raise NotImplementedError
    def free(self, ptr: int) -> None: raise NotImplementedError
    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: raise NotImplementedError
    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: raise NotImplementedError
    def stream(self) -> Any: raise NotImplementedError
    def stream_handle(self, stream: Any) -> int: raise NotImplementedError
    def synchronize(self, stream: Any) -> None: raise NotImplementedError
    def event(self) -> Any: raise NotImplementedError
    def record(self, event: Any, stream: Any) -> None: raise NotImplementedError
    def elapsed_ms(self, start: Any, end: Any) -> float: raise NotImplementedError
    def pinned_empty(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray: return np.empty(shape, dtype)
    def device_info(self) -> Tuple[str, str]: raise NotImplementedError


def _check(result: Any) -> Any:
    """cuda-python calls return (err, *values); raise on a non-zero error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EdgekitError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else (values or None)


class CudaPython(CudaApi):
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            rt = importlib.import_module("cuda.bindings.runtime")  # cuda-python >= 12.6.1
        except ImportError:
            rt = importlib.import_module("cuda.cudart")  # older releases
        self.rt = rt
        _check(rt.cudaFree(0))  # creates the context; fails clearly where there is no GPU

    def malloc(self, nbytes: int) -> int:
        return int(_check(self.rt.cudaMalloc(max(1, nbytes))))

    def free(self, ptr: int) -> None:
        _check(self.rt.cudaFree(ptr))

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def stream(self) -> Any:
        return _check(self.rt.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        _check(self.rt.cudaStreamSynchronize(stream))

    def event(self) -> Any:
        return _check(self.rt.cudaEventCreate())

    def record(self, event: Any, stream: Any) -> None:
        _check(self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        _check(self.rt.cudaEventSynchronize(end))
        return float(_check(self.rt.cudaEventElapsedTime(start, end)))

    def pinned_empty(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        # Page-locked host memory makes the async copies truly asynchronous.
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(_check(self.rt.cudaMallocHost(max(1, nbytes))))
        raw = np.ctypeslib.as_array((ctypes.c_byte * max(1, nbytes)).from_address(ptr))
        self._pinned = getattr(self, "_pinned", []) + [ptr]  # freed with the process (engines live that long)
        return raw.view(np.dtype(dtype))[: int(np.prod(shape))].reshape(shape)

    def device_info(self) -> Tuple[str, str]:
        dev = int(_check(self.rt.cudaGetDevice()))
        props = _check(self.rt.cudaGetDeviceProperties(dev))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00"), f"{props.major}.{props.minor}"


class PyCuda(CudaApi):
    name = "pycuda"

    def __init__(self) -> None:
        importlib.import_module("pycuda.autoinit")  # creates the context
        self.drv = importlib.import_module("pycuda.driver")

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(max(1, nbytes))
        self._allocs = getattr(self, "_allocs", {})
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = getattr(self, "_allocs", {}).pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def stream(self) -> Any:
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def event(self) -> Any:
        return self.drv.Event()

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def pinned_empty(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def device_info(self) -> Tuple[str, str]:
        dev = self.drv.Context.get_device()
        major, minor = dev.compute_capability()
        return dev.name(), f"{major}.{minor}"


def open_cuda(prefer: Optional[str] = None) -> CudaApi:
    """The first CUDA binding that imports and finds a GPU (cuda-python, then pycuda)."""
    errors: List[str] = []
    order = [CudaPython, PyCuda]
    if prefer:
        order = [c for c in order if c.name == prefer] or order
    for cls in order:
        try:
            return cls()
        except ImportError as e:
            errors.append(f"{cls.name}: not installed ({e.name or e})")
        except Exception as e:  # a binding present but no usable GPU/driver
            errors.append(f"{cls.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise EdgekitError("no usable CUDA binding: " + "; ".join(errors) + " (pip install cuda-python)")
