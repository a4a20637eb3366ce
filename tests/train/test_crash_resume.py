"""A real `bnnprune train` process killed with SIGKILL mid-epoch resumes to the exact result of
an uninterrupted run; interrupted writes never damage the previous file."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tests.checks import assert_same, load, no_seconds

from bnnprune import atomic
from bnnprune.atomic import atomic_write_bytes
from bnnprune.cli import main

ARGS = [
    "train",
    "--dataset",
    "synthetic",
    "--model",
    "small",
    "--width",
    "0.25",
    "--train-subset",
    "512",
    "--test-subset",
    "64",
    "--batch-size",
    "32",
    "--epochs",
    "3",
    "--track-last",
    "2",
    "--device",
    "cpu",
]
THREADS = 1  # float results depend on the thread count: pin it in every process


def _cli(out, *extra, log):
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bnnprune", *ARGS, "-o", str(out), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _wait_for(path, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before {path.name}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout}s"
        time.sleep(0.02)



@pytest.mark.slow  # a training process killed and restarted
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    with open(tmp_path / "first.log", "wb") as log:
        proc = _cli(killed, log=log)
        try:
            _wait_for(killed / "metrics.jsonl", proc)  # epoch 1 is on disk (after checkpoint.pt)
            first = json.loads((killed / "metrics.jsonl").read_text().splitlines()[0])
            time.sleep(min(0.25, 0.3 * first["seconds"]))  # well inside epoch 2 (16 steps)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.pt").exists(), "the run finished before it could be killed"
    epoch_at_kill = load(killed / "checkpoint.pt")["epoch"]
    assert epoch_at_kill < 3
    with open(tmp_path / "resume.log", "wb") as log:
        resumed = _cli(killed, "--resume", log=log)
        assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()

    reference = tmp_path / "reference"
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        assert main([*ARGS, "-o", str(reference)]) == 0
    finally:
        torch.set_num_threads(before)

    ref_model, got_model = load(reference / "model.pt"), load(killed / "model.pt")
    # weights and BatchNorm statistics (running mean/var, batches tracked)
    assert any("running_var" in k for k in ref_model["state_dict"])
    assert_same(ref_model["state_dict"], got_model["state_dict"], "state_dict")
    # full flip-tracker state: counts, window, per-step ratios, epoch ends
    assert_same(ref_model["flips"], got_model["flips"], "flips")
    assert ref_model["flips"]["steps_in_window"] == 2 * (512 // 32)
    assert no_seconds(ref_model["history"]) == no_seconds(got_model["history"])
    # optimizer state after the final epoch (Adam moments and step counts)
    ref_ck, got_ck = load(reference / "checkpoint.pt"), load(killed / "checkpoint.pt")
    assert got_ck["epoch"] == 3
    assert_same(ref_ck["optimizer"], got_ck["optimizer"], "optimizer")
    assert_same(ref_ck["state_dict"], got_ck["state_dict"], "checkpoint state_dict")
    ref_npz, got_npz = np.load(reference / "flips.npz"), np.load(killed / "flips.npz")
    assert sorted(ref_npz.files) == sorted(got_npz.files)
    for name in ref_npz.files:
        assert np.array_equal(ref_npz[name], got_npz[name]), name


def test_interrupted_write_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_bytes(target, b"good")

    class Crash(Exception):
        pass

    def crash(*_a):
        raise Crash

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(Crash):
        atomic_write_bytes(target, b"half-written")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
