"""One pruning step, the way every caller takes it: criterion -> plan -> surgery -> (fresh init).

``bnnprune prune``, each round of ``bnnprune run`` and its comparisons, and every sweep cell
prune through :func:`prune_once`, so a method means the same thing everywhere::

    plan, pruned = prune_once(model, parse_method("target+wff"), (3, 32, 32),
                              sensitivity=sens, target=0.4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from torch import nn

from bnnprune.config import PruneConfig
from bnnprune.flips import FlipTracker
from bnnprune.prune.graph import InputShape
from bnnprune.prune.methods import Method
from bnnprune.prune.policies import DEFAULTS, ChannelPlan, PlanOptions
from bnnprune.prune.selection import with_gradient_data
from bnnprune.prune.sensitivity import DEFAULT_THRESHOLD, Sensitivity, compute_sensitivity
from bnnprune.prune.surgery import apply_plan
from bnnprune.seeding import seed_everything

__all__ = ["INSN_REPLANS", "Pruned", "prune_once", "prune_trained", "reinit"]

INSN_REPLANS = 2  # plans again when the pruned model's counted instructions miss the budget


class Pruned(NamedTuple):
    """What :func:`prune_once` returns: the plan and the pruned copy of the model."""

    plan: ChannelPlan
    model: nn.Module


def reinit(model: nn.Module) -> None:
    """Fresh initialisation of every sub-module (retraining from scratch)."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()


def prune_once(
    model: nn.Module,
    method: Method,
    input_shape: InputShape,
    *,
    sensitivity: Sensitivity | None = None,
    target: float | None = None,
    options: PlanOptions = DEFAULTS,
    target_latency: float | None = None,
    latency_model: Any = None,
    budget: Any = None,
    footprint_model: Any = None,
    seed: int = 0,
    data: Any = None,
    from_scratch: bool = False,
) -> Pruned:
    """Plan ``model`` with ``method``'s policy (to a BOPs reduction ``target``, to
    ``target_latency`` on ``latency_model``, within a device ``budget`` on
    ``footprint_model``, or at the policy's own reduction) and cut it
    with its criterion: a copy, ``model`` is left as it is.

    ``seed`` seeds the ``random`` criterion and, with ``from_scratch``, the fresh weights
    (they depend on the seed, not on what ran before); ``data`` (a Dataset) gives a
    criterion that needs gradients (e.g. ``tp:taylor``) a few training batches.
    """
    kwargs = {"seed": seed} if method.criterion == "random" else {}
    criterion = with_gradient_data(method.criterion, data, **kwargs)
    goal = budget
    for attempt in range(INSN_REPLANS + 1):
        plan = method.policy.plan(model, input_shape, sensitivity, target, options=options,
                                  target_latency=target_latency, latency_model=latency_model,
                                  budget=goal, footprint_model=footprint_model)
        pruned = apply_plan(model, plan, criterion, sensitivity).model
        if budget is None:
            break
        from bnnprune.prune.budget import OverBudget, check_fit

        try:  # the export's cost, as surgery checks the BOPs
            check_fit(pruned, input_shape, budget)
            break
        except OverBudget as e:
            # instructions depend a little on the weights (branches of float layers), which
            # the table measured random: plan again below by the overrun; bytes never do
            if set(e.over) != {"insns"} or attempt == INSN_REPLANS:
                raise
            goal = dataclasses.replace(goal, insns=goal.insns - e.over["insns"])
    if from_scratch:
        seed_everything(seed)
        reinit(pruned)
    return Pruned(plan, pruned)


def prune_trained(
    model: nn.Module,
    flips: FlipTracker | Mapping[str, Any] | None,
    method: Method,
    input_shape: InputShape,
    *,
    target: float | None = None,
    target_latency: float | None = None,
    budget: Any = None,
    options: PlanOptions = DEFAULTS,
    threshold: int = DEFAULT_THRESHOLD,
    latency_batch: int = PruneConfig.latency_batch,
    latency_threads: int = PruneConfig.latency_threads,
    seed: int = 0,
    data: Any = None,
    progress: Callable[[str], None] | None = None,
) -> Pruned:
    """:func:`prune_once` on a trained model as ``bnnprune prune`` takes it: its flip data
    (a FlipTracker or its state; read only when ``method`` needs flips) becomes the sensitivity at
    ``threshold``, a ``target_latency`` gets the engine's latency tables at
    ``latency_batch`` images and ``latency_threads`` threads (``progress`` hears of them), and
    a device ``budget`` (:class:`~bnnprune.prune.budget.Budget`) the C export's footprint
    (and, for an instruction budget, its target's instruction table)."""
    sens = None
    if method.needs_flips:
        sens = compute_sensitivity({} if flips is None else flips, model, threshold=threshold)
    lm = None
    if target_latency is not None:
        from bnnprune.prune.latency import latency_model  # the engine: only when asked

        lm = latency_model(model, input_shape, batch=latency_batch, threads=latency_threads,
                           keep_fp=options.keep_fp, progress=progress)
    fm = None
    if budget is not None:
        from bnnprune.prune.budget import footprint_model  # the C export: only when asked

        fm = footprint_model(model, input_shape, keep_fp=options.keep_fp, mcu=budget.mcu,
                             progress=progress)
    return prune_once(model, method, input_shape, sensitivity=sens, target=target,
                      options=options, target_latency=target_latency, latency_model=lm,
                      budget=budget, footprint_model=fm, seed=seed, data=data)
