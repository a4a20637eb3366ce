"""One writer per run folder, one worker per sweep cell: exclusive locks that die with their holder.

A lock is the file ``FOLDER/.bnnprune.lock`` held with ``fcntl.flock(LOCK_EX | LOCK_NB)``.
The kernel drops a flock when its process dies (SIGKILL included), so a lock left by a dead
process is free again and the next command takes it over; the file's content (PID, host,
command, start time) only names the holder in messages. A live holder is never shared: the
second command gets :class:`FolderBusy`, which the CLI turns into one line and exit code 2.

On NFS (Linux clients since 2.6.12) flock is carried out as a POSIX lock on the server, so it
also excludes processes on other machines, if the mount has working locking (NFSv4, or NFSv3
with lockd; *not* with ``nolock`` or ``local_lock=flock``, where a lock is only seen on its own
machine). A machine that dies while holding a lock on NFS frees it only when its lease
expires (about 90 s on NFSv4). Where flock is refused (``ENOLCK``/``EOPNOTSUPP``) the lock
falls back to the file's content: a live PID on this host or any PID on another host keeps
the folder busy, a dead PID on this host is taken over. That fallback has a check-then-write
race between two commands started at the same instant; see docs/bad-inputs.md. The lock file
is the one file not written through :mod:`bnnprune.atomic`: its inode is the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from bnnprune.atomic import WriteError

__all__ = ["LOCK_NAME", "FolderBusy", "LockInfo", "claim", "hold_folder", "read_holder"]

LOCK_NAME = ".bnnprune.lock"
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class FolderBusy(RuntimeError):
    """Another live process holds the folder (or cell) this command would write."""

    def __init__(self, folder: Path, holder: LockInfo | None) -> None:
        self.folder, self.holder = folder, holder
        who = holder.describe() if holder else "another process (its lock file is unreadable)"
        super().__init__(
            f"{folder} is in use by {who}; wait for it to end or choose another output folder"
        )


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock: written into the lock file, shown when another command is refused."""

    pid: int
    host: str
    command: str
    started: str

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host} ({self.command!r}, since {self.started})"

    @classmethod
    def parse(cls, text: str) -> LockInfo | None:
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), str(d["host"]), str(d["command"]), str(d["started"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Held:
    """A lock this process holds: its file, what it wrote there, and the stale holder it
    replaced (None when the folder was free)."""

    path: Path
    info: LockInfo
    took_over: LockInfo | None


def _me(command: str) -> LockInfo:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return LockInfo(os.getpid(), socket.gethostname(), command, started)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(folder: str | Path) -> LockInfo | None:
    """The holder recorded in ``folder``'s lock file (None: no file or unreadable content)."""
    try:
        return LockInfo.parse((Path(folder) / LOCK_NAME).read_text())
    except (OSError, UnicodeDecodeError):
        return None


def _holder_of_busy(folder: Path) -> LockInfo | None:
    """The live holder's record; it writes it right after locking, so wait a moment for it."""
    for _ in range(20):
        info = read_holder(folder)
        if info is not None:
            return info
        time.sleep(0.05)
    return None


def _write_info(fd: int, path: Path, info: LockInfo) -> None:
    """Record the holder in the (already locked) lock file; on failure release it again."""
    data = json.dumps(asdict(info)).encode() + b"\n"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as e:
        os.close(fd)
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from e


def _same_file(fd: int, path: Path) -> bool:
    """True when ``path`` still names the file open as ``fd`` (not unlinked by a releaser)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _acquire(folder: Path, command: str) -> tuple[int, Held]:
    """Lock ``folder`` or raise FolderBusy; return the open lock file and what was recorded."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = _me(command)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(folder, _holder_of_busy(folder)) from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            return fd, _acquire_by_content(fd, path, me)
        if not _same_file(fd, path):  # a releaser unlinked it between our open and flock
            os.close(fd)
            continue
        previous = read_holder(folder)
        _write_info(fd, path, me)
        return fd, Held(path, me, previous)


def _acquire_by_content(fd: int, path: Path, me: LockInfo) -> Held:
    """Fallback without flock: the recorded PID decides (racy; see the module docstring)."""
    previous = read_holder(path.parent)
    if previous is not None and previous.pid != me.pid:
        if previous.host != me.host or _pid_alive(previous.pid):
            os.close(fd)
            raise FolderBusy(path.parent, previous)
    _write_info(fd, path, me)
    return Held(path, me, previous)


def _release(fd: int, held: Held) -> None:
    """Remove the lock file (while still holding it), then drop the lock."""
    try:
        if _same_file(fd, held.path):
            held.path.unlink()
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_folder(folder: str | Path, command: str) -> Iterator[Held]:
    """Hold ``folder`` exclusively for the block; raise :class:`FolderBusy` naming the holder.

    A lock left by a dead process is taken over (``Held.took_over`` names it). The lock is
    released, and its file removed, when the block ends, by return or by exception.
    """
    fd, held = _acquire(Path(folder), command)
    try:
        yield held
    finally:
        _release(fd, held)


_CLAIMED: dict[Path, Held] = {}  # items this process holds through claim()


@contextlib.contextmanager
def claim(item: str | Path, command: str = "claim") -> Iterator[Held | None]:
    """Claim one work item (a sweep cell's folder) for the block: yield the claim, or None
    when another live process (or machine, on NFS with locking) holds it.

    A claim says who works on an item, not whether it is done: after claiming, check the
    item's finished record, since another worker may have completed it before you claimed.
    Claims nest: inside this process's own claim of an item, claiming it again yields the
    outer claim (a second flock on a new descriptor would refuse its own process).
    """
    key = Path(item).absolute()
    if key in _CLAIMED:
        yield _CLAIMED[key]
        return
    try:
        fd, held = _acquire(key, command)
    except FolderBusy:
        yield None
        return
    _CLAIMED[key] = held
    try:
        yield held
    finally:
        del _CLAIMED[key]
        _release(fd, held)
