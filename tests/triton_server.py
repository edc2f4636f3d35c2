"""A real Triton Inference Server for the tests (../shared/TESTING.md): the `tritonserver` binary bundled in the
`nvidia-pytriton` wheel, downloaded at test time into the model cache (never committed), with Triton's Python
backend. Its Python models run in a Python environment of their own, also made at test time in the cache: the
wheel's Python backend (Triton 24.x) is built against NumPy 1.x, whose arrays it misreads under NumPy 2 (every
element reads as the first, outputs come back empty), so the models get NumPy 1.x, an OpenCV that takes it and the
ONNX Runtime edgekit runs here (the manifests check its version)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import List, Optional, Sequence

import pytest
from conftest import MODEL_CACHE, ROOT, cache_lock, wheel_file


def triton_home() -> Path:
    """The unpacked wheel (its pytriton/tritonserver and nvidia_pytriton.libs), with this Python's backend stub in
    place. Skips with the reason where the wheel cannot be had or does not fit this machine."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        pytest.skip("the nvidia-pytriton wheel's tritonserver is built for x86-64 Linux")
    home = MODEL_CACHE / "nvidia-pytriton-0.7.0"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "pytriton" / "tritonserver" / "backends" / "python" / "triton_python_backend_stub"
    if stub.is_file() and (home / f".stub-{py}").is_file():
        return home
    with cache_lock():
        if not (home / f".stub-{py}").is_file():
            wheel = wheel_file("nvidia-pytriton", "0.7.0")
            tmp = home.with_name(home.name + f".part{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            with zipfile.ZipFile(wheel) as z:
                members = [m for m in z.namelist() if m.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/"))]
                z.extractall(tmp, members)
            for f in tmp.rglob("*"):  # zip files keep no modes
                if f.is_file() and (f.parent.name in ("bin", "nvidia_pytriton.libs") or f.suffix == ".so"
                                    or f.name == "triton_python_backend_stub"):
                    f.chmod(0o755)
            source = tmp / "pytriton" / "tritonserver" / "python_backend_stubs" / py / "triton_python_backend_stub"
            if not source.is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                pytest.skip(f"the wheel has no Python backend stub for Python {py}")
            shutil.copy2(source, tmp / "pytriton" / "tritonserver" / "backends" / "python")
            shutil.rmtree(home, ignore_errors=True)
            tmp.rename(home)
            (home / f".stub-{py}").touch()
    return home


def model_python_env() -> Path:
    """Packages for the Python models, in a folder their model.py puts in front of sys.path (export-triton
    --python-path): NumPy 1.x for the Python backend, OpenCV for it, and this environment's ONNX Runtime."""
    import onnxruntime

    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = MODEL_CACHE / f"triton-models-py{py}-ort{onnxruntime.__version__}"
    if (target / ".complete").is_file():
        return target
    with cache_lock():
        if not (target / ".complete").is_file():
            shutil.rmtree(target, ignore_errors=True)
            r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "numpy<2",
                                "opencv-python-headless<4.11", f"onnxruntime=={onnxruntime.__version__}"],
                               capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
                pytest.skip(f"the Python models' packages could not be installed: "
                            f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
            (target / ".complete").touch()
    return target


def python_path() -> List[str]:
    """export-triton --python-path for the tests' repositories: the models' packages, then this checkout."""
    return [str(model_python_env()), str(ROOT)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on 127.0.0.1 serving `repositories`; `grpc_url(model)` is what run-stream takes."""

    def __init__(self, repositories: Sequence[Path], log: Path, ports: Optional[Sequence[int]] = None) -> None:
        self.home = triton_home()
        self.repositories, self.log = list(repositories), log
        self.http, self.grpc, self.metrics = ports or (free_port(), free_port(), free_port())
        self.proc: Optional[subprocess.Popen] = None
        # the Python backend's shared-memory regions in /dev/shm, removed after the server (a killed server leaves
        # them behind)
        self.shm_prefix = f"edgekit_test_{os.getpid()}_{self.grpc}_"

    def start(self, timeout: float = 90.0) -> "TritonServer":
        t = self.home / "pytriton" / "tritonserver"
        libdir = sysconfig.get_config_var("LIBDIR") or ""  # the libpython the backend stub embeds
        env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(
            [libdir, str(self.home / "nvidia_pytriton.libs"), os.environ.get("LD_LIBRARY_PATH", "")])}
        cmd = [str(t / "bin" / "tritonserver"), f"--backend-directory={t / 'backends'}",
               f"--http-port={self.http}", f"--grpc-port={self.grpc}", f"--metrics-port={self.metrics}",
               "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--exit-timeout-secs=5",
               f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        cmd += [f"--model-repository={r}" for r in self.repositories]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"tritonserver was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def grpc_url(self, model: str) -> str:
        return f"triton://127.0.0.1:{self.grpc}/{model}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """The server dies at once (SIGKILL): a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._clean_shm()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None
        self._clean_shm()

    def _clean_shm(self) -> None:
        time.sleep(0.2)  # (the backend stubs notice their server is gone and exit)
        for f in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            f.unlink(missing_ok=True)
