"""Flip-frequency-guided channel pruning: sensitivity -> plan -> channel choice -> surgery.

Typical use::

    sens = compute_sensitivity(tracker, model)                 # or tracker.state_dict()
    plan = make_plan(model, (3, 32, 32), "target", sensitivity=sens, target=0.4, round_to=32)
    result = apply_plan(model, plan, "wff", sens)              # result.model is pruned
    # or both steps at once, as the CLI, run and sweep do:
    plan, pruned = prune_once(model, parse_method("target+wff"), (3, 32, 32),
                              sensitivity=sens, target=0.4)

Criteria follow Torch-Pruning's convention (lower importance = pruned): ``WFFImportance``
and friends plug into Torch-Pruning's pruners, and ``"tp:lamp"``-style names bring its
importances here (:mod:`bnnprune.prune.interop`).
"""

from bnnprune.prune.criteria import (
    CRITERIA,
    WFF,
    BNScale,
    Criterion,
    FlipMagnitude,
    Magnitude,
    Random,
    register_criterion,
)
from bnnprune.prune.graph import ChannelGroup, PruningSpace, analyze, check_supported
from bnnprune.prune.interop import (
    BNScaleImportance,
    CriterionImportance,
    MagnitudeImportance,
    RandomImportance,
    TorchPruningCriterion,
    WFFImportance,
)
from bnnprune.prune.methods import Method, MethodError, parse_method, parse_methods
from bnnprune.prune.once import Pruned, prune_once, prune_trained, reinit
from bnnprune.prune.policies import (
    DEFAULT_TOLERANCE,
    DEFAULTS,
    POLICIES,
    ChannelPlan,
    PlanOptions,
    Policy,
    get_policy,
    make_plan,
    plan_manual,
    plan_paper,
    plan_target,
    plan_uniform,
    register_policy,
)
from bnnprune.prune.selection import (
    check_criterion,
    get_criterion,
    select_channels,
    with_gradient_data,
)
from bnnprune.prune.sensitivity import (
    DEFAULT_THRESHOLD,
    RECORD_HINT,
    FlipTable,
    Sensitivity,
    check_flip_data,
    compute_sensitivity,
    flip_frequencies,
    flip_table,
)
from bnnprune.prune.surgery import PruneResult, apply_plan, carry_flip_counts, prune_channels

__all__ = [
    "CRITERIA",
    "DEFAULT_THRESHOLD",
    "DEFAULTS",
    "DEFAULT_TOLERANCE",
    "POLICIES",
    "RECORD_HINT",
    "WFF",
    "FlipMagnitude",
    "FlipTable",
    "flip_table",
    "with_gradient_data",
    "BNScale",
    "BNScaleImportance",
    "ChannelGroup",
    "Criterion",
    "CriterionImportance",
    "Magnitude",
    "Method",
    "MethodError",
    "MagnitudeImportance",
    "ChannelPlan",
    "PlanOptions",
    "Policy",
    "PruneResult",
    "Pruned",
    "PruningSpace",
    "Random",
    "RandomImportance",
    "Sensitivity",
    "TorchPruningCriterion",
    "WFFImportance",
    "analyze",
    "apply_plan",
    "carry_flip_counts",
    "check_criterion",
    "check_flip_data",
    "check_supported",
    "compute_sensitivity",
    "flip_frequencies",
    "get_criterion",
    "get_policy",
    "make_plan",
    "parse_method",
    "parse_methods",
    "plan_manual",
    "plan_paper",
    "plan_target",
    "plan_uniform",
    "prune_channels",
    "prune_once",
    "prune_trained",
    "register_criterion",
    "register_policy",
    "reinit",
    "select_channels",
]
