"""Disk full (ENOSPC), read-only (EROFS) and I/O errors while writing a checkpoint, flips.npz, a
.bnn or the report: one line, exit 2, the previous file intact and loadable, no temp file left.

The faults are injected where every file is written (bnnprune.atomic's os calls), for one
file name, after that file has been written ``after`` times."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnprune import atomic, engine
from bnnprune.atomic import WriteError, atomic_write_bytes
from bnnprune.checkpoint import load_checkpoint
from bnnprune.cli import main

TINY = "--dataset synthetic --model small --width 0.25 --train-subset 64 --test-subset 32"
TINY += " --batch-size 32 --track-last 1 --device cpu"


class DiskFault:
    """Make one os call (open of the temp file, write, fsync or replace) of atomic writes of
    files named ``name`` fail with ``code``, from the ``after``+1-th write of that file on."""

    def __init__(self, monkeypatch, name: str, call: str, code: int, after: int = 0) -> None:
        self.name, self.code, self.after = name, code, after
        self.attempts = self.fired = 0
        self.failing: set[int] = set()  # fds of temp files whose write is to fail
        real_open, real = os.open, getattr(os, call)

        def fake_open(path, flags, *a, **kw):
            hit = bool(flags & os.O_CREAT) and Path(path).name.startswith(f".{name}.")
            if hit:
                self.attempts += 1
            armed = hit and self.attempts > after
            if armed and call == "open":
                self._fire()
            fd = real_open(path, flags, *a, **kw)
            if armed:
                self.failing.add(fd)
            return fd

        def fake_call(first, *a, **kw):
            armed = (
                Path(first).name.startswith(f".{name}.") and self.attempts > after
                if call == "replace"
                else first in self.failing
            )
            if armed:
                self._fire()
            return real(first, *a, **kw)

        monkeypatch.setattr(atomic.os, "open", fake_open)
        if call != "open":
            monkeypatch.setattr(atomic.os, call, fake_call)

    def _fire(self) -> None:
        self.fired += 1
        raise OSError(self.code, os.strerror(self.code))


def _one_line_error(capsys, *parts: str) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("bnnprune: error: cannot write "), lines[0]
    for part in parts:
        assert part in lines[0], lines[0]
    return out


def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*.tmp")]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("call", "code"),
    [("write", errno.ENOSPC), ("fsync", errno.EIO), ("replace", errno.EROFS),
     ("open", errno.EROFS)],
)
def test_library_write_fault_keeps_previous_file(tmp_path, monkeypatch, call, code):
    target = tmp_path / "results.json"
    atomic_write_bytes(target, b"good")
    DiskFault(monkeypatch, "results.json", call, code)
    with pytest.raises(WriteError) as e:
        atomic_write_bytes(target, b"new content")
    assert e.value.errno == code
    assert str(e.value) == (
        f"cannot write {target}: {os.strerror(code)} (the previous file is unchanged)"
    )
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_partial_writes_are_completed(tmp_path, monkeypatch):
    """os.write may take only part of a buffer: the rest is written, not dropped."""
    real = os.write
    monkeypatch.setattr(atomic.os, "write", lambda fd, b: real(fd, bytes(b[:7])))
    data = bytes(range(256)) * 40
    atomic_write_bytes(tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data


def test_disk_full_while_checkpointing_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    """Epoch 2's checkpoint.pt write hits ENOSPC: exit 2, epoch 1's checkpoint loads, and
    --resume (space freed) finishes the run."""
    out = tmp_path / "run"
    argv = ["train", *TINY.split(), "--epochs", "2", "-o", str(out)]
    fault = DiskFault(monkeypatch, "checkpoint.pt", "write", errno.ENOSPC, after=1)
    assert main(argv) == 2
    assert fault.fired == 1
    _one_line_error(capsys, f"{out / 'checkpoint.pt'}: No space left on device",
                    "(the previous file is unchanged)")
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 1
    assert not (out / "model.pt").exists()
    _no_temp_files(out)
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_disk_full_on_flips_npz_keeps_previous_flips(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = ["train", *TINY.split(), "--epochs", "1", "-o", str(out)]
    assert main(argv) == 0
    before = _digest(out / "flips.npz")
    capsys.readouterr()
    DiskFault(monkeypatch, "flips.npz", "fsync", errno.ENOSPC)
    assert main([*argv, "--seed", "1"]) == 2
    _one_line_error(capsys, f"{out / 'flips.npz'}: No space left on device")
    assert _digest(out / "flips.npz") == before
    assert set(np.load(out / "flips.npz").files)  # still a readable archive
    _no_temp_files(out)


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model")
    assert main(["train", *TINY.split(), "--epochs", "1", "-o", str(out)]) == 0
    return out / "model.pt"


@pytest.mark.parametrize(("call", "code"), [("open", errno.EROFS), ("write", errno.ENOSPC)])
def test_export_fault_keeps_previous_bnn(tmp_path, monkeypatch, capsys, model_pt, call, code):
    bnn = tmp_path / "m.bnn"
    assert main(["export", str(model_pt), "-o", str(bnn)]) == 0
    before = _digest(bnn)
    capsys.readouterr()
    DiskFault(monkeypatch, "m.bnn", call, code)
    assert main(["export", str(model_pt), "-o", str(bnn)]) == 2
    _one_line_error(capsys, f"{bnn}: {os.strerror(code)}")
    assert _digest(bnn) == before
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert engine.load(bnn)(x).shape == (1, 10)
    _no_temp_files(tmp_path)


def test_read_only_folder_for_the_report_keeps_previous_report(tmp_path, monkeypatch, capsys):
    """A finished `bnnprune run` is rerun (its phases are reused) while its folder has become
    read-only: the report write fails with one line and the old report stays."""
    out = tmp_path / "run"
    argv = ["run", *TINY.split(), "--epochs", "1", "--retrain-epochs", "1", "--compare", "",
            "--no-budget-baseline", "--target-bops", "0.3", "-o", str(out)]
    assert main(argv) == 0
    report = next(p for p in out.iterdir() if p.suffix == ".md")
    before = _digest(report)
    capsys.readouterr()
    DiskFault(monkeypatch, report.name, "open", errno.EROFS)
    assert main(argv) == 2
    _one_line_error(capsys, f"{report}: Read-only file system",
                    "(the previous file is unchanged)")
    assert _digest(report) == before
    _no_temp_files(out)


def test_checkpoint_after_fault_is_loadable_by_torch(tmp_path, monkeypatch):
    """The kept checkpoint is the complete previous one, bit for bit (not a prefix)."""
    from bnnprune.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"arch": None, "state_dict": {"w": torch.arange(1000.0)}})
    before = path.read_bytes()
    DiskFault(monkeypatch, "checkpoint.pt", "write", errno.ENOSPC)
    with pytest.raises(WriteError):
        save_checkpoint(path, {"arch": None, "state_dict": {"w": torch.zeros(10**5)}})
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.arange(1000.0))
