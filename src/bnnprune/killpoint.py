"""Test hook for crash tests: SIGKILL at a named point of a real command, deterministically.

Inert unless the environment variable ``BNNPRUNE_TEST_KILL_AT`` is set. When it equals the
event passed to :func:`kill_point`, the process kills itself with SIGKILL (no cleanup, no
``finally``, as a crash or ``kill -9`` would); ``group:EVENT`` kills its whole process group
instead (``bnnprune sweep --jobs N``: the parent and every worker at once; start the command
in a session of its own, or the group is the caller's too). Events in the code:

- ``PHASE:epochE:stepS``: in training phase PHASE (``baseline``, ``pruned``,
  ``compare-uniform+wff``, ``target+wff-30`` ...), before step S (from 0) of epoch E (from 1);
- ``PHASE:trained``: a phase's last epoch is checkpointed, its ``model.pt`` not yet written;
- ``write:NAME``: inside :func:`bnnprune.atomic.atomic_write_bytes` of a file named NAME
  (``checkpoint.pt``, ``report.md`` ...), its temp file written, not yet renamed;
- ``run:baseline-done``, ``run:results-written``: between phases of ``bnnprune run``;
- ``sweep:recorded:SEEDn/CELL``, ``sweep:cells-done``: a sweep cell's record is written; every
  cell is finished and the sweep's results not yet written.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "armed", "kill_point"]

ENV = "BNNPRUNE_TEST_KILL_AT"


def armed() -> bool:
    """True when a test has set a kill point (hot loops check this once, not every step)."""
    return bool(os.environ.get(ENV))


def kill_point(event: str) -> None:
    """SIGKILL this process (or its group) when ``BNNPRUNE_TEST_KILL_AT`` names ``event``."""
    at = os.environ.get(ENV)
    if not at:
        return
    if at == event:
        os.kill(os.getpid(), signal.SIGKILL)
    elif at == f"group:{event}":
        os.killpg(os.getpgrp(), signal.SIGKILL)
