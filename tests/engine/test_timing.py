"""The engine's one timer (engine.timing): how many runs it takes, and that bench's op times
and the latency tables' in-context times come from the same steps of a plan."""

from __future__ import annotations

import numpy as np

from bnnprune.engine import compile_model
from bnnprune.engine.bench import op_times
from bnnprune.engine.latency import time_ops_in_context
from bnnprune.engine.timing import best_time, interleaved, runs, step_samples
from bnnprune.models import build_model


def _program():
    model = build_model("small", width=0.25, in_channels=1, image_size=28)
    return compile_model(model, (1, 28, 28))


def test_runs_takes_the_repeats_then_fills_the_window_up_to_max_runs() -> None:
    assert len(list(runs(5))) == 5
    assert len(list(runs(2, min_window_s=60.0, max_runs=7))) == 7  # the cap ends a long window
    assert len(list(runs(0))) == 0


def test_best_time_calls_once_untimed_then_every_run() -> None:
    calls = []
    t = best_time(lambda: calls.append(1), repeats=4, min_window_s=0.0)
    assert len(calls) == 5 and 0 <= t < 1


def test_interleaved_calls_each_in_turn() -> None:
    order: list[str] = []
    samples = interleaved([lambda: order.append("a"), lambda: order.append("b")], 3)
    assert order == ["a", "b"] * 4  # one untimed call each, then three rounds
    assert [len(s) for s in samples] == [3, 3]


def test_step_samples_time_every_step_of_the_plan_for_bench_and_the_tables() -> None:
    program = _program()
    plan = program.plan(1)
    x = np.zeros((1, *program.input_shape), np.float32)
    samples = step_samples(plan, x, repeats=3)
    assert len(samples) == len(plan.steps) and all(len(s) == 3 for s in samples)
    rows = op_times(program, batch=1, repeats=3)
    assert [r["op"] for r in rows] == [program.ops[i].name or f"op{i}" for i, _ in plan.steps]
    best = time_ops_in_context(program, batch=1, threads=1, repeats=3)
    stepped = {i for i, _ in plan.steps}
    assert all(0 < best[i] < float("inf") for i in stepped)
    assert all(best[i] == float("inf") for i in range(len(program.ops)) if i not in stepped)
