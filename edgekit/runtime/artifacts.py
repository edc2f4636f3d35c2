"""Atomic writing of artifacts: a failed stage leaves no half-written file (DESIGN.md section 1).

Outputs are never written through a symbolic link planted where an output goes: files are written under a
fresh temporary name and renamed into place (a rename replaces a link, not its target), and a file kept
open for a whole run is opened with O_NOFOLLOW."""

import contextlib
import errno
import functools
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Union

from edgekit.errors import EdgekitError

PathLike = Union[str, "os.PathLike[str]"]

# What a write that failed for want of room says, by errno (runtime and build side alike).
OUT_OF_ROOM = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit reached"}

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


def refuse_symlink(path: PathLike) -> None:
    """One line, not a write through the link, where ``path`` is a symbolic link."""
    if os.path.islink(path):
        raise EdgekitError(f"{path}: is a symbolic link; refusing to write through it")


def open_for_writing(path: PathLike) -> IO[str]:
    """Create or truncate ``path`` for writing UTF-8 text, never through a symbolic link: for a file kept open
    while a run writes it (JSON Lines), where write-then-rename cannot serve."""
    refuse_symlink(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)  # O_NOFOLLOW: a link planted after the check above fails too
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise EdgekitError(f"{path}: is a symbolic link; refusing to write through it") from None
        raise EdgekitError(f"{path}: cannot write ({e.strerror or e})") from None
    return os.fdopen(fd, "w", encoding="utf-8")


def temp_beside(path: PathLike, keep_suffix: bool = False) -> Path:
    """A fresh empty file (created here, so never a planted link) under a hidden name beside ``path``:
    ``.NAME.xxxx.tmp``, or ``.STEM.xxxx.SUFFIX`` with ``keep_suffix`` (for writers that pick the format by
    the file's extension, as OpenCV's VideoWriter does)."""
    final = Path(path)
    ensure_writable_dir(final.parent)
    if keep_suffix:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix, dir=final.parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: PathLike, path: PathLike) -> Path:
    """Rename the finished ``tmp`` over ``path`` with the usual permissions (mkstemp makes 0600). A symbolic
    link at ``path`` is replaced itself; the file it points to is untouched."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, on error remove it.

    The rename replaces a symbolic link at ``path`` itself, never the file it points to."""
    tmp_path = temp_beside(path)
    try:
        yield tmp_path
        publish(tmp_path, path)
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
    refuse_symlink(final)
    occupied = final.is_file() or (final.is_dir() and any(final.iterdir()))
    if occupied and not overwrite:
        raise EdgekitError(f"{final}: already exists and is not empty (pass --overwrite to replace it)")
    ensure_writable_dir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        _replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- a run's output folder -----------------------------------------------------------------------------

STREAM_REPORT_SCHEMA = "edgekit.stream-report"  # report.SCHEMA without its version (a test ties the two)


class RunFolder:
    """A run's outputs under construction. Write into ``path`` (a fresh hidden sibling of ``out``); name
    ``out`` in what the run records (report paths). Call ``commit()`` once the run's report is written."""

    def __init__(self, out: Path, path: Path) -> None:
        self.out, self.path = out, path
        self.committed = False

    def commit(self) -> None:
        """The folder is a complete run: it replaces ``out`` when the with-block ends, even by an exception."""
        self.committed = True


@contextlib.contextmanager
def run_folder(out: PathLike, overwrite: bool = False, *, schema: str = STREAM_REPORT_SCHEMA,
               verb: str = "run-stream") -> Iterator[RunFolder]:
    """Write a run into a fresh temporary sibling of ``out`` and let it replace ``out`` as a whole.

    The new folder replaces ``out`` (atomically where the system can swap two folders, else by renaming the
    old one aside first; ``out`` is never left missing by an error) when the block ends normally, or by an
    exception after ``commit()``. An exception before ``commit()`` removes the new folder and leaves ``out``
    as it was. ``out`` may be missing, empty, or an earlier run (its ``report.json`` has a ``schema`` of
    ``schema``/N); anything else is replaced only with ``overwrite``. A symbolic link, a file or a mount
    point is refused. A process killed outright (kill -9) leaves its ``.OUT.xxxx.tmp`` folder behind."""
    final = Path(os.path.abspath(out))
    _check_replaceable(final, Path(out), overwrite, schema, verb)
    ensure_writable_dir(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    except OSError as e:
        raise EdgekitError(f"{final.parent}: cannot create the run's folder beside {final.name} "
                           f"({e.strerror or e})") from None
    rf = RunFolder(Path(out), tmp)
    try:
        yield rf
    except BaseException:
        if rf.committed:
            _publish(tmp, final, Path(out), overwrite, schema, verb)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, final, Path(out), overwrite, schema, verb)


def is_earlier_run(folder: Path, schema: str = STREAM_REPORT_SCHEMA) -> bool:
    """Whether ``folder`` holds a report.json (a regular file) whose "schema" is ``schema``/N."""
    report = folder / "report.json"
    try:
        st = os.lstat(report)
        if not stat.S_ISREG(st.st_mode) or st.st_size > 64 << 20:
            return False
        doc = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("schema"), str) and doc["schema"].split("/")[0] == schema


def _check_replaceable(final: Path, shown: Path, overwrite: bool, schema: str, verb: str) -> None:
    if not final.name:
        raise EdgekitError(f"{shown}: cannot be a run's output folder; choose a folder below it as --out")
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return
    except OSError as e:
        raise EdgekitError(f"{shown}: cannot use as output folder ({e.strerror or e})") from None
    if stat.S_ISLNK(st.st_mode):
        raise EdgekitError(f"{shown}: is a symbolic link; refusing to replace it (give the folder itself as --out)")
    if not stat.S_ISDIR(st.st_mode):
        raise EdgekitError(f"{shown}: exists and is not a folder; choose another --out")
    if os.path.ismount(final):  # a mount point cannot be renamed: a run is published by renaming its folder
        raise EdgekitError(f"{shown}: is a mount point; choose a folder inside it as --out")
    try:
        with os.scandir(final) as entries:
            empty = next(entries, None) is None
    except OSError as e:
        raise EdgekitError(f"{shown}: cannot read output folder ({e.strerror or e})") from None
    if not (empty or overwrite or is_earlier_run(final, schema)):
        raise EdgekitError(f"{shown}: exists and is not an earlier {verb} output; pass --overwrite to replace it, "
                           "or choose another --out")


def _publish(tmp: Path, final: Path, shown: Path, overwrite: bool, schema: str, verb: str) -> None:
    """Put the finished run ``tmp`` in place of ``final``, checking ``final`` again (it may have changed
    during a long run); on failure the new run stays in ``tmp`` and the message says so."""
    try:
        _check_replaceable(final, shown, overwrite, schema, verb)
    except EdgekitError as e:
        raise EdgekitError(f"{e}; this run is kept in {tmp}") from None
    try:
        mode = stat.S_IMODE(os.stat(final).st_mode) if final.is_dir() else 0o777 & ~_UMASK
        os.chmod(tmp, mode)  # mkdtemp makes 0700; the run gets the old folder's permissions, or the usual ones
        _replace(tmp, final)
    except OSError as e:
        raise EdgekitError(f"{shown}: cannot put the new run in place ({e.strerror or e}); "
                           f"this run is kept in {tmp}") from None


def _replace(new: Path, final: Path) -> None:
    """Put ``new`` (a folder) in place of ``final`` (absent, a folder or a file) and delete the old one.

    Swapped in one step where the system can (Linux renameat2 RENAME_EXCHANGE): ``final`` is never missing,
    and a crash leaves the old one under ``new``'s hidden name. Elsewhere the old one is renamed aside
    first (``.NAME.xxxx.old``): a crash between the two renames leaves both hidden folders beside it."""
    if not os.path.lexists(final):
        os.rename(new, final)
        return
    if _exchange(new, final):
        _remove(new)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    if not final.is_dir():
        aside.rmdir()  # renaming a file onto the empty folder mkdtemp made would fail
    os.rename(final, aside)
    try:
        os.rename(new, final)
    except OSError:
        os.rename(aside, final)  # never leave final missing
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.lru_cache(maxsize=None)
def _renameat2() -> Optional[Callable[..., int]]:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).renameat2  # glibc 2.28+ (JetPack 5 has 2.31)
    except (OSError, AttributeError, TypeError):
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where this system or file system cannot."""
    import ctypes

    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
