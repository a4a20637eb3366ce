"""Channel surgery through Torch-Pruning's dependency graph (no per-model code).

Removing a group's output channels also removes the matching BatchNorm entries and the
next layers' input channels (through pooling, flatten -> linear and residual adds).
:func:`apply_plan` then checks the result: the forward pass works and keeps its output
shape, every planned layer has the planned width, and the BOPs and float MACs of
:func:`bnnprune.metrics.summarize` equal the plan's.
The model object (and its ``arch`` attribute) is kept, so ``model_from_arch(arch,
state_dict)`` rebuilds the pruned model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bnnprune.metrics import summarize
from bnnprune.prune.criteria import Criterion
from bnnprune.prune.graph import output_shape, prune_channels
from bnnprune.prune.policies import ChannelPlan
from bnnprune.prune.selection import get_criterion, select_channels
from bnnprune.prune.sensitivity import Sensitivity

__all__ = ["PruneResult", "apply_plan", "carry_flip_counts", "prune_channels"]


@dataclass
class PruneResult:
    """A pruned model and what was removed from it."""

    model: nn.Module
    plan: ChannelPlan
    criterion: str
    removed: dict[str, list[int]]  # group name -> removed output channels (original indices)
    kept_out: dict[str, list[int]]  # binary layer -> surviving output channels
    kept_in: dict[str, list[int]]  # binary layer -> surviving weight columns (dim 1)
    bops_before: int
    bops_after: int  # measured by count_bops on the pruned model

    @property
    def reduction(self) -> float:
        """Measured BOPs reduction, 1 - after / before."""
        return 1.0 - self.bops_after / self.bops_before if self.bops_before else 0.0


def _check_plan_fits(model: nn.Module, plan: ChannelPlan) -> None:
    layers = dict(model.named_modules())
    for name, width in plan.channels.items():
        m = layers.get(name)
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or int(w.shape[0]) != width:
            raise ValueError(
                f"the plan does not fit this model (layer {name!r}); make the plan for this model"
            )


def apply_plan(
    model: nn.Module,
    plan: ChannelPlan,
    criterion: str | Criterion = "wff",
    sensitivity: Sensitivity | None = None,
    *,
    inplace: bool = False,
    **criterion_kwargs: Any,
) -> PruneResult:
    """Prune ``model`` (a deep copy unless ``inplace``) to ``plan`` with ``criterion``.

    Raises ValueError if the model contains something the surgery cannot follow; with
    ``inplace=True`` the model may then be left partly pruned.
    """
    _check_plan_fits(model, plan)
    crit = get_criterion(criterion, **criterion_kwargs)
    removed = select_channels(model, plan, crit, sensitivity)
    out_shape = output_shape(model, plan.input_shape)
    pruned = model if inplace else copy.deepcopy(model)
    kept_out, kept_in = prune_channels(pruned, removed, plan.input_shape)
    try:
        new_shape = output_shape(pruned, plan.input_shape)
    except Exception as e:  # the user's forward pass after surgery
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"the pruned model no longer runs ({type(e).__name__}: {first}); it contains an "
            "operation channel surgery cannot follow"
        ) from None
    if new_shape != out_shape:
        raise ValueError(
            f"channel surgery changed the output shape {out_shape} -> {new_shape}; the model "
            "contains an operation it cannot follow"
        )
    layers = dict(pruned.named_modules())
    wrong = [n for n, k in plan.keep.items() if int(layers[n].weight.shape[0]) != k]
    summary = summarize(pruned, plan.input_shape)
    bops, macs = summary.bops, summary.float_macs
    if wrong or bops != plan.bops_after or macs != plan.float_macs_after:
        what = (f"widths of {wrong}" if wrong else f"BOPs {bops} != planned {plan.bops_after}"
                if bops != plan.bops_after
                else f"float MACs {macs} != planned {plan.float_macs_after}")
        raise ValueError(
            f"channel surgery did not produce the plan ({what}); the model contains an "
            "operation it cannot follow"
        )
    return PruneResult(
        model=pruned,
        plan=plan,
        criterion=crit.name,
        removed=removed,
        kept_out=kept_out,
        kept_in=kept_in,
        bops_before=plan.bops_before,
        bops_after=bops,
    )


def carry_flip_counts(
    per_weight: Mapping[str, torch.Tensor], result: PruneResult
) -> dict[str, torch.Tensor]:
    """Slice per-weight tensors (flip counts, previous signs) to the surviving weights."""
    out = {}
    for name, t in per_weight.items():
        if name not in result.kept_out:
            raise ValueError(f"{name!r} is not a binary layer of the pruned model")
        rows = torch.tensor(result.kept_out[name], dtype=torch.long, device=t.device)
        cols = torch.tensor(result.kept_in[name], dtype=torch.long, device=t.device)
        out[name] = t.index_select(0, rows).index_select(1, cols)
    return out
