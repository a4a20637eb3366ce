"""Run bnnprune CLI commands on hostile files in one process and report, per command, the exit
code, stderr and the peak Python-level allocation above what it started with (tracemalloc,
which also sees bytes a reader only reserved), all under an address-space limit of 1.5 GiB
above the process at start. Each command runs once unmeasured first, so the modules it
imports lazily (torch's meta-device machinery, ...) do not count as its allocation.

Used by test_hostile_inputs.py: ``python hostile_driver.py CASES.json RESULTS.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import tracemalloc

from bnnprune.cli import main  # imported before the limit: torch, numpy are loaded

HEADROOM = 3 << 29  # 1.5 GiB of address space for everything a command does


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def run(cases: list[dict]) -> list[dict]:
    import bnnprune.engine  # noqa: F401  (numba, loaded before the limit as well)

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + HEADROOM, hard))
    tracemalloc.start()
    results = []
    for case in cases:
        if case["argv"][0] != "--control":
            quiet = io.StringIO()
            with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
                main(case["argv"])
        err = io.StringIO()
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if case["argv"][0] == "--control":  # proves the measurement sees an allocation
                block = bytes(int(case["argv"][1]))
                code = len(block) and 0
                del block
            else:
                code = main(case["argv"])
        results.append({"id": case["id"], "code": code, "stderr": err.getvalue(),
                        "peak": tracemalloc.get_traced_memory()[1] - before})
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    with open(sys.argv[2], "w") as f:
        json.dump(run(cases), f)
