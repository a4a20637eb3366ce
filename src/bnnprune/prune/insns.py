"""The planner's view of a Cortex-M core: channel counts per group -> instructions per inference.

The C export of the program at candidate channel counts
(:func:`~bnnprune.engine.latency.program_at`) runs on the target's emulated board, and the
project's qemu plugin splits each inference by layer function (:func:`~bnnprune.deploy.mcu
.count_ops`): a phase's instructions depend only on its layer's shapes, so one firmware run
measures every layer at once. The candidate counts of a group are multiples of ``step`` and
its width; runs are chosen so that every layer sees every pair of its input and output
candidates (groups that meet in a layer get different colours, and every pair of colours
runs every pair of grid indices). The plan may use only those counts, so a prediction is
always a measured sum, never an interpolation (instruction counts under emulation, not
cycles).

Measurements are cached like the latency table: one JSON file per target and toolchain
(``<cache>/mcu/<target>.json``, keyed by the compiler's and qemu's versions, the target's
flags and the C sources), entries keyed by a phase's op geometry and channel counts.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bnnprune.deploy.mcu import (
    count_ops,
    get_target,
    layer_functions,
    require_tools,
    toolchain_version,
)
from bnnprune.engine.latency import LatencyCache, _signature, cache_root, program_at
from bnnprune.prune.channels import (
    Expr,
    channels_at,
    compile_eval,
    op_expressions,
    value_expressions,
)
from bnnprune.prune.graph import InputShape, PruningSpace, analyze

__all__ = ["DEFAULT_INSN_STEP", "InsnTable", "insn_cache_path", "insn_table"]

# candidate counts: multiples of 16 channels (half a 32-bit core's word); a finer step buys
# closer plans for firmware runs that grow as the square of a group's candidates
DEFAULT_INSN_STEP = 16


def insn_cache_path(target: str, cache_dir: str | Path | None = None) -> Path:
    """The instruction cache file of ``target``."""
    return Path(cache_dir if cache_dir is not None else cache_root() / "mcu") / f"{target}.json"


@dataclass(frozen=True)
class _Phase:
    """One layer function's phase: its op, the function-less ops after it, and the channel
    expressions its count depends on (input and output of the layer's op)."""

    ops: tuple[int, ...]
    signature: str
    in_expr: Expr
    out_expr: Expr

    def key(self, removed: Sequence[int]) -> str:
        ins, outs = channels_at(self.in_expr, removed), channels_at(self.out_expr, removed)
        return f"{self.signature}|{ins}|{outs}"


@dataclass
class InsnTable:
    """Measured instructions per inference of a model on ``target`` at the counts of
    ``grids`` (per group), by layer phase."""

    space: PruningSpace
    target: str
    phases: list[_Phase]
    grids: list[list[int]]
    prologue: int
    entries: dict[str, float]
    runs: int  # firmware runs this build needed (0: every entry came from the cache)
    cache_file: str

    @property
    def full(self) -> list[int]:
        return [g.channels for g in self.space.groups]

    def insns(self, keep: Sequence[int]) -> int:
        """Instructions per inference at ``keep`` channels per group (counts of ``grids``
        only: ValueError otherwise)."""
        off = [(g.name, k) for g, k, grid in zip(self.space.groups, keep, self.grids,
                                                  strict=True) if k not in grid]
        if off:
            raise ValueError(f"no instruction count measured at {off}: the table holds "
                             "multiples of its step and each group's width")
        removed = [g.channels - k for g, k in zip(self.space.groups, keep, strict=True)]
        return self.prologue + sum(int(self.entries[p.key(removed)]) for p in self.phases)


def _phases(program: Any, space: PruningSpace, has_fn: Sequence[bool]) -> list[_Phase]:
    """The layer phases of ``program`` (``has_fn``: which ops have a layer function); a
    phase whose function-less ops follow other groups than its layer's cannot be tabled."""
    ins, outs = op_expressions(space, program)
    phases: list[_Phase] = []
    for i in range(len(program.ops)):
        if has_fn[i]:
            phases.append(_Phase((i,), _signature(program, i), ins[i], outs[i]))
            continue
        if not phases:
            raise ValueError(f"op {program.ops[i].name or program.ops[i].kind!r} runs before "
                             "any layer function: its instructions cannot be tabled")
        p = phases[-1]
        if {ins[i], outs[i]} - {p.in_expr, p.out_expr}:
            raise ValueError(f"op {program.ops[i].name or program.ops[i].kind!r} changes "
                             "channels outside a layer function: its instructions cannot be "
                             "tabled")
        phases[-1] = _Phase((*p.ops, i), p.signature + "+" + _signature(program, i),
                            p.in_expr, p.out_expr)
    for p in phases:
        for e in (p.in_expr, p.out_expr):
            if len(e[1]) > 1 or any(c != 1 for _, c in e[1]):
                raise ValueError("a layer whose channels add up several pruning groups (a "
                                 "concatenation) cannot be tabled yet")
    return phases


def _colours(n_groups: int, phases: list[_Phase]) -> list[int]:
    """A colour per group, different for two groups that meet in one layer (greedy)."""
    meet: list[set[int]] = [set() for _ in range(n_groups)]
    for p in phases:
        gi, go = [e[1][0][0] if e[1] else None for e in (p.in_expr, p.out_expr)]
        if gi is not None and go is not None and gi != go:
            meet[gi].add(go)
            meet[go].add(gi)
    colour: list[int] = []
    for g in range(n_groups):
        used = {colour[o] for o in meet[g] if o < g}
        colour.append(next(c for c in itertools.count() if c not in used))
    return colour


def _runs(grids: list[list[int]], colour: list[int]) -> list[list[int]]:
    """Channel counts per group of the firmware runs: for every pair of colours, every pair
    of grid indices (clamped to each group's grid), the other groups whole."""
    n_col = max(colour) + 1
    pairs = list(itertools.combinations(range(n_col), 2)) or [(0, 0)]
    out: dict[tuple[int, ...], None] = {}
    for a, b in pairs:
        n_a = max(len(g) for g, c in zip(grids, colour, strict=True) if c == a)
        n_b = max(len(g) for g, c in zip(grids, colour, strict=True) if c == b)
        for ia, ib in itertools.product(range(n_a), range(n_b)):
            keep = []
            for g, c in zip(grids, colour, strict=True):
                idx = ia if c == a else ib if c == b else len(g) - 1
                keep.append(g[min(idx, len(g) - 1)])
            out[tuple(keep)] = None
    return [list(k) for k in out]


def insn_table(model: nn.Module, input_shape: InputShape, target: str, *,
               step: int = DEFAULT_INSN_STEP, keep_fp: bool = False,
               cache_dir: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> InsnTable:
    """Build (or read from the cache) the instruction table of ``model`` on the Cortex-M
    ``target`` (EngineError: unknown target, missing tools, or a model the C export cannot
    express; ValueError: a model whose layers cannot be tabled)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a whole number >= 1, got {step!r}")
    t = get_target(target)
    require_tools()
    space = analyze(model, input_shape, keep_fp=keep_fp)
    program = compile_eval(model, input_shape)
    value_expr = value_expressions(space, program)
    store = LatencyCache(insn_cache_path(target, cache_dir),
                         fingerprint=f"mcu:{target}:{toolchain_version(t)}")
    fns = layer_functions(program)
    phases = _phases(program, space, [i in fns for i in range(len(program.ops))])
    full = [g.channels for g in space.groups]
    grids = [sorted({*range(step, c, step), c}) for c in full]
    prologue_key = f"prologue:{_signature(program, 0)}"

    def missing(keep: list[int]) -> bool:
        removed = [c - k for c, k in zip(full, keep, strict=True)]
        return any(p.key(removed) not in store.entries for p in phases)

    todo = [k for k in _runs(grids, _colours(len(full), phases)) if missing(k)]
    if prologue_key not in store.entries and full not in todo:
        todo.insert(0, full)
    for runs, keep in enumerate(todo, 1):
        removed = [c - k for c, k in zip(full, keep, strict=True)]
        measured = count_ops(program_at(program, [channels_at(e, removed) for e in value_expr]), t)
        if [i for i, n in enumerate(measured.ops) if n is not None] != sorted(fns):
            raise ValueError("the firmware's layer functions are not the export's")
        store.entries[prologue_key] = max(store.entries.get(prologue_key, 0.0),
                                          float(measured.prologue))
        for p in phases:
            store.entries[p.key(removed)] = float(sum(measured.ops[i] or 0 for i in p.ops))
        if progress is not None:
            progress(f"instruction table ({target}): firmware run {runs} of {len(todo)}")
    runs = len(todo)
    if runs or store.rebuilt:
        store.save()
    return InsnTable(space, target, phases, grids, int(store.entries[prologue_key]),
                     dict(store.entries), runs, str(store.path))
