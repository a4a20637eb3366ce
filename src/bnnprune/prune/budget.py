"""The planner's view of a device budget: channel counts per group -> the C export's bytes.

A budget caps the flash (the export's const data, ``MODEL_FLASH_BYTES``) or the RAM (its
scratch arena, ``MODEL_SCRATCH_BYTES``) of the pruned model's C export. The bytes at any
channel counts come from the export itself (:func:`~bnnprune.deploy.cexport.c_footprint` of
the program at those counts, :func:`~bnnprune.engine.latency.program_at`), so they are exact
for the layout the export will write: no second formula. A plan keeps the most channels
whose bytes fit; a budget below what the policy can reach is refused with that value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bnnprune.deploy.cexport import Footprint, c_footprint, format_footprint
from bnnprune.engine.latency import program_at
from bnnprune.prune.graph import InputShape, PruningSpace, analyze
from bnnprune.prune.latency import Expr, _compile, _count, _expressions

__all__ = ["BUDGET_KINDS", "Budget", "FootprintModel", "check_budget", "check_fit",
           "footprint_model", "format_budget"]

# budget kind -> (Footprint field, what it counts)
BUDGET_KINDS = {"flash": ("flash_bytes", "const data"), "ram": ("ram_bytes", "scratch arena")}


@dataclass(frozen=True)
class Budget:
    """At most ``flash`` bytes of const data and ``ram`` bytes of scratch arena in the C
    export (None: that one is free; at least one is given)."""

    flash: int | None = None
    ram: int | None = None

    def __post_init__(self) -> None:
        if self.flash is None and self.ram is None:
            raise ValueError("a device budget needs a flash or a RAM budget in bytes")
        for kind in BUDGET_KINDS:
            if getattr(self, kind) is not None:
                object.__setattr__(self, kind, check_budget(getattr(self, kind), kind))

    @property
    def limits(self) -> dict[str, int]:
        """Budget kind -> bytes, for the kinds given."""
        return {k: v for k in BUDGET_KINDS if (v := getattr(self, k)) is not None}

    def used(self, fp: Footprint) -> dict[str, int]:
        """Budgeted bytes of a footprint, per kind given."""
        return {k: int(getattr(fp, BUDGET_KINDS[k][0])) for k in self.limits}

    def load(self, fp: Footprint) -> float:
        """The largest share of a budget the footprint takes (<= 1: it fits)."""
        used = self.used(fp)
        return max(used[k] / lim for k, lim in self.limits.items())

    def refusal(self, policy: str, least: Footprint, unpruned: Footprint) -> str:
        """Why the policy's deepest cut ``least`` misses the budget, with the smallest
        reachable bytes of each budget it misses."""
        used, full = self.used(least), self.used(unpruned)
        return "; ".join(
            f"{k} budget {lim:,} B cannot be met: the {policy} policy reaches at least "
            f"{used[k]:,} B of {BUDGET_KINDS[k][1]} (unpruned {full[k]:,} B)"
            for k, lim in self.limits.items() if used[k] > lim)


def check_budget(value: Any, kind: str = "flash") -> int:
    """A byte budget as a whole number >= 1 (also from command-line text), else ValueError."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not float(value).is_integer() or value < 1):
        raise ValueError(f"{kind} budget must be a whole number of bytes >= 1, got {value!r}")
    return int(value)


@dataclass
class FootprintModel:
    """The C export's footprint of a model as a function of the channels kept per group."""

    space: PruningSpace
    program: Any  # the unpruned engine program
    value_expr: list[Expr]  # per program value: its channels
    _memo: dict[tuple[int, ...], Footprint] = field(default_factory=dict, repr=False)

    @property
    def full(self) -> list[int]:
        return [g.channels for g in self.space.groups]

    def footprint(self, keep: Sequence[int]) -> Footprint:
        """Flash and RAM bytes of the export at ``keep`` channels per group."""
        key = tuple(int(k) for k in keep)
        if key not in self._memo:
            removed = [g.channels - k for g, k in zip(self.space.groups, key, strict=True)]
            counts = [_count(e, removed) for e in self.value_expr]
            self._memo[key] = c_footprint(program_at(self.program, counts))
        return self._memo[key]

    def report(self, keep: Sequence[int], budget: Budget) -> dict[str, Any]:
        """The ``budget`` entry of a plan."""
        before, after = self.footprint(self.full), self.footprint(keep)
        return {"limits": budget.limits, "before": before.to_dict(), "after": after.to_dict(),
                "fits": budget.load(after) <= 1.0}


def footprint_model(model: nn.Module, input_shape: InputShape, *,
                    keep_fp: bool = False) -> FootprintModel:
    """The footprint model of ``model`` on the groups of
    :func:`~bnnprune.prune.graph.analyze` (raises EngineError when the C export cannot
    express the model)."""
    space = analyze(model, input_shape, keep_fp=keep_fp)
    program = _compile(model, input_shape)
    c_footprint(program)  # an op the C export cannot express fails here, before any search
    _, outs = _expressions(space, program)
    value_expr: list[Expr] = [(program.values[0].c, ())] * len(program.values)
    for op, e in zip(program.ops, outs, strict=True):
        value_expr[op.output] = e
    return FootprintModel(space, program, value_expr)


def format_budget(budget_entry: dict[str, Any]) -> list[str]:
    """A plan's ``budget`` entry as the C export's footprint table, unpruned vs pruned
    (:func:`~bnnprune.deploy.cexport.format_footprint`), and the limits it fits."""
    before, after = (Footprint(**budget_entry[k]) for k in ("before", "after"))
    limits = ", ".join(f"{k} <= {v:,} B" for k, v in budget_entry["limits"].items())
    verdict = "fits" if budget_entry["fits"] else "does not fit"
    return [*format_footprint(after, before), f"device budget {limits}: the plan {verdict}"]


def check_fit(pruned: nn.Module, input_shape: InputShape, budget: Budget) -> Footprint:
    """The C export's footprint of the ``pruned`` model, checked against ``budget`` as
    surgery checks BOPs: a plan that fits but a model that does not is a bug of the
    footprint model (RuntimeError), never a silent overrun."""
    fp = c_footprint(_compile(pruned, input_shape))
    if budget.load(fp) > 1.0:
        used = budget.used(fp)
        raise RuntimeError(
            "the pruned model's C export does not fit its plan's device budget ("
            + ", ".join(f"{k} {used[k]:,} B > {lim:,} B" for k, lim in budget.limits.items()
                        if used[k] > lim) + "): the footprint model is wrong")
    return fp
