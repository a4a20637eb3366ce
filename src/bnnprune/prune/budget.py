"""The planner's view of a device budget: channel counts per group -> the C export's cost.

A budget caps the flash (the export's const data, ``MODEL_FLASH_BYTES``) or the RAM (its
scratch arena, ``MODEL_SCRATCH_BYTES``) of the pruned model's C export, or its instructions
per inference on a named Cortex-M core (counted under emulation, not cycles). The bytes at
any channel counts come from the export itself (:func:`~bnnprune.deploy.cexport.c_footprint`
of the program at those counts, :func:`~bnnprune.engine.latency.program_at`), so they are
exact for the layout the export will write: no second formula; the instructions come from
the target's measured table (:mod:`bnnprune.prune.insns`). A plan keeps the most channels
whose cost fits; a budget below what the policy can reach is refused with that value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bnnprune.deploy.cexport import Footprint, c_footprint, format_footprint
from bnnprune.engine.latency import program_at
from bnnprune.prune.channels import Expr, channels_at, compile_eval, value_expressions
from bnnprune.prune.graph import InputShape, PruningSpace, analyze

__all__ = ["BUDGET_KINDS", "Budget", "FootprintModel", "OverBudget", "check_budget",
           "check_fit", "footprint_model", "format_budget", "usage_of"]

# budget kind -> (what it counts, its unit)
BUDGET_KINDS = {"flash": ("of const data", "B"), "ram": ("of scratch arena", "B"),
                "insns": ("per inference", "instructions")}

Usage = Mapping[str, int]  # budget kind -> what a model takes of it


def usage_of(fp: Footprint, insns: int | None = None) -> dict[str, int]:
    """A footprint (and instructions per inference, when counted) as budget kind -> amount."""
    out = {"flash": int(fp.flash_bytes), "ram": int(fp.ram_bytes)}
    return out if insns is None else {**out, "insns": int(insns)}


class OverBudget(RuntimeError):
    """A pruned model measured over its plan's budget; ``over``: kind -> amount above."""

    def __init__(self, message: str, over: dict[str, int]) -> None:
        super().__init__(message)
        self.over = over


@dataclass(frozen=True)
class Budget:
    """At most ``flash`` bytes of const data and ``ram`` bytes of scratch arena in the C
    export, and ``insns`` instructions per inference on the Cortex-M core ``mcu`` (None:
    that one is free; at least one is given)."""

    flash: int | None = None
    ram: int | None = None
    insns: int | None = None
    mcu: str | None = None

    def __post_init__(self) -> None:
        if self.flash is None and self.ram is None and self.insns is None:
            raise ValueError("a device budget needs a flash or a RAM budget in bytes or an "
                             "instruction budget")
        for kind in BUDGET_KINDS:
            if getattr(self, kind) is not None:
                object.__setattr__(self, kind, check_budget(getattr(self, kind), kind))
        if (self.insns is None) != (self.mcu is None):
            raise ValueError("an instruction budget and its Cortex-M target go together "
                             "(--insn-budget with --mcu)")
        if self.mcu is not None:
            from bnnprune.deploy.mcu import get_target

            get_target(self.mcu)  # EngineError naming the known targets

    @property
    def limits(self) -> dict[str, int]:
        """Budget kind -> bytes, for the kinds given."""
        return {k: v for k in BUDGET_KINDS if (v := getattr(self, k)) is not None}

    def used(self, usage: Usage) -> dict[str, int]:
        """What a model takes of each kind given (``usage``: :func:`usage_of`)."""
        return {k: int(usage[k]) for k in self.limits}

    def load(self, usage: Usage) -> float:
        """The largest share of a budget the usage takes (<= 1: it fits)."""
        used = self.used(usage)
        return max(used[k] / lim for k, lim in self.limits.items())

    def describe(self, kind: str) -> str:
        """``flash budget 40,000 B`` / ``insns budget 5,000,000 instructions on cortex-m4``."""
        on = f" on {self.mcu}" if kind == "insns" else ""
        return f"{kind} budget {self.limits[kind]:,} {BUDGET_KINDS[kind][1]}{on}"

    def refusal(self, policy: str, least: Usage, unpruned: Usage) -> str:
        """Why the policy's deepest cut ``least`` misses the budget, with the smallest
        reachable value of each budget it misses."""
        used, full = self.used(least), self.used(unpruned)
        return "; ".join(
            f"{self.describe(k)} cannot be met: the {policy} policy reaches at least "
            f"{used[k]:,} {BUDGET_KINDS[k][1]} {BUDGET_KINDS[k][0]} (unpruned "
            f"{full[k]:,} {BUDGET_KINDS[k][1]})" for k, lim in self.limits.items()
            if used[k] > lim)


def check_budget(value: Any, kind: str = "flash") -> int:
    """A budget as a whole number >= 1 (also from command-line text), else ValueError."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not float(value).is_integer() or value < 1):
        unit = "instructions" if kind == "insns" else "bytes"
        raise ValueError(f"{kind} budget must be a whole number of {unit} >= 1, got {value!r}")
    return int(value)


@dataclass
class FootprintModel:
    """The C export's footprint of a model as a function of the channels kept per group,
    and with ``insn`` (:class:`~bnnprune.prune.insns.InsnTable`) its instructions per
    inference on one Cortex-M core."""

    space: PruningSpace
    program: Any  # the unpruned engine program
    value_expr: list[Expr]  # per program value: its channels
    insn: Any = None  # the instruction table, when an instruction budget is planned
    _memo: dict[tuple[int, ...], Footprint] = field(default_factory=dict, repr=False)

    @property
    def full(self) -> list[int]:
        return [g.channels for g in self.space.groups]

    def footprint(self, keep: Sequence[int]) -> Footprint:
        """Flash and RAM bytes of the export at ``keep`` channels per group."""
        key = tuple(int(k) for k in keep)
        if key not in self._memo:
            removed = [g.channels - k for g, k in zip(self.space.groups, key, strict=True)]
            counts = [channels_at(e, removed) for e in self.value_expr]
            self._memo[key] = c_footprint(program_at(self.program, counts))
        return self._memo[key]

    def usage(self, keep: Sequence[int]) -> dict[str, int]:
        """Bytes (and instructions, with a table) at ``keep`` channels per group."""
        return usage_of(self.footprint(keep), None if self.insn is None else
                        self.insn.insns(keep))

    def report(self, keep: Sequence[int], budget: Budget) -> dict[str, Any]:
        """The ``budget`` entry of a plan."""
        before, after = self.footprint(self.full), self.footprint(keep)
        out = {"limits": budget.limits, "before": before.to_dict(), "after": after.to_dict(),
               "fits": budget.load(self.usage(keep)) <= 1.0}
        if self.insn is not None:
            out["insns"] = {"target": self.insn.target, "before": self.insn.insns(self.full),
                            "after": self.insn.insns(keep), "cache_file": self.insn.cache_file}
        return out


def footprint_model(model: nn.Module, input_shape: InputShape, *, keep_fp: bool = False,
                    mcu: str | None = None, insn_step: int | None = None,
                    progress: Callable[[str], None] | None = None) -> FootprintModel:
    """The footprint model of ``model`` on the groups of
    :func:`~bnnprune.prune.graph.analyze`, with the instruction table of the Cortex-M core
    ``mcu`` when one is named (:func:`~bnnprune.prune.insns.insn_table`, at multiples of
    ``insn_step`` channels; ``progress`` hears of its firmware runs). Raises EngineError
    when the C export cannot express the model."""
    space = analyze(model, input_shape, keep_fp=keep_fp)
    program = compile_eval(model, input_shape)
    c_footprint(program)  # an op the C export cannot express fails here, before any search
    table = None
    if mcu is not None:
        from bnnprune.prune.insns import DEFAULT_INSN_STEP, insn_table

        table = insn_table(model, input_shape, mcu, keep_fp=keep_fp, progress=progress,
                           step=DEFAULT_INSN_STEP if insn_step is None else insn_step)
    return FootprintModel(space, program, value_expressions(space, program), table)


def format_budget(budget_entry: dict[str, Any]) -> list[str]:
    """A plan's ``budget`` entry as the C export's footprint table, unpruned vs pruned
    (:func:`~bnnprune.deploy.cexport.format_footprint`), and the limits it fits."""
    before, after = (Footprint(**budget_entry[k]) for k in ("before", "after"))
    limits = ", ".join(f"{k} <= {v:,} {BUDGET_KINDS[k][1]}"
                       for k, v in budget_entry["limits"].items())
    verdict = "fits" if budget_entry["fits"] else "does not fit"
    lines = format_footprint(after, before)
    if (ins := budget_entry.get("insns")) is not None:
        lines.append(f"instructions per inference on {ins['target']} (counted under qemu "
                     f"emulation, not cycles): {ins['before']:,} -> {ins['after']:,} "
                     f"({ins['after'] / ins['before']:.1%})")
    return [*lines, f"device budget {limits}: the plan {verdict}"]


def check_fit(pruned: nn.Module, input_shape: InputShape, budget: Budget) -> dict[str, int]:
    """The C export's footprint of the ``pruned`` model (and, with an instruction budget,
    its instructions per inference counted under qemu), checked against ``budget`` as
    surgery checks BOPs: a plan that fits but a model that does not raises
    :class:`OverBudget`, never a silent overrun. Returns the usage."""
    program = compile_eval(pruned, input_shape)
    insns = None
    if budget.insns is not None:
        from bnnprune.deploy.mcu import count_ops, get_target

        insns = count_ops(program, get_target(str(budget.mcu))).total
    used = budget.used(usage_of(c_footprint(program), insns))
    over = {k: used[k] - lim for k, lim in budget.limits.items() if used[k] > lim}
    if over:
        raise OverBudget(
            "the pruned model's C export does not fit its plan's device budget ("
            + ", ".join(f"{k} {used[k]:,} {BUDGET_KINDS[k][1]} > {budget.limits[k]:,} "
                        f"{BUDGET_KINDS[k][1]}" for k in over) + "): the footprint model is wrong",
            over)
    return used


def device_budget(flash: int | None = None, ram: int | None = None, insns: int | None = None,
                  mcu: str | None = None) -> Budget | None:
    """The :class:`Budget` of these limits (None when none is given, :class:`Budget`'s
    ValueError for an ``mcu`` alone); an instruction budget
    needs the Cortex-M toolchain and qemu, checked now, before its table's firmware runs.
    ValueError or EngineError (one line) on a bad value or a missing tool."""
    if flash is None and ram is None and insns is None and mcu is None:
        return None
    budget = Budget(flash=flash, ram=ram, insns=insns, mcu=mcu)
    if budget.insns is not None:
        from bnnprune.deploy.mcu import require_tools

        require_tools()
    return budget
