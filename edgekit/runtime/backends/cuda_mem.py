"""The one small CUDA memory/stream/event interface the TensorRT backend needs, over cuda-python
(`cuda.bindings.runtime` from 12.6.1, `cuda.cudart` before; 13.0 removed the old names) or pycuda.
Neither comes with JetPack by default; whichever is installed and works here is used.

Both work in the device's primary context, the one the CUDA runtime (and so TensorRT) uses on every thread.
cuda-python's runtime API does that by itself. pycuda retains the primary context and makes it current around
each call (`active()`), on whichever thread calls: `pycuda.autoinit` would create a context of its own, current
only on the importing thread, and TensorRT work on a pipeline thread would then fail ("invalid device context").

Everything allocated here has its release: `free`, `host_free`, `destroy_stream`, `destroy_event`;
`BufferPool` keeps one device and one page-locked host buffer per tensor and frees them all in `close()`.
"""

import contextlib
import ctypes
import importlib
import re
import threading
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import numpy as np

from edgekit.errors import EdgekitError


class CudaApi:
    """Device buffers, page-locked host buffers, async copies on a stream, and events for device timing."""

    name = ""

    def active(self) -> ContextManager[None]:
        """The primary context made current on this thread for the block (a no-op where the binding does it)."""
        return contextlib.nullcontext()

    def malloc(self, nbytes: int) -> int: raise NotImplementedError
    def free(self, ptr: int) -> None: raise NotImplementedError
    def host_alloc(self, nbytes: int) -> np.ndarray: raise NotImplementedError  # 1-D uint8, page-locked
    def host_free(self, buf: np.ndarray) -> None: raise NotImplementedError  # a host_alloc buffer (or a view from 0)
    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: raise NotImplementedError
    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: raise NotImplementedError
    def stream(self) -> Any: raise NotImplementedError
    def destroy_stream(self, stream: Any) -> None: raise NotImplementedError
    def stream_handle(self, stream: Any) -> int: raise NotImplementedError
    def synchronize(self, stream: Any) -> None: raise NotImplementedError
    def event(self) -> Any: raise NotImplementedError
    def destroy_event(self, event: Any) -> None: raise NotImplementedError
    def record(self, event: Any, stream: Any) -> None: raise NotImplementedError
    def elapsed_ms(self, start: Any, end: Any) -> float: raise NotImplementedError
    def device_info(self) -> Tuple[str, str]: raise NotImplementedError
    def mem_info(self) -> Tuple[int, int]: raise NotImplementedError  # (free, total) device bytes

    def pinned_empty(self, shape: Tuple[int, ...], dtype: Any) -> np.ndarray:
        """A page-locked host array (release it with host_free)."""
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        return self.host_alloc(max(1, n * dt.itemsize))[: n * dt.itemsize].view(dt).reshape(shape)


def _check(result: Any) -> Any:
    """cuda-python calls return (err, *values); raise on a non-zero error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EdgekitError(f"CUDA error {getattr(err, 'name', err)} ({int(err)})")
    return values[0] if len(values) == 1 else (values or None)


def _data_address(buf: np.ndarray) -> int:
    if not buf.flags.c_contiguous:  # an async copy reads or writes the bytes in place: no temporary copy may stand in
        raise ValueError("CUDA copies need C-contiguous host arrays")
    return int(buf.__array_interface__["data"][0])


class CudaPython(CudaApi):
    name = "cuda-python"

    def __init__(self) -> None:
        try:
            rt = importlib.import_module("cuda.bindings.runtime")  # cuda-python >= 12.6.1
        except ImportError:
            rt = importlib.import_module("cuda.cudart")  # older releases
        self.rt = rt
        self._host: Dict[int, Any] = {}  # address -> the ctypes array the NumPy buffer wraps
        _check(rt.cudaFree(0))  # initializes the primary context; fails clearly where there is no GPU

    def malloc(self, nbytes: int) -> int:
        return int(_check(self.rt.cudaMalloc(max(1, nbytes))))

    def free(self, ptr: int) -> None:
        _check(self.rt.cudaFree(ptr))

    def host_alloc(self, nbytes: int) -> np.ndarray:
        # Page-locked host memory makes the async copies truly asynchronous.
        ptr = int(_check(self.rt.cudaMallocHost(max(1, nbytes))))
        raw = (ctypes.c_uint8 * max(1, nbytes)).from_address(ptr)
        self._host[ptr] = raw
        return np.ctypeslib.as_array(raw)

    def host_free(self, buf: np.ndarray) -> None:
        ptr = _data_address(buf)
        if self._host.pop(ptr, None) is None:
            raise ValueError("host_free: not a buffer from host_alloc")
        _check(self.rt.cudaFreeHost(ptr))

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(self.rt.cudaMemcpyAsync(dst, _data_address(src), src.nbytes, kind, stream))

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(self.rt.cudaMemcpyAsync(_data_address(dst), src, dst.nbytes, kind, stream))

    def stream(self) -> Any:
        return _check(self.rt.cudaStreamCreate())

    def destroy_stream(self, stream: Any) -> None:
        _check(self.rt.cudaStreamDestroy(stream))

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        _check(self.rt.cudaStreamSynchronize(stream))

    def event(self) -> Any:
        return _check(self.rt.cudaEventCreate())

    def destroy_event(self, event: Any) -> None:
        _check(self.rt.cudaEventDestroy(event))

    def record(self, event: Any, stream: Any) -> None:
        _check(self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        _check(self.rt.cudaEventSynchronize(end))
        return float(_check(self.rt.cudaEventElapsedTime(start, end)))

    def device_info(self) -> Tuple[str, str]:
        dev = int(_check(self.rt.cudaGetDevice()))
        props = _check(self.rt.cudaGetDeviceProperties(dev))
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        return name.strip("\x00"), f"{props.major}.{props.minor}"

    def mem_info(self) -> Tuple[int, int]:
        free, total = _check(self.rt.cudaMemGetInfo())
        return int(free), int(total)


class PyCuda(CudaApi):
    """pycuda in the device's primary context, pushed around every call on whichever thread makes it."""

    name = "pycuda"
    _primary: Any = None  # the primary context of device 0, retained once per process
    _lock = threading.Lock()

    def __init__(self) -> None:
        drv = importlib.import_module("pycuda.driver")
        drv.init()
        with PyCuda._lock:
            if PyCuda._primary is None:
                PyCuda._primary = drv.Device(0).retain_primary_context()
        self.drv, self.ctx = drv, PyCuda._primary
        self._device: Dict[int, Any] = {}  # pointer -> DeviceAllocation
        with self.active():
            drv.Context.get_device()  # fails clearly where the context is unusable

    @contextlib.contextmanager
    def _pushed(self) -> Iterator[None]:
        self.ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def active(self) -> ContextManager[None]:
        return self._pushed()

    def malloc(self, nbytes: int) -> int:
        with self.active():
            alloc = self.drv.mem_alloc(max(1, nbytes))
        self._device[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._device.pop(ptr, None)
        if alloc is not None:
            with self.active():
                alloc.free()

    def host_alloc(self, nbytes: int) -> np.ndarray:
        with self.active():
            return self.drv.pagelocked_empty(max(1, nbytes), np.uint8)

    def host_free(self, buf: np.ndarray) -> None:
        owner: Any = buf
        while owner is not None and not hasattr(owner, "free"):  # the HostAllocation behind the array (its base)
            owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
        if owner is None:
            raise ValueError("host_free: not a buffer from host_alloc")
        with self.active():
            owner.free()

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        with self.active():
            self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        with self.active():
            self.drv.memcpy_dtoh_async(dst, src, stream)

    def stream(self) -> Any:
        with self.active():
            return self.drv.Stream()

    def destroy_stream(self, stream: Any) -> None:
        """pycuda destroys a stream when its last reference goes (the caller drops its own)."""

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def synchronize(self, stream: Any) -> None:
        with self.active():
            stream.synchronize()

    def event(self) -> Any:
        with self.active():
            return self.drv.Event()

    def destroy_event(self, event: Any) -> None:
        """pycuda destroys an event when its last reference goes (the caller drops its own)."""

    def record(self, event: Any, stream: Any) -> None:
        with self.active():
            event.record(stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        with self.active():
            end.synchronize()
            return float(start.time_till(end))

    def device_info(self) -> Tuple[str, str]:
        with self.active():
            dev = self.drv.Context.get_device()
            major, minor = dev.compute_capability()
            return str(dev.name()), f"{major}.{minor}"

    def mem_info(self) -> Tuple[int, int]:
        with self.active():
            free, total = self.drv.mem_get_info()
        return int(free), int(total)


class BufferPool:
    """Device buffers and page-locked host buffers by tensor name, kept across calls: one of each per name,
    replaced only by a larger one, so memory stays flat however often shapes change; close() frees them all."""

    def __init__(self, cuda: CudaApi) -> None:
        self.cuda = cuda
        self._device: Dict[str, Tuple[int, int]] = {}  # name -> (pointer, bytes)
        self._host: Dict[str, np.ndarray] = {}  # name -> the whole uint8 buffer
        self.allocations = 0  # buffers allocated so far (device and host)

    def device(self, name: str, nbytes: int) -> Tuple[int, bool]:
        """(pointer to at least `nbytes`, whether it is a new buffer, whose address TensorRT must be given)."""
        ptr, size = self._device.get(name, (0, 0))
        if ptr and size >= nbytes:
            return ptr, False
        if ptr:
            del self._device[name]
            self.cuda.free(ptr)
        size = max(1, nbytes)
        ptr = self.cuda.malloc(size)
        self._device[name] = (ptr, size)
        self.allocations += 1
        return ptr, True

    def host(self, name: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A page-locked array of this shape and dtype: a view of the name's buffer, grown only when too small."""
        dt = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise EdgekitError(f"{name}: shape {shape} is not known before the run (a data-dependent output); "
                               "export the model with fixed-size outputs")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        buf = self._host.get(name)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                del self._host[name]
                self.cuda.host_free(buf)
            buf = self.cuda.host_alloc(max(1, nbytes))
            self._host[name] = buf
            self.allocations += 1
        return buf[:nbytes].view(dt).reshape(shape)

    @property
    def device_bytes(self) -> int:
        return sum(size for _, size in self._device.values())

    @property
    def host_bytes(self) -> int:
        return sum(buf.nbytes for buf in self._host.values())

    def close(self) -> None:
        """Free every buffer (again: nothing to do)."""
        device, host = list(self._device.values()), list(self._host.values())
        self._device.clear()
        self._host.clear()
        for ptr, _ in device:
            self.cuda.free(ptr)
        for buf in host:
            self.cuda.host_free(buf)


BINDINGS: Tuple[Type[CudaApi], ...] = (CudaPython, PyCuda)


def open_cuda(prefer: Optional[str] = None) -> CudaApi:
    """The first CUDA binding that imports and finds a GPU (cuda-python, then pycuda)."""
    errors: List[str] = []
    order = list(BINDINGS)
    if prefer:
        order = [c for c in order if c.name == prefer] or order
    for cls in order:
        try:
            return cls()
        except ImportError as e:
            errors.append(f"{cls.name}: not installed ({e.name or e})")
        except Exception as e:  # a binding present but no usable GPU/driver
            errors.append(f"{cls.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    raise EdgekitError("no usable CUDA binding: " + "; ".join(errors) + f" ({install_advice(_l4t_here())})")


def self_test(cuda: CudaApi, nbytes: int = 1024) -> str:
    """Allocate `nbytes` on the device, copy there and back on a stream, compare, free: what worked, in words."""
    data = (np.arange(nbytes) % 251).astype(np.uint8)
    ptr = cuda.malloc(nbytes)
    back = cuda.host_alloc(nbytes)
    stream = cuda.stream()
    try:
        back[:] = 0
        cuda.htod_async(ptr, data, stream)
        cuda.dtoh_async(back, ptr, stream)
        cuda.synchronize(stream)
        if not np.array_equal(back[:nbytes], data):
            raise EdgekitError(f"{cuda.name}: the {nbytes}-byte round trip came back different")
    finally:
        cuda.destroy_stream(stream)
        cuda.host_free(back)
        cuda.free(ptr)
    gpu, cc = cuda.device_info()
    return f"{nbytes}-byte host->device->host copy on {gpu} (SM {cc})"


# --- which binding, on which JetPack (to confirm on each device: `edgekit doctor` tries them) ---------------------
# cuda-python's aarch64 wheels are built for server ARM (SBSA). Up to 12.8.0 its runtime module was a
# reimplementation over the driver API (libcuda.so.1, which L4T provides); from 12.9.0 (and in 13.x) it
# statically links the CUDA runtime of the SBSA toolkit (checked in the 12.8.0 and 12.9.0 aarch64 wheels), which
# Jetson's L4T driver stack does not run (reported as cudaErrorInsufficientDriver, error 35). PyPI has no aarch64
# cuda-python wheel for Python 3.8 (JetPack 5). JetPack 7 (Thor) is an SBSA system: the PyPI wheels fit there.
_BAD_FROM_ON_L4T = (12, 9)


def _version_tuple(version: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def install_advice(l4t: Optional[Tuple[int, int]]) -> str:
    """What to install for the tensorrt backend's device memory on this machine (`l4t`: (major, minor) of the
    L4T release on a Jetson, None elsewhere)."""
    if l4t is None:
        return "pip install 'cuda-python>=12.6.1,<13' (13.x needs driver 580+), or pycuda"
    major, minor = l4t
    if major <= 35:
        return ("JetPack 5 (CUDA 11.4, Python 3.8; PyPI has no aarch64 cuda-python wheel for Python 3.8): "
                "PATH=/usr/local/cuda/bin:$PATH pip install pycuda (builds against JetPack's CUDA)")
    if major == 36:
        pin = "cuda-python==12.2.1" if minor < 4 else "cuda-python==12.6.2.post1"
        return (f"JetPack 6 (CUDA {'12.2' if minor < 4 else '12.6'}): pip install '{pin}' (cuda-python 12.9 and later "
                "statically link a server-ARM CUDA runtime that fails on Jetson), or pycuda")
    return "JetPack 7 and later (an SBSA system): pip install cuda-python, or pycuda"


def known_problem(binding: str, version: Optional[str], l4t: Optional[Tuple[int, int]]) -> Optional[str]:
    """Why this binding version cannot work on this JetPack, where that is known; None otherwise."""
    if binding != CudaPython.name or not version or l4t is None or l4t[0] >= 38:
        return None
    v = _version_tuple(version)
    if l4t[0] <= 35 and v >= (12,):
        return f"cuda-python {version} needs a CUDA 12 driver; JetPack 5 has CUDA 11.4"
    if v >= _BAD_FROM_ON_L4T:
        return (f"cuda-python {version} links a server-ARM (SBSA) CUDA runtime statically (12.9 and later), "
                "which fails on Jetson")
    return None


def _l4t_here() -> Optional[Tuple[int, int]]:
    try:
        from edgekit.runtime.jetson import tegra

        release = tegra.read_l4t_release()
    except (ValueError, OSError):
        return None
    return (release.major, release.minor) if release else None


def binding_version(binding: str) -> Optional[str]:
    """The installed version of a binding's distribution (cuda-python's modules come in cuda-bindings from 12.8)."""
    from importlib import metadata

    dists = ("cuda-bindings", "cuda-python") if binding == CudaPython.name else (binding,)
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
