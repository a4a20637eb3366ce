"""One writer per run folder (bnnprune.lock): a live holder is never shared, a dead one's lock is
taken over, and a lock is released however its block ends."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bnnprune import lock
from bnnprune.cli import main
from bnnprune.lock import LOCK_NAME, FolderBusy, claim, hold_folder, read_holder

TINY = "--dataset synthetic --model small --width 0.25 --train-subset 64 --test-subset 32"
TINY += " --batch-size 32 --epochs 1 --track-last 1 --device cpu"

HOLDER = textwrap.dedent(
    """
    import sys, time
    from bnnprune.lock import hold_folder
    with hold_folder(sys.argv[1], "test holder"):
        print("held", flush=True)
        time.sleep(600)
    """
)


def _env() -> dict[str, str]:
    src = str(Path(lock.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start_holder(folder: Path) -> subprocess.Popen:
    """A separate process holding ``folder``; returns once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_stale(folder: Path, pid: int, host: str | None = None) -> None:
    """A lock file as a killed process leaves it: content naming it, no flock held."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": host or socket.gethostname(), "command": "bnnprune train",
            "started": "2024-01-01T00:00:00+0000"}
    (folder / LOCK_NAME).write_text(json.dumps(info))


def test_second_train_on_a_held_folder_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = _start_holder(out)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "bnnprune", "train", *TINY.split(), "-o", str(out)],
            capture_output=True, text=True, timeout=300, env=_env(),
        )
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert lines[0].startswith("bnnprune: error:")
        assert f"PID {holder.pid} on {socket.gethostname()}" in lines[0]
        assert "is in use by" in lines[0] and "'test holder'" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing trained/written
        assert read_holder(out).pid == holder.pid  # the holder's record is untouched
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_taken_over_by_train(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _start_holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert read_holder(out).pid == holder.pid  # its lock file is still there
    assert main(["train", *TINY.split(), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"took over the lock of {out} left by PID {holder.pid}" in stdout
    assert (out / "model.pt").is_file()
    assert not (out / LOCK_NAME).exists()  # released (and removed) at the end


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    dead = _dead_pid()
    _plant_stale(tmp_path, dead)
    with hold_folder(tmp_path, "second") as held:
        assert held.took_over is not None and held.took_over.pid == dead
        assert read_holder(tmp_path).pid == os.getpid()
        assert read_holder(tmp_path).command == "second"
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_released_on_exception(tmp_path):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with hold_folder(tmp_path, "first"):
            assert (tmp_path / LOCK_NAME).exists()
            raise Boom
    assert not (tmp_path / LOCK_NAME).exists()
    with hold_folder(tmp_path, "second") as held:
        assert held.took_over is None  # released cleanly: nothing stale to take over


def test_failed_train_releases_its_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    assert main(["train", *TINY.split(), "--resume", "-o", str(out)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert list(out.iterdir()) == []
    assert main(["train", *TINY.split(), "-o", str(out)]) == 0


def test_same_process_cannot_hold_a_folder_twice(tmp_path):
    with hold_folder(tmp_path, "outer"):
        with pytest.raises(FolderBusy, match=f"PID {os.getpid()} "):
            with hold_folder(tmp_path, "inner"):
                pass
        assert read_holder(tmp_path).command == "outer"


def test_claim_yields_none_while_another_process_holds_the_item(tmp_path):
    cell = tmp_path / "cells" / "seed0-target+wff-0.3"
    holder = _start_holder(cell)
    try:
        with claim(cell, "worker") as got:
            assert got is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claim(cell, "worker") as got:  # the holder died: its claim is free
        assert got is not None and got.took_over.pid == holder.pid


def _hammer(folder: str, log: str, rounds: int) -> None:
    """Claim the same item ``rounds`` times; write enter/exit lines while holding it."""
    done = 0
    while done < rounds:
        with claim(folder, "hammer") as got:
            if got is None:
                continue
            with open(log, "a") as f:
                f.write(f"in {os.getpid()}\n")
                f.flush()
                time.sleep(0.001)
                f.write(f"out {os.getpid()}\n")
            done += 1


def test_concurrent_claims_never_overlap(tmp_path):
    """Four processes claim one item 30 times each (locks are taken, released and their file
    unlinked all the time): the log never shows two holders at once."""
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "item"), str(log), 30))
             for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = log.read_text().split("\n")[:-1]
    assert len(lines) == 4 * 30 * 2
    for enter, leave in zip(lines[::2], lines[1::2]):
        assert enter.startswith("in ") and leave == "out " + enter[3:]


@pytest.fixture
def no_flock(monkeypatch):
    """A file system without flock (ENOLCK, e.g. NFS mounted with nolock): the fallback."""

    def refuse(*_a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock.fcntl, "flock", refuse)


def test_fallback_without_flock_refuses_a_live_pid(tmp_path, no_flock):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _plant_stale(tmp_path, sleeper.pid)
        with pytest.raises(FolderBusy, match=f"PID {sleeper.pid} "):
            with hold_folder(tmp_path, "second"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    assert read_holder(tmp_path).pid == sleeper.pid


def test_fallback_without_flock_takes_over_a_dead_pid(tmp_path, no_flock):
    dead = _dead_pid()
    _plant_stale(tmp_path, dead)
    with hold_folder(tmp_path, "second") as held:
        assert held.took_over.pid == dead
    assert not (tmp_path / LOCK_NAME).exists()


def test_fallback_without_flock_never_takes_another_hosts_lock(tmp_path, no_flock):
    _plant_stale(tmp_path, _dead_pid(), host="some-other-host")
    with pytest.raises(FolderBusy, match="on some-other-host"):
        with hold_folder(tmp_path, "second"):
            pass
