"""A config's pruning settings read as pruning objects, and checked before anything trains.

Configs are passive data (:mod:`bnnprune.config` imports no pruning code); what their
``[prune]`` and ``[sweep]`` settings mean is decided here: which methods they name and
whether the training records the flip data those methods need (:func:`resolve_run`,
:func:`resolve_sweep`), and the plan options they set (:func:`plan_options`). Every
problem is a one-line :class:`~bnnprune.config.ConfigError` naming the key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bnnprune.config import (
    ConfigError,
    PruneConfig,
    RunConfig,
    SweepConfig,
    SweepSection,
    TrainConfig,
)
from bnnprune.prune.methods import Method, MethodError, parse_methods
from bnnprune.prune.policies import PlanOptions, check_round_to, taking
from bnnprune.prune.premise import CHOICES

__all__ = [
    "PruneSetup",
    "default_criterion",
    "default_policy",
    "device_budget",
    "plan_options",
    "require_flips",
    "resolve_prune",
    "resolve_run",
    "resolve_sweep",
    "sweep_methods",
]


@dataclass(frozen=True)
class PruneSetup:
    """The ``[prune]`` section of a ``bnnprune run`` config as pruning objects."""

    method: Method  # the chosen method
    compare: tuple[Method, ...]  # the compared methods other than the chosen one, in order
    options: PlanOptions
    max_rounds: int
    budget: Any = None  # a device budget (bnnprune.prune.budget.Budget) replacing the target

    @property
    def rounds(self) -> int:
        """Prune -> retrain rounds at most of the chosen method."""
        return self.method.policy.rounds(self.max_rounds)


def plan_options(p: PruneConfig) -> PlanOptions:
    """The plan options a prune section sets."""
    return PlanOptions(round_to=p.round_to, min_channels=p.min_channels,
                       exclude=list(p.exclude), keep_fp=p.keep_fp)


def resolve_prune(p: PruneConfig) -> PruneSetup:
    """Validate ``p`` whole: its plain values, then what needs pruning knowledge (the
    methods, channel rounding, the latency target and the policy taking it)."""
    p.validate()
    try:
        method = Method(p.policy, p.criterion)
        compare = tuple(m for m in parse_methods(p.compare, p.criterion) if m != method)
    except MethodError as e:
        raise ConfigError(f"prune: {e}") from None
    try:
        check_round_to(p.round_to)
    except ValueError as e:
        raise ConfigError(f"prune.{e}") from None
    if p.target_latency is not None:
        from bnnprune.prune.latency import check_latency_target  # the engine: only when asked

        try:
            check_latency_target(p.target_latency)
        except ValueError as e:
            raise ConfigError(f"prune.target_latency: {e}") from None
        if "latency" not in method.policy.targets:
            raise ConfigError(f"prune.target_latency needs the {taking('latency')} policy")
    return PruneSetup(method, compare, plan_options(p), p.max_rounds, device_budget(p, method))


BUDGET_KEYS = ("flash_budget", "ram_budget", "insn_budget", "mcu")  # a device budget's keys


def device_budget(p: PruneConfig, method: Method) -> Any:
    """The device budget of ``prune.flash_budget`` / ``ram_budget`` / ``insn_budget`` with
    ``mcu`` (None without any), checked with the policy that takes it and, for instructions,
    the Cortex-M toolchain and qemu (before anything trains)."""
    if all(getattr(p, k) is None for k in BUDGET_KEYS):
        return None
    from bnnprune.engine.errors import EngineError
    from bnnprune.prune.budget import device_budget as make_budget  # the C export: when asked

    try:
        budget = make_budget(p.flash_budget, p.ram_budget, p.insn_budget, p.mcu)
    except (ValueError, EngineError) as e:
        raise ConfigError(f"prune: {e}") from None
    if p.target_latency is not None:
        raise ConfigError("prune: give target_latency or a device budget (flash_budget, "
                          "ram_budget, insn_budget), not both")
    if "budget" not in method.policy.targets:
        raise ConfigError(f"prune: a device budget needs the {taking('budget')} policy, not "
                          f"{method.policy.name!r}")
    return budget


def default_policy(targeted: bool) -> str:
    """The policy ``bnnprune prune`` takes when none is named: the paper's method when no
    target is given (it needs none), else the default of ``bnnprune run``."""
    return "paper" if not targeted else PruneConfig().policy


def default_criterion(policy: str) -> str:
    """The criterion when none is named: wff with the paper policy (the paper's method), else
    the default of ``bnnprune run``."""
    return "wff" if policy == "paper" else PruneConfig().criterion


def require_flips(methods: Iterable[Method], train: TrainConfig) -> None:
    """ConfigError before anything trains when a method needs flip data that the training
    config will not record (the rule itself is :meth:`Method.require`)."""
    for m in methods:
        try:
            m.require(train.track_last >= 1, fix="set train.track_last >= 1 (--track-last K)")
        except MethodError as e:
            raise ConfigError(str(e)) from None


def resolve_run(cfg: RunConfig) -> PruneSetup:
    """Validate a ``bnnprune run`` config whole, before anything trains."""
    cfg.validate()
    setup = resolve_prune(cfg.prune)
    require_flips([setup.method, *setup.compare], cfg.train)
    return setup


def sweep_methods(s: SweepSection) -> list[Method]:
    """The methods a sweep compares, repeats dropped (ConfigError if one is misspelt)."""
    try:
        return parse_methods(s.methods)
    except MethodError as e:
        raise ConfigError(f"sweep: {e}") from None


def resolve_sweep(cfg: SweepConfig) -> list[Method]:
    """Validate a ``bnnprune sweep`` config whole, before anything trains; its methods."""
    cfg.validate()
    resolve_prune(cfg.prune)
    given = [k for k in BUDGET_KEYS if getattr(cfg.prune, k) is not None]
    if given:
        raise ConfigError(f"prune.{given[0]}: a sweep prunes to its BOPs reductions "
                          "(sweep.reductions), not to a device budget")
    s = cfg.sweep
    methods = sweep_methods(s)
    bad = [c for c in s.flip_choices if c not in CHOICES]
    if bad:
        raise ConfigError(f"unknown sweep.flip_choices {bad}; choose from {', '.join(CHOICES)}")
    for flag in ("paper_scratch", "paper_control"):
        if getattr(s, flag) and not any(m.policy.iterates for m in methods):
            raise ConfigError(f"sweep.{flag} needs the paper policy: add a paper method "
                              "(e.g. paper+wff) to sweep.methods")
    require_flips(methods, cfg.train)
    return methods
