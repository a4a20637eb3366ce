"""Sweep processes sharing a folder coordinate through per-cell claims: a cell claimed by
another process is never computed at the same time; its record is read back once written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnnprune.cellkinds import compute_record
from bnnprune.cells import CLAIM_POLL_SECONDS, CLAIMS, Cell
from bnnprune.config import SweepConfig, load_config
from bnnprune.lock import claim
from bnnprune.prune.methods import parse_method

pytestmark = pytest.mark.slow  # real sweep processes sharing a folder, killed and restarted

CONFIG = """
[model]
name = "small"
width = 0.25
[data]
name = "synthetic"
train_subset = 128
test_subset = 32
[train]
epochs = 1
track_last = 1
batch_size = 32
device = "cpu"
[prune]
retrain_epochs = 1
[sweep]
seeds = [0]
reductions = [0.3]
methods = ["target+wff", "target+random"]
flip_percents = []
speed = false
"""
CELLS = ["baseline", "target+wff-30", "target+random-30", "unpruned-budget"]
# run_sweep in a process of its own, without the CLI's folder lock (as on another machine)
DRIVER = """
import json, sys
from bnnprune.config import SweepConfig, load_config
from bnnprune.sweep import run_sweep
res = run_sweep(load_config(sys.argv[1], SweepConfig), sys.argv[2], command="driver")
with open(sys.argv[3], "w") as f:
    json.dump({"computed": res["invocations"][-1]["cells_computed"],
               "records": res["records"]}, f)
"""


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.toml"
    path.write_text(CONFIG)
    return path


def _sweep(config: Path, out: Path, result: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(config), str(out), str(result)],
                            env=env)


def test_a_cell_claimed_elsewhere_is_left_to_its_holder_and_read_back(tmp_path: Path) -> None:
    config, out = _config(tmp_path), tmp_path / "s"
    cell = Cell("prune", 0, parse_method("target+random"), 0.3)
    with claim(out / CLAIMS / cell.folder, "another machine") as held:
        assert held is not None
        proc = _sweep(config, out, tmp_path / "a.json")
        try:
            others = [out / "seed0" / c / "result.json" for c in CELLS if c != cell.name]
            deadline = time.monotonic() + 300
            while not all(p.is_file() for p in others):
                assert proc.poll() is None, f"the sweep ended (rc {proc.returncode})"
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(3 * CLAIM_POLL_SECONDS)  # it polls the claimed cell meanwhile
            assert proc.poll() is None, "the sweep finished without the claimed cell"
            assert not (out / cell.folder).exists(), "the claimed cell was computed"
            # the holder computes the cell (as another machine would) and releases it
            mine = compute_record(load_config(config, SweepConfig), out, cell)
            written = (out / cell.folder / "result.json").read_bytes()
        except BaseException:
            proc.kill()
            raise
    assert proc.wait(timeout=300) == 0
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["computed"] == len(CELLS) - 1  # every cell but the one claimed elsewhere
    assert (out / cell.folder / "result.json").read_bytes() == written  # read, not rewritten
    [rec] = [r for r in res["records"] if r["folder"] == cell.folder]
    assert rec == json.loads(written) and rec["seconds"] == mine["seconds"]


def test_two_sweeps_sharing_a_folder_compute_each_cell_once(tmp_path: Path) -> None:
    config, out = _config(tmp_path), tmp_path / "s"
    procs = [_sweep(config, out, tmp_path / f"{name}.json") for name in "ab"]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in "ab")
    assert a["computed"] + b["computed"] == len(CELLS), (a["computed"], b["computed"])
    assert a["records"] == b["records"]  # both read every record the other wrote
    assert sorted(r["folder"] for r in a["records"]) == sorted(f"seed0/{c}" for c in CELLS)
    for c in CELLS:  # and no claim is left held
        with claim(out / CLAIMS / "seed0" / c) as held:
            assert held is not None and held.took_over is None, c


def _children(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (Linux /proc)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_sweep(tmp_path: Path) -> None:
    """SIGTERM to the sweep alone (not its process group) ends its cell workers too, so no
    orphan goes on writing records with settings the user has since changed."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    config = tmp_path / "sweep.toml"
    config.write_text(CONFIG.replace("epochs = 1\ntrack_last", "epochs = 30\ntrack_last"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnnprune", "sweep", "--config", str(config), "--jobs", "2",
         "-o", str(tmp_path / "s")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # the workers have run their initializer and started the baseline
        workers = {w for w in _children(proc.pid) if _alive(w)}
        assert len(workers) >= 2, "the sweep did not start its workers"
        proc.terminate()
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), "a cell worker outlived the sweep"
    finally:  # never leave a process behind, whatever failed
        proc.kill()
        for w in workers | _children(proc.pid):
            if _alive(w):
                os.kill(w, 9)
