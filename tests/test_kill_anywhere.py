"""SIGKILL anywhere: a real `bnnprune run` / `bnnprune sweep --jobs 2` killed again and again
at named points (``BNNPRUNE_TEST_KILL_AT``, :mod:`bnnprune.killpoint`) and restarted with the
same command ends with the results, report and every model of an uninterrupted run (CPU,
fixed seed); no checkpointed epoch is trained again, no finished model rewritten, and no
damaged file ever stands under a final name."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tests.checks import assert_same

from bnnprune.cli import main
from bnnprune.killpoint import ENV
from bnnprune.lock import claim
from bnnprune.train import load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

RUN = ["run", "--dataset", "synthetic", "--model", "small", "--width", "0.25",
       "--train-subset", "384", "--test-subset", "96", "--batch-size", "64", "--epochs", "3",
       "--track-last", "2", "--retrain-epochs", "2", "--target-bops", "0.4",
       "--policy", "target", "--criterion", "wff", "--compare", "uniform", "--device", "cpu",
       "--no-speed"]  # engine timings differ run to run and write no file a kill could damage
SWEEP = ["sweep", "--dataset", "synthetic", "--model", "small", "--width", "0.25",
         "--train-subset", "256", "--test-subset", "64", "--batch-size", "64", "--epochs", "2",
         "--track-last", "1", "--retrain-epochs", "2", "--device", "cpu", "--seeds", "0",
         "--reductions", "0.3", "--methods", "target+wff,target+random", "--flip-percents", "10",
         "--no-speed", "--jobs", "2"]
SWEEP_CELLS = ["baseline", "premise", "target+wff-30", "target+random-30", "unpruned-budget"]
TEMP = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")  # bnnprune.atomic's temp file names
EPOCH_LINE = re.compile(r"^\[(?P<phase>[^\]]+)\] epoch (?P<epoch>\d+)/\d+:", re.M)


# ---------------------------------------------------------------- processes


def _group_alive(pgid: int) -> list[int]:
    """PIDs of processes of group ``pgid`` that are not zombies."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _bnnprune(args: list[str], out: Path, event: str | None, log: Path) -> tuple[int, str]:
    """Run ``python -m bnnprune ARGS -o OUT`` in a session of its own (its spawned workers
    share its process group); with ``event``, SIGKILL at that kill point. Return (rc, log)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop(ENV, None)
    if event:
        env[ENV] = event
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "bnnprune", *args, "-o", str(out)],
                                stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    deadline = time.monotonic() + 20
    while _group_alive(proc.pid):  # a killed group dies whole: no worker lives on
        assert time.monotonic() < deadline, f"{_group_alive(proc.pid)} outlived {event}"
        time.sleep(0.05)
    return rc, log.read_text()


def _reference(args: list[str], out: Path) -> None:
    """The uninterrupted run, in this process with the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "-o", str(out)]) == 0
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- folder checks


def _assert_intact(root: Path) -> list[Path]:
    """Every file under a final name is complete; return the temp files a kill left."""
    temps = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if TEMP.match(f.name):
            temps.append(f)
        elif f.name == ".bnnprune.lock":
            continue  # its inode is the lock; its content only names the holder
        elif f.suffix == ".pt":
            load_checkpoint(f)
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            assert f.read_text().endswith("\n"), f
            [json.loads(line) for line in f.read_text().splitlines()]
        elif f.suffix == ".npz":
            with np.load(f) as z:
                [z[k] for k in z.files]
        elif f.suffix == ".png":
            data = f.read_bytes()
            assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), f
        elif f.suffix == ".md":
            assert f.read_text().endswith("\n"), f
        else:
            raise AssertionError(f"unexpected file {f}")
    return temps


def _phases(root: Path) -> dict[str, dict[str, Any]]:
    """Per phase folder: its finished model.pt (mtime, bytes) and its checkpoint's history."""
    out = {}
    for folder in sorted({p.parent for p in root.rglob("*.pt")}):
        model, ck = folder / "model.pt", folder / "checkpoint.pt"
        out[str(folder.relative_to(root))] = {
            "model": (model.stat().st_mtime_ns, model.read_bytes()) if model.is_file() else None,
            "history": load_checkpoint(ck)["history"] if ck.is_file() else [],
        }
    return out


def _assert_nothing_redone(before: dict[str, Any], after: dict[str, Any]) -> None:
    """A finished model is never rewritten; a checkpointed epoch is never trained again (its
    history record, wall-clock seconds included, is carried over unchanged)."""
    for phase, b in before.items():
        a = after[phase]
        if b["model"] is not None:
            assert a["model"] == b["model"], f"{phase}/model.pt was rewritten"
        assert a["history"][:len(b["history"])] == b["history"], f"{phase} retrained an epoch"


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _no_seconds(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_without(h, "seconds") for h in history]



def _assert_same_models(ref: Path, got: Path) -> int:
    """Every phase's model, flips and optimizer state equal the reference's; return the count."""
    ref_models = sorted(p.relative_to(ref) for p in ref.rglob("model.pt"))
    assert ref_models == sorted(p.relative_to(got) for p in got.rglob("model.pt"))
    for rel in ref_models:
        r, g = load_checkpoint(ref / rel), load_checkpoint(got / rel)
        assert_same(r["state_dict"], g["state_dict"], f"{rel} state_dict")
        assert_same(r["flips"], g["flips"], f"{rel} flips")
        assert _no_seconds(r["history"]) == _no_seconds(g["history"]), rel
        rc, gc = load_checkpoint(ref / rel.parent / "checkpoint.pt"), \
            load_checkpoint(got / rel.parent / "checkpoint.pt")
        assert_same(rc["optimizer"], gc["optimizer"], f"{rel.parent} optimizer")
        if (ref / rel.parent / "flips.npz").is_file():
            with np.load(ref / rel.parent / "flips.npz") as a, \
                    np.load(got / rel.parent / "flips.npz") as b:
                assert a.files == b.files
                assert all(np.array_equal(a[k], b[k]) for k in a.files), rel
    return len(ref_models)


def _final_names(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and not TEMP.match(p.name)}


# ---------------------------------------------------------------- bnnprune run

# (kill point, where it is)
RUN_KILLS = [
    ("baseline:epoch2:step3", "inside baseline training (epoch 1 checkpointed)"),
    ("write:flips.npz", "baseline trained, its flips.npz half-written, no model.pt yet"),
    ("run:baseline-done", "between phases: baseline and flip plots done, nothing pruned"),
    ("pruned:epoch2:step1", "during retraining of the pruned model"),
    ("write:checkpoint.pt", "while the retrained epoch's checkpoint.pt is written"),
    ("compare-uniform+wff:trained", "compared method retrained, its model.pt not written"),
    ("unpruned-budget:epoch1:step4", "inside a phase before its first checkpoint"),
    ("run:results-written", "results.json written, report not yet"),
    ("write:report.md", "while report.md is written"),
]


def test_run_killed_at_every_point_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    trained: dict[tuple[str, int], int] = {}  # (phase, epoch) -> times it was trained
    for i, (event, where) in enumerate([*RUN_KILLS, (None, "final restart")]):
        before = _phases(out) if out.exists() else {}
        rc, log = _bnnprune(RUN, out, event, tmp_path / f"{i}.log")
        assert rc == (-signal.SIGKILL if event else 0), f"{where}: rc {rc}\n{log}"
        if i:  # the killed holder's lock is taken over, not shared
            assert "note: took over the lock of" in log, log
        for phase, b in before.items():
            if b["model"] is not None:
                assert f"[{phase}] reusing finished phase" in log, (where, phase, log)
            elif b["history"]:
                assert f"[{phase}] resuming" in log, (where, phase, log)
        for m in EPOCH_LINE.finditer(log):  # logged after the epoch's checkpoint is on disk
            key = (m["phase"], int(m["epoch"]))
            trained[key] = trained.get(key, 0) + 1
        _assert_nothing_redone(before, _phases(out))
        temps = _assert_intact(out)
    # every epoch of every phase checkpointed exactly once over the ten processes
    assert trained and set(trained.values()) == {1}, trained
    assert sorted(trained) == sorted(
        [("baseline", e) for e in (1, 2, 3)]
        + [(p, e) for p in ("pruned", "compare-uniform+wff", "unpruned-budget") for e in (1, 2)])
    # the three kills inside an atomic write left their temp files, never read
    assert sorted(t.name.split(".")[1] for t in temps) == ["checkpoint", "flips", "report"]

    ref = tmp_path / "reference"
    _reference(RUN, ref)
    assert _final_names(out) == _final_names(ref)
    wall = ("wall_seconds", "phase_seconds")
    got_res = json.loads((out / "results.json").read_text())
    ref_res = json.loads((ref / "results.json").read_text())
    assert _without(got_res, *wall) == _without(ref_res, *wall)

    def report(folder: Path) -> str:
        return re.sub(r"Wall time [\d.]+ min", "Wall time", (folder / "report.md").read_text())

    assert report(out) == report(ref)
    assert _assert_same_models(ref, out) == 4  # baseline, pruned, compared, unpruned-budget
    for phase in ("baseline", "pruned", "compare-uniform+wff", "unpruned-budget"):
        lines = [json.loads(x) for x in (out / phase / "metrics.jsonl").read_text().splitlines()]
        ref_lines = [json.loads(x) for x in (ref / phase / "metrics.jsonl").read_text()
                     .splitlines()]
        assert _no_seconds(lines) == _no_seconds(ref_lines), phase


# ---------------------------------------------------------------- bnnprune sweep --jobs 2


def _records(root: Path) -> dict[str, dict[str, Any]]:
    return {c: _without(json.loads((root / "seed0" / c / "result.json").read_text()), "seconds",
                        "train_seconds")
            for c in SWEEP_CELLS}


def test_sweep_with_two_workers_killed_at_every_point_ends_as_an_uninterrupted_sweep(
        tmp_path: Path) -> None:
    out = tmp_path / "killed"
    kills = [("group:baseline:epoch2:step1", "inside baseline training in a worker"),
             ("group:target+wff-30:epoch2:step1", "retraining while the other worker computes"),
             (None, "between cells: after the first record still missing is written"),
             ("group:write:results.json", "every cell done, while results.json is written"),
             ("group:write:report.md", "while report.md is written"),
             (None, "final restart")]
    for i, (event, where) in enumerate(kills):
        if event is None and i < len(kills) - 1:
            todo = [c for c in SWEEP_CELLS if not (out / "seed0" / c / "result.json").is_file()]
            assert todo, "every cell finished before the between-cells kill"
            event = f"group:sweep:recorded:seed0/{todo[0]}"
        before = _phases(out) if out.exists() else {}
        rc, log = _bnnprune(SWEEP, out, event, tmp_path / f"{i}.log")
        assert rc == (-signal.SIGKILL if event else 0), f"{where}: rc {rc}\n{log}"
        _assert_nothing_redone(before, _phases(out))
        _assert_intact(out)
    assert "(reused)" in log  # cells finished before a kill are read back, not recomputed

    ref = tmp_path / "reference"
    _reference(SWEEP, ref)
    assert _records(out) == _records(ref)
    got, want = (json.loads((d / "results.json").read_text()) for d in (out, ref))
    assert [_without(r, "seconds", "train_seconds") for r in got["records"]] == \
        [_without(r, "seconds", "train_seconds") for r in want["records"]]
    assert got["table"] == want["table"] and got["premise"] == want["premise"]
    assert _assert_same_models(ref, out) == 4  # baseline, two pruned cells, unpruned-budget
    assert (out / "report.md").is_file()
    for item in {p.parent for p in (out / ".claims").rglob(".bnnprune.lock")}:
        with claim(item) as held:  # a claim a kill left behind holds nothing
            assert held is not None and held.took_over is not None, item
