"""Atomic file writes: a crash, a full disk or a read-only folder keeps the previous file."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from bnnprune.killpoint import kill_point

__all__ = ["WriteError", "atomic_write_bytes"]


class WriteError(OSError):
    """A file could not be written (disk full, read-only, I/O error); the previous one is kept.

    Its message is one line naming the file, e.g. ``cannot write runs/a/checkpoint.pt: No
    space left on device (the previous file is unchanged)``.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync, then rename over ``path``.

    A crash or an OS error (ENOSPC, EROFS, EIO, ...) during the write leaves the previous
    file intact and no temp file behind; OS errors are raised as :class:`WriteError`.
    """
    path = Path(path)
    existed = path.exists()
    try:
        _write_and_rename(path, data)
    except OSError as e:
        kept = "the previous file is unchanged" if existed else "nothing was written"
        reason = e.strerror or type(e).__name__
        raise WriteError(e.errno, f"cannot write {path}: {reason} ({kept})") from e


def _write_and_rename(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any ordinary file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            kill_point(f"write:{path.name}")
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a write may take only part of a large buffer)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "the write made no progress")
        view = view[n:]


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
