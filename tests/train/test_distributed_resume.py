"""`torchrun --nproc-per-node=2 -m bnnprune train` (gloo, CPU) killed with SIGKILL mid-epoch (the
launcher and both workers at once, as a crashed machine) and resumed with --resume ends with
the same weights, flip counts, optimizer state and flips.npz as an uninterrupted 2-process run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tests.checks import assert_same, load, no_seconds

from bnnprune.lock import LOCK_NAME

ARGS = [
    "train", "--dataset", "synthetic", "--model", "small", "--width", "0.25",
    "--train-subset", "512", "--test-subset", "64", "--batch-size", "32",
    "--epochs", "3", "--track-last", "2", "--device", "cpu",
]


def _torchrun(out, *extra, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "bnnprune", *ARGS, "-o", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (torchrun puts its workers in their own process groups)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kill_all(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the launcher and every worker at once, as a machine crash would."""
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids



@pytest.mark.slow  # torchrun processes killed and restarted
def test_torchrun_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    with open(tmp_path / "killed.log", "wb") as log:
        proc = _torchrun(killed, log=log)
        try:
            deadline = time.monotonic() + 300
            while not (killed / "metrics.jsonl").exists():  # epoch 1 is on disk
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline, "no epoch finished in 300 s"
                time.sleep(0.02)
            first = json.loads((killed / "metrics.jsonl").read_text().splitlines()[0])
            time.sleep(min(0.25, 0.3 * first["seconds"]))  # inside epoch 2 (16 steps)
        finally:
            pids = _kill_all(proc)
            proc.wait(timeout=60)
    assert len(pids) >= 3, "expected the launcher and two workers"
    time.sleep(0.5)
    for pid in pids[1:]:  # no worker lives on (a zombie, reaped by init, is dead too)
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"), pid
        except FileNotFoundError:
            pass
    assert not (killed / "model.pt").exists(), "the run finished before it could be killed"
    assert load(killed / "checkpoint.pt")["epoch"] < 3
    assert (killed / LOCK_NAME).exists()  # the dead rank 0's lock, taken over on resume

    with open(tmp_path / "resumed.log", "wb") as log:
        assert _torchrun(killed, "--resume", log=log).wait(timeout=400) == 0, (
            tmp_path / "resumed.log"
        ).read_text()
    assert "took over the lock" in (tmp_path / "resumed.log").read_text()
    with open(tmp_path / "reference.log", "wb") as log:
        assert _torchrun(reference, log=log).wait(timeout=400) == 0, (
            tmp_path / "reference.log"
        ).read_text()

    ref, got = load(reference / "model.pt"), load(killed / "model.pt")
    assert_same(ref["state_dict"], got["state_dict"], "state_dict")
    assert_same(ref["flips"], got["flips"], "flips")
    assert ref["flips"]["steps_in_window"] == 2 * (512 // 32)
    assert sum(int(c.sum()) for c in ref["flips"]["counts"].values()) > 0
    assert no_seconds(ref["history"]) == no_seconds(got["history"])
    ref_ck, got_ck = load(reference / "checkpoint.pt"), load(killed / "checkpoint.pt")
    assert got_ck["epoch"] == 3
    assert_same(ref_ck["optimizer"], got_ck["optimizer"], "optimizer")
    ref_npz, got_npz = np.load(reference / "flips.npz"), np.load(killed / "flips.npz")
    assert sorted(ref_npz.files) == sorted(got_npz.files)
    for name in ref_npz.files:
        assert np.array_equal(ref_npz[name], got_npz[name]), name
    assert not (killed / LOCK_NAME).exists() and not (reference / LOCK_NAME).exists()
