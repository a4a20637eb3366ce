"""The C export's instructions per inference stay within the budget file (callgrind counts,
the same on every run: a regression fails CI where timing could not)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "c_instructions.py"
BUDGET = ROOT / "benchmarks" / "c_instructions_budget.json"


def test_budget_file_is_within_the_issue_targets():
    b = json.loads(BUDGET.read_text())
    assert set(b["budget"]) == {"unpruned", "pruned"}
    for name, limit in b["budget"].items():
        assert 0 < limit <= b["issue_targets"][name]
    assert "-O3" in b["cflags"] and b["command"].endswith("c_instructions.py --check")


def _need_valgrind() -> None:
    if shutil.which("valgrind") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must count instructions: valgrind not found (apt-get install valgrind)")
        pytest.skip("valgrind not found (Debian: apt-get install valgrind)")


def _check(budget: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--budget", str(budget)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.mark.slow  # under valgrind (scripts/setup.sh --devices)
def test_small_within_instruction_budget():
    _need_valgrind()
    r = _check(BUDGET)
    assert r.returncode == 0, r.stdout + r.stderr
    budget = json.loads(BUDGET.read_text())["budget"]
    got = {name: int(n.replace(",", "")) for name, n in
           re.findall(r"small (\w+)\s+([\d,]+)\s+budget", r.stdout)}
    assert set(got) == set(budget)
    assert all(0 < got[k] <= budget[k] for k in budget), r.stdout
    assert got["pruned"] < got["unpruned"]  # the C gains from pruning


@pytest.mark.slow
def test_over_budget_fails(tmp_path):
    _need_valgrind()
    b = json.loads(BUDGET.read_text())
    b["budget"]["pruned"] = 1000  # far below any real count
    path = tmp_path / "budget.json"
    path.write_text(json.dumps(b))
    r = _check(path)
    assert r.returncode == 1 and "over the instruction budget: pruned" in r.stderr
