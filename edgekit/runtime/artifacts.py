"""Atomic writing of artifacts: a failed stage leaves no half-written file (DESIGN.md section 1)."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from edgekit.errors import EdgekitError

PathLike = Union[str, "os.PathLike[str]"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_writable_dir(path: PathLike) -> Path:
    """Create ``path`` (and parents) or fail with one line saying why it can't be written."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgekitError(f"{p}: cannot create output folder ({e.strerror or e})") from None
    if not os.access(p, os.W_OK):
        raise EdgekitError(f"{p}: output folder is not writable")
    return p


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error remove it."""
    final = Path(path)
    ensure_writable_dir(final.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it into place only when complete."""
    final = Path(path)
    occupied = final.is_file() or (final.is_dir() and any(final.iterdir()))
    if occupied and not overwrite:
        raise EdgekitError(f"{final}: already exists and is not empty (pass --overwrite to replace it)")
    ensure_writable_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
