"""A sweep spread over machines: ``--list-cells``, ``--cell K`` (one cell per worker, its
baseline first), claims that make a second worker wait, and bad indices."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bnnprune import lock
from bnnprune.cli import main
from bnnprune.config import SweepConfig, load_config
from bnnprune.lock import LOCK_NAME, claim
from bnnprune.sweep import compute_cell, run_sweep, sweep_cells

CONFIG = """
[model]
name = "small"
width = 0.25
[data]
name = "synthetic"
train_subset = 256
test_subset = 64
[train]
epochs = 1
track_last = 1
batch_size = 64
[prune]
retrain_epochs = 1
[sweep]
seeds = [0]
reductions = [0.3]
methods = ["target+wff"]
flip_percents = []
speed = false
"""
CELLS = ["seed0/baseline", "seed0/target+wff-30", "seed0/unpruned-budget"]

HOLDER = textwrap.dedent(
    """
    import sys, time
    from bnnprune.lock import hold_folder
    with hold_folder(sys.argv[1], "other worker"):
        print("held", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(CONFIG)
    return path


def _records(out: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(out)) for p in out.rglob("result.json"))


def _start_holder(folder: Path) -> subprocess.Popen:
    """Another worker (a separate process) holding ``folder``; returns once it holds it."""
    src = str(Path(lock.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_list_cells_then_one_cell_waits_for_the_baseline_claim_and_computes_only_itself(
        config, tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    flags = ["sweep", "--config", str(config), "-o", str(out)]
    assert main([*flags, "--list-cells"]) == 0
    got = capsys.readouterr()
    assert got.out.splitlines() == [f"{i}\t{c}\tpending" for i, c in enumerate(CELLS)]
    assert got.err.strip() == "3 cells, 0 finished (SLURM: #SBATCH --array=0-2)"
    assert not out.exists()  # listing writes nothing

    # another worker holds the baseline: cell 1 waits, then trains the baseline itself
    # (the holder dies without having trained it) and computes cell 1 only
    cfg = load_config(config, SweepConfig)
    holder = _start_holder(out / ".claims" / "seed0" / "baseline")
    logs: list[str] = []

    def kill_holder() -> None:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    timer = threading.Timer(1.5, kill_holder)  # the holder dies without training it
    timer.start()
    t0 = time.monotonic()
    rec = compute_cell(cfg, out, 1, log=logs.append, poll=0.05)
    timer.join()
    assert time.monotonic() - t0 >= 1.5  # it waited for the holder instead of sharing
    assert rec["kind"] == "prune" and rec["method_key"] == "target+wff"
    assert rec["folder"] == "seed0/target+wff-30" and rec["bops_reduction"] > 0.25
    assert _records(out) == ["seed0/target+wff-30"]  # exactly that cell's record
    assert (out / "seed0" / "baseline" / "model.pt").is_file()  # its baseline, trained first
    assert not (out / "seed0" / "unpruned-budget").exists()
    assert not list(out.rglob(LOCK_NAME))  # every claim released
    stamp = (out / "seed0" / "target+wff-30" / "model.pt").stat().st_mtime_ns

    assert main([*flags, "--list-cells"]) == 0
    assert [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()] == [
        "pending", "finished", "pending"]
    assert main([*flags, "--cell", "1"]) == 0
    assert "already finished" in capsys.readouterr().out

    # the whole sweep on the same folder accepts the cell's record as its own
    assert main([*flags, "--cell", "0"]) == 0
    assert main(flags) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["invocations"][-1]["cells_computed"] == 1  # only the budget cell was left
    assert (out / "seed0" / "target+wff-30" / "model.pt").stat().st_mtime_ns == stamp
    assert _records(out) == sorted(CELLS)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--cell", "3"], "cell 3 does not exist: this sweep has 3 cells, 0 to 2"),
        (["--cell", "-1"], "cell -1 does not exist"),
        (["--cell", "x"], "argument --cell: invalid int value: 'x'"),
        (["--cell", "0", "--list-cells"], "not allowed with argument"),
        (["--cell", "0", "--jobs", "2"], "--jobs and --docs apply to a whole sweep"),
    ],
)
def test_bad_cell_flags_are_one_line_exit_2(config, tmp_path, capsys, extra, match) -> None:
    out = tmp_path / "s"
    assert main(["sweep", "--config", str(config), "-o", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_cells_are_indexed_baselines_first_and_the_same_for_the_same_config(config) -> None:
    cfg = load_config(config, SweepConfig)
    cfg.sweep.seeds = [3, 1]
    names = [c.folder for c in sweep_cells(cfg)]
    assert names == ["seed3/baseline", "seed1/baseline", "seed3/target+wff-30",
                     "seed3/unpruned-budget", "seed1/target+wff-30", "seed1/unpruned-budget"]
    assert [c.folder for c in sweep_cells(load_config(config, SweepConfig))] == CELLS


def test_claims_nest_inside_one_process(tmp_path) -> None:
    item = tmp_path / "cell"
    with claim(item, "outer") as outer:
        with claim(item, "inner") as inner:
            assert inner is outer is not None
        assert (item / LOCK_NAME).is_file()  # the inner block did not release the outer claim
    assert not (item / LOCK_NAME).exists()


def test_a_lost_baseline_checkpoint_is_trained_again_after_the_new_baselines(
        config, tmp_path) -> None:
    """A fresh machine has seed 0's committed baseline record but not its checkpoint: the
    baseline no seed has yet (seed 1) trains first, seed 0's is rebuilt just before its
    cells need it."""
    out = tmp_path / "sweep"
    cfg = load_config(config, SweepConfig)
    run_sweep(cfg, out)
    (out / "seed0" / "baseline" / "model.pt").unlink()
    shutil.rmtree(out / "seed0" / "target+wff-30")
    cfg.sweep.seeds = [0, 1]
    logs: list[str] = []
    run_sweep(cfg, out, log=logs.append)
    order = [line.split("] ", 1)[1].split(":")[0] for line in logs if line.startswith("[")]
    assert order[:2] == ["seed 1 baseline", "seed 0 baseline"]
    assert (out / "seed0" / "baseline" / "model.pt").is_file()
    assert "seed 0 target+wff (-30%)" in order
