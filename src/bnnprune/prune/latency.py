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

from bnnprune.engine.compile import compile_model
from bnnprune.engine.latency import (
    CONV_KINDS,
    EngineCostModel,
    LatencyCache,
    build_cost_model,
    op_channels,
)
from bnnprune.prune.graph import InputShape, PruningSpace, analyze

__all__ = ["DEFAULT_STEP", "LatencyModel", "check_latency_target", "latency_model"]

DEFAULT_STEP = 8  # table resolution (channels) of groups wider than 16
_PLATEAU = 0.002  # a smaller count must save this share of the unpruned latency

Expr = tuple[int, tuple[tuple[int, int], ...]]  # channels = base - sum(coef * removed[group])


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


def _count(expr: Expr, removed: Sequence[int]) -> int:
    base, terms = expr
    return base - sum(c * removed[g] for g, c in terms)


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
        return [(_count(i, removed), _count(o, removed))
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
        eps = _PLATEAU * self.predict(full)
        times = {k: self.predict(full[:gi] + [k] + full[gi + 1:]) for k in self.grids[gi]}
        out, best_above = [], math.inf
        for k in sorted(times, reverse=True):
            if k == full[gi] or times[k] < best_above - eps:
                out.append(k)
                best_above = min(best_above, times[k])
        return tuple(sorted(out))

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


def _expressions(space: PruningSpace, program: Any) -> tuple[list[Expr], list[Expr]]:
    """Channel expressions of every op's input and output (checked against the program)."""
    index = {g.name: i for i, g in enumerate(space.groups)}
    group_of = {layer: index[g.name] for layer, g in space.group_of().items()}
    value: dict[int, Expr] = {0: (program.values[0].c, ())}
    ins, outs = [], []
    for op in program.ops:
        first = value[op.inputs[0]]
        c = program.values[op.output].c
        if op.kind in CONV_KINDS:
            gi = group_of.get(op.name)
            out: Expr = (c, () if gi is None else ((gi, 1),))
        elif op.kind in ("concat", "concat_bits"):
            terms: dict[int, int] = {}
            for i in op.inputs:
                for g, k in value[i][1]:
                    terms[g] = terms.get(g, 0) + k
            out = (sum(value[i][0] for i in op.inputs), tuple(sorted(terms.items())))
        else:
            out = first
        if out[0] != c:
            raise ValueError(f"cannot model the latency of op {op.name or op.kind!r}: its "
                             "channels do not follow the pruning groups")
        value[op.output] = out
        ins.append(first if op.kind not in ("concat", "concat_bits") else out)
        outs.append(out)
    return ins, outs


def _axis(expr: Expr, grids: list[list[int]], space: PruningSpace) -> list[int]:
    """Counts to measure along one axis: a single group's candidates, else the full count."""
    base, terms = expr
    if len(terms) == 1 and terms[0][1] == 1:
        g = terms[0][0]
        return [base - (space.groups[g].channels - k) for k in grids[g]
                if base - (space.groups[g].channels - k) >= 1]
    return [base]


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
    was_training = model.training
    try:
        program = compile_model(model.eval(), input_shape)
    finally:
        model.train(was_training)
    ins, outs = _expressions(space, program)
    grids = [_grid(g.channels, step) for g in space.groups]
    op_grids = {}
    for idx in range(len(program.ops)):
        cin, cout = op_channels(program, idx)
        op_grids[idx] = (_axis(ins[idx], grids, space) if program.ops[idx].kind in CONV_KINDS
                         else [cin], _axis(outs[idx], grids, space))
    engine = build_cost_model(program, op_grids, batch=batch, threads=threads, repeats=repeats,
                              cache=cache, progress=progress)
    return LatencyModel(space, engine, ins, outs, grids)
