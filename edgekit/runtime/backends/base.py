"""The backend interface: availability, I/O description, infer, and the timing of the last call."""

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgekit.errors import EdgekitError, MissingDependency


def runtime_module(module: str, package: str, extra: str, needs: str = "", how: str = "") -> Any:
    """A backend's runtime, imported when first needed; a one-line MissingDependency where absent.

    `needs` names an attribute the real package has: type-stub packages (tensorrt-stubs) import as an
    empty namespace package and must not pass for the runtime."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise MissingDependency(package, extra, how) from None
    if needs and not hasattr(mod, needs):
        raise MissingDependency(package, extra, how)
    return mod


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[Any, ...]  # ints, or a name/-1 for a dynamic axis
    dtype: str  # numpy dtype name


@dataclass
class Timing:
    """Host wall time of the last infer call and, on a GPU backend, the device time from CUDA events."""

    host_ms: float = 0.0
    device_ms: Optional[float] = None
    h2d_ms: Optional[float] = None
    d2h_ms: Optional[float] = None


class Backend(ABC):
    """A loaded engine. Use as a context manager, or call close()."""

    name = ""

    @classmethod
    @abstractmethod
    def runtime(cls) -> Any:
        """The backend's runtime module, imported now (MissingDependency where absent)."""

    @classmethod
    @abstractmethod
    def describe(cls, runtime: Any) -> str:
        """Version and device in one line; raises EdgekitError where the runtime cannot run here."""

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        """(True, version and device) where this backend can run here, else (False, why not and what to install)."""
        try:
            return True, cls.describe(cls.runtime())
        except EdgekitError as e:
            return False, str(e)

    @classmethod
    def version(cls) -> str:
        return str(cls.runtime().__version__)

    @property
    @abstractmethod
    def inputs(self) -> List[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> List[TensorSpec]: ...

    @abstractmethod
    def infer(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Run once on host arrays (in input order); returns host arrays in output order."""

    @property
    def last_timing(self) -> Timing:
        return self._timing

    _timing = Timing()

    def infer_named(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        outs = self.infer([feeds[s.name] for s in self.inputs])
        return {s.name: o for s, o in zip(self.outputs, outs)}

    def close(self) -> None:  # noqa: B027  (a no-op unless the backend holds resources)
        """Release the engine and its memory."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
