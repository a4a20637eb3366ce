"""The planner's view of the engine's latency: channel counts per group -> predicted seconds.

:func:`latency_model` compiles the model, follows every program value's channel count back
to the pruning groups (a conv's output channels are its group's; pooling, sign, BN, adds keep
their input's; a concatenation sums its inputs'), and has the engine time every op at the
candidate counts of the groups it touches (:mod:`bnnprune.engine.latency`). The counts a
plan may use per group are those the table says are worth it: a count is allowed only when
every larger candidate is measurably slower, so a group is never cut without a saving
(16-channel output blocks, 64-bit input words, patch-matrix rows show up as plateaus).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from bnnprune.engine.latency import (
    CONV_KINDS,
    EngineCostModel,
    LatencyCache,
    build_cost_model,
    op_channels,
)
from bnnprune.prune.channels import Expr, channels_at, compile_eval, op_expressions
from bnnprune.prune.graph import InputShape, PruningSpace, analyze

__all__ = ["DEFAULT_STEP", "LatencyModel", "check_latency_target", "kernel_counts",
           "latency_model"]

DEFAULT_STEP = 8  # table resolution (channels) of groups wider than 16
_PLATEAU = 0.002  # a smaller count must save this share of the unpruned latency

def check_latency_target(value: Any) -> float:
    """The target latency as a float in (0, 1), or ValueError (one line)."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if isinstance(value, bool) or not 0.0 < t < 1.0:
        raise ValueError(
            f"target latency must be a fraction of the unpruned latency strictly between 0 "
            f"and 1, got {value!r}"
        )
    return t


def _grid(channels: int, step: int) -> list[int]:
    """Candidate counts of a group: every count up to 16, else multiples of ``step`` and C."""
    if channels <= 16:
        return list(range(1, channels + 1))
    return sorted({*range(step, channels, step), channels})



@dataclass
class LatencyModel:
    """Predicted engine latency of a model as a function of the channels kept per group."""

    space: PruningSpace
    engine: EngineCostModel
    in_expr: list[Expr]  # per program op: its input channels
    out_expr: list[Expr]  # per program op: its output channels
    grids: list[list[int]]  # per group: the counts the table measured

    @property
    def full(self) -> list[int]:
        return [g.channels for g in self.space.groups]

    def counts(self, keep: Sequence[int]) -> list[tuple[int, int]]:
        """(input, output) channels of every program op under ``keep``."""
        removed = [g.channels - k for g, k in zip(self.space.groups, keep, strict=True)]
        return [(channels_at(i, removed), channels_at(o, removed))
                for i, o in zip(self.in_expr, self.out_expr, strict=True)]

    def predict(self, keep: Sequence[int]) -> float:
        """Predicted latency in seconds at ``keep`` channels per group."""
        return self.engine.predict_counts(self.counts(keep))

    def ratio(self, keep: Sequence[int]) -> float:
        """Predicted latency at ``keep`` over the unpruned prediction."""
        return self.predict(keep) / self.predict(self.full)

    def allowed(self, gi: int) -> tuple[int, ...]:
        """Counts of group ``gi`` that buy a saving: every larger candidate is slower by more
        than 0.2% of the unpruned latency (the group's full width always)."""
        full = self.full
        times = {k: self.predict(full[:gi] + [k] + full[gi + 1:]) for k in self.grids[gi]}
        return _saving_counts(times, _PLATEAU * self.predict(full))

    def granularity(self, gi: int) -> int:
        """The most common step between allowed counts of group ``gi`` (its full width when
        no smaller count saves anything)."""
        counts = self.allowed(gi)
        steps = Counter(b - a for a, b in zip(counts, counts[1:]))
        return steps.most_common(1)[0][0] if steps else counts[-1]

    def report(self, keep: Sequence[int], target: float | None) -> dict[str, Any]:
        """The ``latency`` entry of a plan."""
        before, after = self.predict(self.full), self.predict(keep)
        return {"target": target, "batch": self.engine.batch, "threads": self.engine.threads,
                "predicted_before_s": before, "predicted_after_s": after,
                "ratio": after / before, "measured_before_s": self.engine.measured_s,
                "granularity": {g.name: self.granularity(i)
                                for i, g in enumerate(self.space.groups)},
                "cache_file": self.engine.cache_file}


def _saving_counts(cost: dict[int, float], eps: float) -> tuple[int, ...]:
    """The counts whose ``cost`` is lower by more than ``eps`` than that of every larger
    count (the largest count always): cutting to any other count saves nothing."""
    out, best_above = [], math.inf
    for k in sorted(cost, reverse=True):
        if not out or cost[k] < best_above - eps:
            out.append(k)
            best_above = min(best_above, cost[k])
    return tuple(sorted(out))




def _axis(expr: Expr, grids: list[list[int]], space: PruningSpace) -> list[int]:
    """Counts to measure along one axis: a single group's candidates, else the full count."""
    base, terms = expr
    if len(terms) == 1 and terms[0][1] == 1:
        g = terms[0][0]
        return [base - (space.groups[g].channels - k) for k in grids[g]
                if base - (space.groups[g].channels - k) >= 1]
    return [base]



def kernel_counts(model: nn.Module, space: PruningSpace) -> list[tuple[int, ...]]:
    """Per pruning group of ``space`` (the model's :func:`~bnnprune.prune.graph.analyze`),
    the channel counts at which the engine's kernels do less work than
    at every larger count (:func:`~bnnprune.engine.kernels.conv_work`: 8-channel output
    vectors, 64-bit input words, dense patch rows), so a plan rounded to them pays for every
    channel it keeps. No timing: the same counts on every machine.

    A count is a step of a convolution only if it is one with the other groups whole and with
    them halved: whether a dense patch matrix pays depends on the output blocks too, and a
    plan rarely keeps every channel of the next layer. Only convolutions whose work has
    plateaus count; one that pays for every channel (a classifier reading flattened features)
    would allow every count. A group no such convolution touches allows every count. Raises
    EngineError when the engine cannot compile the model, ValueError when its channels do not
    follow the pruning groups.
    """
    from bnnprune.engine.kernels import conv_work, patch_run

    program = compile_eval(model, space.input_shape)
    ins, outs = op_expressions(space, program)
    full = [g.channels for g in space.groups]
    steps: list[set[int]] = [{c} for c in full]
    for op, i_expr, o_expr in zip(program.ops, ins, outs, strict=True):
        if op.kind not in CONV_KINDS:
            continue
        kh, kw = op.attrs["kernel"]
        v = program.values[op.output]
        run = patch_run((v.h, v.w), kw, tuple(op.attrs["stride"]))
        for gi, c in enumerate(full):
            if not any(g == gi for g, _ in (*i_expr[1], *o_expr[1])):
                continue
            # the other groups whole and halved: a count is a step only if it saves work
            # either way (whether a patch matrix pays depends on the output blocks too)
            found = []
            for other in (0.0, 0.5):
                removed = [int(n * other) for n in full]
                work = {}
                for k in range(1, c + 1):
                    removed[gi] = c - k
                    work[k] = conv_work(op.kind, kh, kw, channels_at(i_expr, removed),
                                        channels_at(o_expr, removed), run)
                found.append(set(_saving_counts(work, 0.0)))
            counts = found[0] & found[1]
            if len(counts) < c:  # a convolution that pays for every channel says nothing
                steps[gi].update(counts)
    return [tuple(sorted(s)) if len(s) > 1 else tuple(range(1, c + 1))
            for s, c in zip(steps, full, strict=True)]


def latency_model(model: nn.Module, input_shape: InputShape, *, batch: int = 1,
                  threads: int = 1, step: int = DEFAULT_STEP, repeats: int = 10,
                  keep_fp: bool = False, cache: LatencyCache | str | None = None,
                  progress: Callable[[str], None] | None = None) -> LatencyModel:
    """Build (or read from this machine's cache) the latency tables of ``model``'s engine
    program at ``batch`` images and ``threads`` threads, on the groups of
    :func:`~bnnprune.prune.graph.analyze`."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a whole number >= 1, got {step!r}")
    space = analyze(model, input_shape, keep_fp=keep_fp)
    program = compile_eval(model, input_shape)
    ins, outs = op_expressions(space, program)
    grids = [_grid(g.channels, step) for g in space.groups]
    op_grids = {}
    for idx in range(len(program.ops)):
        cin, cout = op_channels(program, idx)
        op_grids[idx] = (_axis(ins[idx], grids, space) if program.ops[idx].kind in CONV_KINDS
                         else [cin], _axis(outs[idx], grids, space))
    engine = build_cost_model(program, op_grids, batch=batch, threads=threads, repeats=repeats,
                              cache=cache, progress=progress)
    return LatencyModel(space, engine, ins, outs, grids)
