"""Which criterion a name means, and which channels it removes from a plan.

A criterion is named by its registered name (``wff``, ``magnitude``, ...), by ``tp:NAME``
(a Torch-Pruning importance) or by an import path ``pkg.module:Class``. One ordering
convention holds everywhere: lower importance = pruned first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from bnnprune.prune.criteria import CRITERIA, Criterion
from bnnprune.prune.interop import criterion_from_spec, gradient_batches
from bnnprune.prune.policies import ChannelPlan
from bnnprune.prune.sensitivity import Sensitivity

__all__ = ["check_criterion", "get_criterion", "select_channels", "with_gradient_data"]


def get_criterion(criterion: str | Criterion, **kwargs: Any) -> Criterion:
    """A criterion instance (kwargs go to its constructor) from a registered name, from
    ``tp:NAME`` (a Torch-Pruning importance: taylor, lamp, magnitude, ...) or from an import
    path ``pkg.module:Class`` (a :class:`Criterion` or a Torch-Pruning ``Importance``)."""
    if isinstance(criterion, Criterion):
        return criterion
    if criterion in CRITERIA:
        return CRITERIA[criterion](**kwargs)
    if ":" in criterion:
        return criterion_from_spec(criterion, **kwargs)
    raise ValueError(
        f"unknown criterion {criterion!r}; choose from {', '.join(sorted(CRITERIA))}, "
        "tp:NAME (a Torch-Pruning importance) or pkg.module:Class"
    )


def check_criterion(criterion: str) -> None:
    """Raise ValueError unless ``criterion`` names a usable criterion (see get_criterion)."""
    get_criterion(criterion)


def select_channels(
    model: nn.Module,
    plan: ChannelPlan,
    criterion: str | Criterion = "wff",
    sensitivity: Sensitivity | None = None,
    **criterion_kwargs: Any,
) -> dict[str, list[int]]:
    """Group name -> output channel indices to remove so the group keeps its planned count."""
    crit = get_criterion(criterion, **criterion_kwargs)
    removed: dict[str, list[int]] = {}
    keep: Mapping[str, int] = plan.group_keep()
    with crit.scoring(model, plan.input_shape):
        for g in plan.groups:
            n_remove = g.channels - keep[g.name]
            if n_remove > 0:
                removed[g.name] = crit.choose(model, g, n_remove, sensitivity)
    return removed


def with_gradient_data(criterion: str | Criterion, ds: Any = None, **kwargs: Any) -> Criterion:
    """``criterion`` as an instance (kwargs go to its constructor); one that needs gradients
    (e.g. ``tp:taylor``) holds a few training batches of ``ds`` to compute them on."""
    crit = get_criterion(criterion, **kwargs)
    if crit.needs_grads and ds is not None:
        crit.use_data(gradient_batches(ds))  # type: ignore[attr-defined]
    return crit
