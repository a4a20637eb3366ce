"""The engine's one wall-clock timer: whole calls, interleaved calls and the ops of a run.

Both the latency tables (:mod:`bnnprune.engine.latency`, best times) and ``bench``
(:mod:`bnnprune.engine.bench`, medians) take their times here, so an op is timed the same
way (its chained kernel calls, inside a loaded plan) whichever of them asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bnnprune.engine.kernels.chain import chain_calls
from bnnprune.engine.plan import ExecutionPlan

__all__ = ["MAX_RUNS", "MIN_WINDOW_S", "best_time", "elapsed", "interleaved", "runs",
           "step_samples"]

MIN_WINDOW_S = 0.03  # a best time is taken over at least this long ...
MAX_RUNS = 1000  # ... unless it ran this often


def elapsed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def runs(repeats: int, min_window_s: float = 0.0, max_runs: int = MAX_RUNS) -> Iterator[int]:
    """Run indices: at least ``repeats``, and more until ``min_window_s`` has passed (at most
    ``max_runs``): on a shared machine a preemption can outlast a few short runs."""
    start, n = time.perf_counter(), 0
    while n < repeats or (time.perf_counter() - start < min_window_s and n < max_runs):
        yield n
        n += 1


def best_time(fn: Callable[[], Any], repeats: int, min_window_s: float = MIN_WINDOW_S
              ) -> float:
    """Best of at least ``repeats`` calls of ``fn`` (after one untimed call) spread over at
    least ``min_window_s`` (:func:`runs`)."""
    fn()
    best = float("inf")
    for _ in runs(repeats, min_window_s):
        best = min(best, elapsed(fn))
    return best


def interleaved(fns: list[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Seconds of each of ``fns`` over ``repeats`` rounds that call each once in turn (after
    one untimed call each), so that all see the same machine load."""
    for f in fns:
        f()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            samples[i].append(elapsed(f))
    return samples


def step_samples(plan: ExecutionPlan, x: np.ndarray, repeats: int, min_window_s: float = 0.0
                 ) -> list[list[float]]:
    """Seconds of every step of ``plan`` (an op's chained kernel calls, as in a chained run)
    in whole runs on ``x``, one list per step of ``plan.steps``: unlike an op timed alone,
    each pays for what the ops before it evicted from the caches. One untimed run first;
    the runs follow :func:`runs`."""
    plan.run(x)
    steps = [chain_calls(calls, min_run=1) for _, calls in plan.steps]
    samples: list[list[float]] = [[] for _ in steps]
    for _ in runs(repeats, min_window_s):
        plan.load(x)
        for i, calls in enumerate(steps):
            t = time.perf_counter()
            for c in calls:
                c()
            samples[i].append(time.perf_counter() - t)
    return samples
