"""Pruning policies: how many output channels each prunable group keeps.

- ``paper``: C' = round(C * (1 - p)), p the group's insensitive fraction (the paper's step 3).
- ``target``: one shot to a BOPs reduction; each group is cut by ``s * p`` of its channels,
  the common scale ``s`` found by bisection.
- ``uniform``: the same cut ratio in every group, to a BOPs reduction (width scaling).
- a latency target (``target_latency``, with a :class:`~bnnprune.prune.latency.LatencyModel`):
  the ``target`` allocation (or the ``uniform`` one) scaled until the engine's predicted
  latency is that fraction of the unpruned, on the counts the latency table allows.
- a device budget (``budget``, with a :class:`~bnnprune.prune.budget.FootprintModel`): the
  same allocations scaled until the C export's flash or RAM bytes fit the budget, as close
  below it as the search gets and never above; a budget the policy cannot reach is refused
  with its smallest reachable value.

Counts are rounded to the nearest allowed value: a multiple of ``round_to`` (in groups with
at least ``round_to`` channels) or the unchanged count; with ``round_to="auto"``, a count at
which the engine's kernels do less work than at every larger one
(:func:`~bnnprune.prune.latency.kernel_counts`). The group's p is the insensitive
share of all weights of its binary layers. Predicted BOPs are exact (see
:class:`~bnnprune.prune.graph.PruningSpace`); surgery checks them against ``count_bops``.

Each policy is a :class:`Policy` subclass in :data:`POLICIES` (:func:`register_policy` adds
one): it declares the data it needs and the targets it takes, and all share one setup from
:class:`PlanOptions`, whose defaults (:data:`DEFAULTS`, ``round_to="auto"``) are the
library's and the CLI's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from bnnprune.prune.graph import ChannelGroup, InputShape, PruningSpace, analyze
from bnnprune.prune.sensitivity import RECORD_HINT, Sensitivity

__all__ = [
    "AUTO",
    "DEFAULTS",
    "DEFAULT_TOLERANCE",
    "POLICIES",
    "ChannelPlan",
    "PlanOptions",
    "Policy",
    "check_round_to",
    "get_policy",
    "make_plan",
    "plan_manual",
    "plan_paper",
    "plan_target",
    "plan_uniform",
    "register_policy",
    "taking",
]

AUTO = "auto"  # round_to: the counts the engine's kernels pay for (prune.latency.kernel_counts)
DEFAULT_TOLERANCE = 0.01  # 1 percentage point of BOPs reduction
_BISECTION_STEPS = 40
_TOUCH_UP_STEPS = 100


@dataclass
class ChannelPlan:
    """Output channels to keep per planned layer (binary, or a full-precision producer),
    with the BOPs and float MACs they will give."""

    policy: str
    input_shape: InputShape
    groups: tuple[ChannelGroup, ...]
    keep: dict[str, int]  # planned layer -> output channels to keep (equal within a group)
    channels: dict[str, int]  # planned layer -> output channels now
    bops_before: int
    bops_after: int  # exact prediction; surgery verifies it
    float_macs_before: int = 0
    float_macs_after: int = 0  # exact prediction; surgery verifies it
    latency: dict[str, Any] | None = None  # predicted engine latency (latency targets)
    budget: dict[str, Any] | None = None  # the C export's bytes (device budgets)
    clamped: dict[str, int] = field(default_factory=dict)  # group -> count asked for (< min)
    excluded: tuple[str, ...] = ()  # groups left unchanged on request
    target: float | None = None
    tolerance: float = DEFAULT_TOLERANCE
    scale: float | None = None  # common scale (target) or cut ratio (uniform)
    round_to: int | str = 1
    min_channels: int | None = None
    round_note: str = ""  # why round_to "auto" could not apply

    @property
    def reduction(self) -> float:
        """Achieved BOPs reduction, 1 - after / before."""
        return 1.0 - self.bops_after / self.bops_before if self.bops_before else 0.0

    @property
    def reached(self) -> bool:
        """True if there is no target or the reduction is within tolerance of it (a latency
        target: the predicted ratio is at most the target plus the tolerance; a device
        budget: the bytes fit it)."""
        if self.budget is not None:
            return bool(self.budget["fits"])
        if self.latency is not None and self.latency.get("target") is not None:
            return self.latency["ratio"] <= self.latency["target"] + self.tolerance + 1e-12
        return self.target is None or abs(self.reduction - self.target) <= self.tolerance + 1e-12

    def group_keep(self) -> dict[str, int]:
        """Channels kept per group (by group name)."""
        return {g.name: self.keep[g.name] for g in self.groups}

    def notes(self) -> list[str]:
        """One line per fact a user should be told (clamps, unreachable target)."""
        lines = [
            f"{g}: the {self.policy} policy asked for {req} channel(s); "
            f"clamped to the minimum {self.keep[g]}"
            for g, req in self.clamped.items()
        ]
        if self.round_note:
            lines.append(self.round_note)
        lat = self.latency
        if self.budget is not None or self.reached:  # an unmet budget is refused, never planned
            return lines
        if lat is not None and lat.get("target") is not None:
            lines.append(
                f"target latency {lat['target']:.2f} of the unpruned not reached: the "
                f"{self.policy} policy came closest at {lat['ratio']:.3f} (predicted)"
            )
        else:
            lines.append(
                f"target BOPs reduction {self.target:.1%} not reached: the {self.policy} policy "
                f"with these options came closest at {self.reduction:.1%}"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the plan."""
        return {
            "policy": self.policy,
            "input_shape": list(self.input_shape),
            "target": self.target,
            "reduction": self.reduction,
            "reached": self.reached,
            "scale": self.scale,
            "round_to": self.round_to,
            "min_channels": self.min_channels,
            "bops_before": self.bops_before,
            "bops_after": self.bops_after,
            "float_macs_before": self.float_macs_before,
            "float_macs_after": self.float_macs_after,
            "latency": None if self.latency is None else dict(self.latency),
            "budget": None if self.budget is None else dict(self.budget),
            "layers": {n: {"before": self.channels[n], "after": self.keep[n]} for n in self.keep},
            "groups": {g.name: list(g.layers) for g in self.groups},
            "fp_producers": {g.name: list(g.consumers) for g in self.groups if g.fp_producer},
            "excluded": list(self.excluded),
            "clamped": dict(self.clamped),
            "notes": self.notes(),
        }


@dataclass(frozen=True)
class _Allowed:
    """Allowed channel counts of one group: multiples of ``step`` in [lo, C], plus C; or,
    when ``counts`` is given (a latency table's choice), exactly those counts (C included)."""

    channels: int
    step: int
    lo: int
    counts: tuple[int, ...] = ()

    @property
    def top(self) -> int:
        return self.channels // self.step * self.step

    def nearest(self, raw: float) -> int:
        """Nearest allowed count >= 0 (ties keep more channels), before the minimum applies."""
        raw = min(max(raw, 0.0), float(self.channels))
        if self.counts:
            return min(self.counts, key=lambda k: (abs(k - raw), -k))
        if raw >= (self.top + self.channels) / 2:
            return self.channels
        return min(int(math.floor(raw / self.step + 0.5)) * self.step, self.top)

    def down(self, k: int) -> int | None:
        if self.counts:
            below = [c for c in self.counts if c < k and c >= self.lo]
            return max(below) if below else None
        nxt = self.top if k == self.channels and self.top != k else k - self.step
        return nxt if nxt >= self.lo else None

    def up(self, k: int) -> int | None:
        if self.counts:
            above = [c for c in self.counts if c > k]
            return min(above) if above else None
        if k >= self.channels:
            return None
        return k + self.step if k + self.step <= self.top else self.channels


@dataclass(frozen=True)
class PlanOptions:
    """How a plan rounds and limits its counts; the library's defaults of these settings
    (``make_plan``, the ``plan_*`` functions and the CLI's ``prune`` command read them here,
    and ``PruneConfig`` is held to them by a test: config.py may not import this module)."""

    # a whole number >= 1, or AUTO: the counts the engine's kernels pay for
    round_to: int | str = AUTO
    min_channels: int | None = None  # None: at least one rounding step
    exclude: Iterable[str] = ()  # layers whose groups stay unchanged
    keep_fp: bool = False  # keep full-precision producers unpruned
    tolerance: float = DEFAULT_TOLERANCE  # of the BOPs reduction (or latency ratio) reached


DEFAULTS = PlanOptions()  # the library's plan options, as every signature below spells them


class _Planner:
    """Shared machinery of the policies: options, rounding, clamps and BOPs search."""

    def __init__(self, model: nn.Module, input_shape: InputShape, options: PlanOptions) -> None:
        round_to = check_round_to(options.round_to)
        min_channels, tolerance = options.min_channels, options.tolerance
        if min_channels is not None and (int(min_channels) != min_channels or min_channels < 1):
            raise ValueError(f"min_channels must be a whole number >= 1, got {min_channels}")
        if not 0 < tolerance < 1:
            raise ValueError(f"tolerance must lie in (0, 1), got {tolerance}")
        self.space: PruningSpace = analyze(model, input_shape, keep_fp=options.keep_fp)
        if not self.space.groups:
            raise ValueError("model has no prunable channels (no binary layer with free outputs)")
        self.round_to, self.min_channels, self.tolerance = round_to, min_channels, tolerance
        self.excluded = self._excluded(model, options.exclude)
        self.allowed = [self._allowed(g.channels) for g in self.space.groups]
        self.round_note = ""
        if round_to == AUTO:
            from bnnprune.engine.errors import EngineError
            from bnnprune.prune.latency import kernel_counts

            try:
                counts = kernel_counts(model, self.space)
            except (EngineError, ValueError) as e:
                self.round_note = (f"round_to auto: the engine cannot run this model ({e}); "
                                   "channel counts are not rounded")
            else:
                for i, c in enumerate(counts):
                    self.restrict(i, c)
        self.clamped: dict[str, int] = {}

    def _excluded(self, model: nn.Module, exclude: Iterable[str]) -> set[int]:
        exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        modules = dict(model.named_modules())
        unknown = [n for n in exclude if n not in modules]
        if unknown:
            raise ValueError(f"cannot exclude {unknown}: no such layer in the model")
        return {i for i, g in enumerate(self.space.groups) if set(g.layers) & set(exclude)}

    def restrict(self, gi: int, counts: Iterable[int]) -> None:
        """Allow group ``gi`` only ``counts`` (those at or above its minimum; its full width
        when none is)."""
        a = self.allowed[gi]
        kept = tuple(k for k in sorted(counts) if k >= a.lo) or (a.channels,)
        self.allowed[gi] = _Allowed(a.channels, 1, kept[0], kept)

    def _allowed(self, channels: int) -> _Allowed:
        step = self.round_to if isinstance(self.round_to, int) else 1
        step = step if channels >= step else 1
        want = step if self.min_channels is None else self.min_channels
        return _Allowed(channels, step, min(-(-want // step) * step, channels))

    def active(self) -> list[int]:
        return [i for i in range(len(self.space.groups)) if i not in self.excluded]

    def active_channels(self) -> list[int]:
        """The current width of each active group."""
        return [self.space.groups[i].channels for i in self.active()]

    def quantize(self, raws: Sequence[float], record: bool = False) -> list[int]:
        """Nearest allowed counts for the requested (real) counts of active groups."""
        keep = [g.channels for g in self.space.groups]
        for i, raw in zip(self.active(), raws, strict=True):
            a = self.allowed[i]
            req = a.nearest(raw)
            keep[i] = max(req, a.lo)
            if record and req < a.lo:
                self.clamped[self.space.groups[i].name] = req
        return keep

    def search(
        self, raws_at: Callable[[float], list[float]], hi: float, target: float, movable: list[int],
        cost: Callable[[list[int]], float] | None = None, cap: bool = False,
    ) -> tuple[list[int], float]:
        """Bisection on the scale; if rounding leaves the result off target by more than half
        the tolerance, a greedy touch-up moves one or two groups a step at a time.

        ``cost`` is the quantity whose reduction ``target`` is, as a fraction of the unpruned
        model's (default: BOPs); with ``cap`` (a budget: ``cost`` its largest share taken,
        ``target`` 0), a plan whose cost is above ``1 - target`` is never chosen, and of the
        others the one closest to it is."""
        if cost is None:
            def cost(keep: list[int]) -> float:
                return self.space.bops_for(keep) / self.space.bops
        goal = 1.0 - target

        def err(keep: list[int]) -> float:
            c = cost(keep)
            return (goal - c if c <= goal + 1e-12 else math.inf) if cap else abs(c - goal)

        lo_s, hi_s = 0.0, hi
        if cost(self.quantize(raws_at(hi))) > goal:
            lo_s = hi
        else:
            for _ in range(_BISECTION_STEPS):
                mid = (lo_s + hi_s) / 2
                if cost(self.quantize(raws_at(mid))) <= goal:
                    hi_s = mid
                else:
                    lo_s = mid
        scale = min((lo_s, hi_s), key=lambda s: err(self.quantize(raws_at(s))))
        keep = self.quantize(raws_at(scale), record=True)
        best = err(keep)
        for _ in range(_TOUCH_UP_STEPS):
            if best <= self.tolerance / 2:
                break
            cand = min(self._neighbours(keep, movable), key=err, default=None)
            if cand is None or err(cand) >= best:
                break
            keep, best = cand, err(cand)
        return keep, scale

    def _neighbours(self, keep: list[int], movable: list[int]) -> list[list[int]]:
        """Plans one allowed step away in one group, or in two groups at once."""
        steps = []
        for i in movable:
            for k in (self.allowed[i].down(keep[i]), self.allowed[i].up(keep[i])):
                if k is not None:
                    steps.append((i, k))
        out = []
        for a, (i, k) in enumerate(steps):
            one = keep[:i] + [k] + keep[i + 1 :]
            out.append(one)
            for j, k2 in steps[a + 1 :]:
                if j != i:
                    out.append(one[:j] + [k2] + one[j + 1 :])
        return out

    def plan(self, policy: str, keep: list[int], **extra: Any) -> ChannelPlan:
        groups = self.space.groups
        return ChannelPlan(
            policy=policy,
            input_shape=self.space.input_shape,
            groups=groups,
            keep={b: keep[i] for i, g in enumerate(groups) for b in g.planned},
            channels={b: g.channels for g in groups for b in g.planned},
            bops_before=self.space.bops,
            bops_after=self.space.bops_for(keep),
            float_macs_before=self.space.float_macs,
            float_macs_after=self.space.float_macs_for(keep),
            clamped={  # a touch-up may have lifted a group off its minimum
                g.name: req
                for i, g in enumerate(groups)
                if (req := self.clamped.get(g.name)) is not None and keep[i] == self.allowed[i].lo
            },
            excluded=tuple(groups[i].name for i in sorted(self.excluded)),
            tolerance=self.tolerance,
            round_to=self.round_to,
            min_channels=self.min_channels,
            round_note=self.round_note,
            **extra,
        )

    def group_p(self, sensitivity: Sensitivity) -> list[float]:
        """Insensitive share of all weights of each active group's binary layers (of a
        full-precision producer: of its binary consumers, whose inputs it feeds)."""
        ps = []
        for i in self.active():
            g = self.space.groups[i]
            source = g.binary or g.consumers
            missing = [b for b in source if b not in sensitivity.p]
            if missing:
                raise ValueError(
                    f"flip data does not match the model's binary layers (missing {missing}); "
                    f"{RECORD_HINT} for this model"
                )
            bad = [b for b in g.binary if len(sensitivity.channel_scores[b]) != g.channels]
            if bad:
                raise ValueError(
                    f"flip data for {bad[0]!r} covers another number of channels than the "
                    f"model's; {RECORD_HINT} for this model"
                )
            ps.append(
                sum(sensitivity.insensitive[b] for b in source)
                / sum(sensitivity.numel[b] for b in source)
            )
        return ps


def check_round_to(value: Any) -> int | str:
    """``round_to`` as a whole number >= 1 or ``"auto"`` (also as command-line text), else
    ValueError (one line)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not float(value).is_integer() or value < 1):
        raise ValueError(f"round_to must be a whole number >= 1 or {AUTO!r}, got {value!r}")
    return int(value)


def _check_target(target: float) -> float:
    if not isinstance(target, (int, float)) or not 0.0 < float(target) < 1.0:
        raise ValueError(f"target BOPs reduction must lie strictly between 0 and 1, got {target}")
    return float(target)




@dataclass(frozen=True)
class _Allocation:
    """How a policy spreads a cut over the active groups: the requested counts at scale
    ``s`` (``raws_at``), the largest useful scale and the groups a touch-up may move."""

    raws_at: Callable[[float], list[float]]
    hi: float
    movable: list[int]


class Policy:
    """A rule for how many output channels each prunable group keeps.

    Subclasses set the class attributes that say what the policy takes and needs (one
    place for these rules: configs, the CLI and :func:`make_plan` ask the policy) and
    implement :meth:`_allocation` (a cut spread over the groups, scaled to a target) or
    override :meth:`_keep` (counts without a target). Policies hold no state: two instances
    of one class are equal; :func:`register_policy` adds one to :data:`POLICIES`.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()  # "flips": p_l read from flip counts
    # (): the policy's own reduction
    targets: ClassVar[tuple[str, ...]] = ("bops", "latency", "budget")
    iterates: ClassVar[bool] = False  # prune -> retrain rounds until p_l stops decreasing

    @property
    def needs_flips(self) -> bool:
        return "flips" in self.needs

    def rounds(self, max_rounds: int) -> int:
        """Prune -> retrain rounds at most: ``max_rounds`` if the policy iterates, else 1."""
        return max_rounds if self.iterates else 1

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __str__(self) -> str:
        return self.name

    def plan(
        self,
        model: nn.Module,
        input_shape: InputShape,
        sensitivity: Sensitivity | None = None,
        target: float | None = None,
        *,
        options: PlanOptions = DEFAULTS,
        target_latency: float | None = None,
        latency_model: Any = None,
        budget: Any = None,
        footprint_model: Any = None,
    ) -> ChannelPlan:
        """The plan for ``model``: to a BOPs reduction ``target``, to a predicted latency of
        ``target_latency`` x the unpruned (with its ``latency_model``), within a device
        ``budget`` (a :class:`~bnnprune.prune.budget.Budget`, with its ``footprint_model``),
        or at the policy's own reduction; ValueError (one line) when the policy cannot take
        what it is given."""
        if budget is not None:
            if target is not None or target_latency is not None:
                raise ValueError("give a BOPs target, a latency target or a device budget, "
                                 "not two")
            if footprint_model is None:
                raise ValueError("a device budget needs a footprint model "
                                 "(bnnprune.prune.budget.footprint_model)")
            return self._plan_budget(model, input_shape, sensitivity, budget, footprint_model,
                                     options)
        if target_latency is not None:
            if target is not None:
                raise ValueError("give a BOPs target or a latency target, not both")
            if latency_model is None:
                raise ValueError("a latency target needs a latency model "
                                 "(bnnprune.prune.latency.latency_model)")
            return self._plan_latency(model, input_shape, sensitivity, target_latency,
                                      latency_model, options)
        self._require_flips(sensitivity)
        if "bops" in self.targets:
            if target is None:
                raise ValueError(f"the {self.name} policy needs a target BOPs reduction in (0, 1)")
            target = _check_target(target)
        pl = _Planner(model, input_shape, options)
        if not self.targets:
            return pl.plan(self.name, self._keep(pl, sensitivity))
        alloc = self._allocation(pl, sensitivity)
        if alloc is None:
            return pl.plan(self.name, pl.quantize(pl.active_channels()), target=target, scale=0.0)
        keep, scale = pl.search(alloc.raws_at, alloc.hi, target, alloc.movable)
        return pl.plan(self.name, keep, target=target, scale=scale)

    def _require_flips(self, sensitivity: Sensitivity | None) -> None:
        if self.needs_flips and sensitivity is None:
            raise ValueError(f"the {self.name} policy needs flip data; {RECORD_HINT}")

    def _plan_latency(self, model: nn.Module, input_shape: InputShape,
                      sensitivity: Sensitivity | None, target_latency: float,
                      latency_model: Any, options: PlanOptions) -> ChannelPlan:
        """Counts from those ``latency_model.allowed`` says buy a saving (the kernels'
        granularity, from the table), scaled until the predicted latency ratio is reached:
        the target policy scales the flip-frequency allocation, uniform one ratio."""
        from bnnprune.prune.latency import check_latency_target

        target_latency = check_latency_target(target_latency)
        if "latency" not in self.targets:
            raise ValueError(
                f"a latency target needs the {taking('latency')} policy, not {self.name!r}")
        pl = _Planner(model, input_shape, dataclasses.replace(options, round_to=1))
        lm = latency_model
        if [(g.name, g.channels) for g in lm.space.groups] != [
                (g.name, g.channels) for g in pl.space.groups]:
            raise ValueError("the latency model was built for another model or keep_fp setting")
        for i in range(len(pl.allowed)):
            pl.restrict(i, lm.allowed(i))
        self._require_flips(sensitivity)
        alloc = self._allocation(pl, sensitivity)
        if alloc is None or not alloc.movable:
            keep, scale = pl.quantize(pl.active_channels()), 0.0
        else:
            keep, scale = pl.search(alloc.raws_at, alloc.hi, 1.0 - target_latency,
                                    alloc.movable, cost=lm.ratio)
        return pl.plan(self.name, keep, scale=scale, latency=lm.report(keep, target_latency))

    def _plan_budget(self, model: nn.Module, input_shape: InputShape,
                     sensitivity: Sensitivity | None, budget: Any, fm: Any,
                     options: PlanOptions) -> ChannelPlan:
        """The policy's allocation scaled until the C export's bytes fit ``budget``: as
        close below it as the search gets, never above; ValueError naming the smallest
        reachable bytes when even the policy's deepest cut does not fit."""
        if "budget" not in self.targets:
            raise ValueError(
                f"a device budget needs the {taking('budget')} policy, not {self.name!r}")
        self._require_flips(sensitivity)
        if budget.insns is not None and (fm.insn is None or fm.insn.target != budget.mcu):
            raise ValueError(f"an instruction budget on {budget.mcu} needs a footprint model "
                             f"with {budget.mcu}'s instruction table (footprint_model(..., "
                             f"mcu={budget.mcu!r}))")
        if fm.insn is not None:  # only counts the table measured: predictions are counts
            options = dataclasses.replace(options, round_to=1)
        pl = _Planner(model, input_shape, options)
        if [(g.name, g.channels) for g in fm.space.groups] != [
                (g.name, g.channels) for g in pl.space.groups]:
            raise ValueError("the footprint model was built for another model or keep_fp "
                             "setting")
        if fm.insn is not None:
            for i, grid in enumerate(fm.insn.grids):
                pl.restrict(i, grid)
        alloc = self._allocation(pl, sensitivity)
        keep, scale = pl.quantize(pl.active_channels()), 0.0
        if budget.load(fm.usage(keep)) > 1.0:
            deepest = keep if alloc is None else pl.quantize(alloc.raws_at(alloc.hi))
            if budget.load(fm.usage(deepest)) > 1.0:
                raise ValueError(budget.refusal(self.name, fm.usage(deepest),
                                                fm.usage(fm.full)))
            assert alloc is not None

            def cost(counts: list[int]) -> float:
                return budget.load(fm.usage(counts))

            keep, scale = pl.search(alloc.raws_at, alloc.hi, 0.0, alloc.movable, cost=cost,
                                    cap=True)
        return pl.plan(self.name, keep, scale=scale, budget=fm.report(keep, budget))

    def _allocation(self, pl: _Planner, sensitivity: Sensitivity | None) -> _Allocation | None:
        """The cut to scale to a target; None: nothing to cut (every group stays)."""
        raise NotImplementedError(f"the {self.name} policy takes no target")

    def _keep(self, pl: _Planner, sensitivity: Sensitivity | None) -> list[int]:
        """Counts of a policy without a target (its own reduction)."""
        raise NotImplementedError(f"the {self.name} policy needs a target")


POLICIES: dict[str, Policy] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a :class:`Policy` subclass available by its ``name``."""
    POLICIES[cls.name] = cls()
    return cls


def taking(kind: str) -> str:
    """The registered policies that reach a ``kind`` target ("bops", "latency", "budget")
    in words:
    ``target or uniform`` (messages name them from here, not from a list of their own)."""
    names = [n for n, p in POLICIES.items() if kind in p.targets]
    return " or ".join(filter(None, (", ".join(names[:-1]), "".join(names[-1:]))))


def get_policy(name: str | Policy) -> Policy:
    """The registered policy called ``name`` (a policy is returned as it is)."""
    if isinstance(name, Policy):
        return name
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name]


@register_policy
class Paper(Policy):
    """The paper's rule (its step 3): each group keeps round(C * (1 - p)) channels."""

    name = "paper"
    needs = frozenset({"flips"})
    targets = ()
    iterates = True

    def _keep(self, pl: _Planner, sensitivity: Sensitivity | None) -> list[int]:
        assert sensitivity is not None
        ps = pl.group_p(sensitivity)
        return pl.quantize([c * (1.0 - p) for c, p in zip(pl.active_channels(), ps, strict=True)],
                           record=True)


@register_policy
class Target(Policy):
    """Groups cut by ``s * p`` of their channels (p: the insensitive share), one common
    scale ``s`` for the whole network; groups with p = 0 are never cut."""

    name = "target"
    needs = frozenset({"flips"})

    def _allocation(self, pl: _Planner, sensitivity: Sensitivity | None) -> _Allocation | None:
        assert sensitivity is not None
        ps = pl.group_p(sensitivity)
        chans = pl.active_channels()
        positive = [p for p in ps if p > 0]
        if not positive:
            return None

        def raws_at(s: float) -> list[float]:
            return [c * (1.0 - min(1.0, s * p)) for c, p in zip(chans, ps, strict=True)]

        movable = [i for i, p in zip(pl.active(), ps, strict=True) if p > 0]
        return _Allocation(raws_at, 1.0 / min(positive), movable)


@register_policy
class Uniform(Policy):
    """The same cut ratio in every group (width scaling)."""

    name = "uniform"

    def _allocation(self, pl: _Planner, sensitivity: Sensitivity | None) -> _Allocation | None:
        chans = pl.active_channels()

        def raws_at(r: float) -> list[float]:
            return [c * (1.0 - r) for c in chans]

        return _Allocation(raws_at, 1.0, pl.active())


def _options(round_to: int | str, min_channels: int | None, exclude: Iterable[str],
             keep_fp: bool, tolerance: float) -> PlanOptions:
    return PlanOptions(round_to=round_to, min_channels=min_channels, exclude=exclude,
                       keep_fp=keep_fp, tolerance=tolerance)


def plan_paper(
    model: nn.Module,
    input_shape: InputShape,
    sensitivity: Sensitivity,
    *,
    round_to: int | str = DEFAULTS.round_to,
    min_channels: int | None = DEFAULTS.min_channels,
    exclude: Iterable[str] = DEFAULTS.exclude,
    keep_fp: bool = DEFAULTS.keep_fp,
) -> ChannelPlan:
    """The paper's rule: each group keeps round(C * (1 - p)) channels."""
    opts = _options(round_to, min_channels, exclude, keep_fp, DEFAULTS.tolerance)
    return POLICIES["paper"].plan(model, input_shape, sensitivity, options=opts)


def plan_target(
    model: nn.Module,
    input_shape: InputShape,
    sensitivity: Sensitivity,
    target: float,
    *,
    round_to: int | str = DEFAULTS.round_to,
    min_channels: int | None = DEFAULTS.min_channels,
    exclude: Iterable[str] = DEFAULTS.exclude,
    keep_fp: bool = DEFAULTS.keep_fp,
    tolerance: float = DEFAULTS.tolerance,
) -> ChannelPlan:
    """Reach a BOPs reduction ``target`` in one shot, cutting groups in proportion to p.

    Groups with p = 0 are never cut; if the target cannot be reached, the plan is the
    nearest achievable one and ``plan.reached`` is False (``plan.notes()`` says so).
    """
    opts = _options(round_to, min_channels, exclude, keep_fp, tolerance)
    return POLICIES["target"].plan(model, input_shape, sensitivity, target, options=opts)


def plan_uniform(
    model: nn.Module,
    input_shape: InputShape,
    target: float,
    *,
    round_to: int | str = DEFAULTS.round_to,
    min_channels: int | None = DEFAULTS.min_channels,
    exclude: Iterable[str] = DEFAULTS.exclude,
    keep_fp: bool = DEFAULTS.keep_fp,
    tolerance: float = DEFAULTS.tolerance,
) -> ChannelPlan:
    """Cut every group by the same ratio, found by bisection to reach ``target``."""
    opts = _options(round_to, min_channels, exclude, keep_fp, tolerance)
    return POLICIES["uniform"].plan(model, input_shape, None, target, options=opts)


def plan_manual(model: nn.Module, input_shape: InputShape, keep: Mapping[str, int],
                keep_fp: bool = False) -> ChannelPlan:
    """A plan from explicit counts (layer -> channels); a group takes its layers' count.

    Counts below 1 are clamped to 1 and recorded; conflicting counts within a group or
    counts above the current width raise ValueError.
    """
    pl = _Planner(model, input_shape, PlanOptions(round_to=1, keep_fp=keep_fp))
    group_of = pl.space.group_of()
    unknown = sorted(n for n in keep if n not in group_of)
    if unknown:
        raise ValueError(
            f"no prunable output channels in {unknown}; prunable layers: {sorted(group_of)}"
        )
    counts = [g.channels for g in pl.space.groups]
    asked: dict[str, int] = {}
    for name, k in keep.items():
        g = group_of[name]
        if g.name in asked and asked[g.name] != int(k):
            raise ValueError(f"layers of group {list(g.layers)} must keep the same channel count")
        if int(k) > g.channels:
            raise ValueError(f"{name!r} has {g.channels} channels; cannot keep {k}")
        asked[g.name] = int(k)
    for i, g in enumerate(pl.space.groups):
        if g.name in asked:
            counts[i] = max(asked[g.name], 1)
            if asked[g.name] < 1:
                pl.clamped[g.name] = asked[g.name]
    return pl.plan("manual", counts)


def make_plan(
    model: nn.Module,
    input_shape: InputShape,
    policy: str | Policy = "paper",
    *,
    sensitivity: Sensitivity | None = None,
    target: float | None = None,
    round_to: int | str = DEFAULTS.round_to,
    min_channels: int | None = DEFAULTS.min_channels,
    exclude: Iterable[str] = DEFAULTS.exclude,
    keep_fp: bool = DEFAULTS.keep_fp,
    tolerance: float = DEFAULTS.tolerance,
    target_latency: float | None = None,
    latency_model: Any = None,
) -> ChannelPlan:
    """The plan of a policy given by name (``paper``, ``target`` or ``uniform``, see
    :data:`POLICIES`); with ``target_latency`` (and its ``latency_model``) to a predicted
    engine latency instead of a BOPs reduction."""
    opts = _options(round_to, min_channels, exclude, keep_fp, tolerance)
    return get_policy(policy).plan(model, input_shape, sensitivity, target, options=opts,
                                   target_latency=target_latency, latency_model=latency_model)
