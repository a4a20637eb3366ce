"""Channel-choice criteria: which filters go, checked against the surviving weights."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d
from bnnprune.prune import (
    CRITERIA,
    ChannelGroup,
    Criterion,
    PruneResult,
    Sensitivity,
    apply_plan,
    compute_sensitivity,
    get_criterion,
    plan_manual,
    plan_target,
    register_criterion,
)

SHAPE = (3, 8, 8)


def net() -> nn.Module:
    """Binary conv '2' (6 filters of 4x3x3) -> BN '3' -> binary conv '4' -> fp classifier."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
        BinaryConv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6),
        BinaryConv2d(6, 5, 3, padding=1), nn.BatchNorm2d(5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip


def counts_with_scores(model: nn.Module, scores: list[float], steps: int = 10) -> dict:
    """Every weight of filter c of layer '2' flips scores[c] * steps times; '4' never flips."""
    w2, w4 = model[2].weight, model[4].weight
    c2 = (torch.tensor(scores) * steps).round().to(torch.int32).view(-1, 1, 1, 1).expand_as(w2)
    return {"2": c2.contiguous(), "4": torch.zeros_like(w4, dtype=torch.int32)}


def prune_three(
    model: nn.Module, criterion: str, sens: Sensitivity | None = None, **kw: object
) -> PruneResult:
    plan = plan_manual(model, SHAPE, {"2": 3})
    return apply_plan(model, plan, criterion, sens, **kw)


def assert_survivors(model: nn.Module, result: PruneResult, keep: list[int]) -> None:
    """The pruned layer holds exactly the original filters `keep`; its followers match."""
    pruned = result.model
    torch.testing.assert_close(pruned[2].weight, model[2].weight[keep])
    torch.testing.assert_close(pruned[3].weight, model[3].weight[keep])
    torch.testing.assert_close(pruned[3].running_mean, model[3].running_mean[keep])
    torch.testing.assert_close(pruned[4].weight, model[4].weight[:, keep])
    assert result.kept_out["2"] == keep and result.kept_in["4"] == keep


def test_wff_removes_exactly_the_highest_scoring_filters() -> None:
    model = net()
    model[3].running_mean.copy_(torch.arange(6.0))
    scores = [0.1, 0.5, 0.0, 0.9, 0.3, 0.7]
    sens = compute_sensitivity(counts_with_scores(model, scores), model, steps=10)
    torch.testing.assert_close(sens.channel_scores["2"], torch.tensor(scores).double())
    result = prune_three(model, "wff", sens)
    assert result.removed == {"2": [1, 3, 5]}  # scores 0.5, 0.9, 0.7
    assert_survivors(model, result, [0, 2, 4])


def test_wff_ties_remove_the_lower_index_first() -> None:
    model = net()
    sens = compute_sensitivity(counts_with_scores(model, [0.2, 0.5, 0.5, 0.5, 0.0, 0.5]), model,
                               steps=10)
    assert prune_three(model, "wff", sens).removed == {"2": [1, 2, 3]}


def test_magnitude_removes_the_smallest_mean_latent_weights() -> None:
    model = net()
    mags = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.05, 0.7])
    signs = torch.randint(0, 2, model[2].weight.shape) * 2 - 1
    with torch.no_grad():
        model[2].weight.copy_(signs * mags.view(-1, 1, 1, 1))
    result = prune_three(model, "magnitude")
    assert result.removed == {"2": [1, 3, 4]}  # 0.1, 0.2, 0.05
    assert_survivors(model, result, [0, 2, 5])


def test_bn_scale_removes_the_smallest_absolute_gamma() -> None:
    model = net()
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([0.5, -2.0, 0.1, -0.05, 1.0, 0.3]))
    result = prune_three(model, "bn_scale")
    assert result.removed == {"2": [2, 3, 5]}  # |gamma| 0.1, 0.05, 0.3
    assert_survivors(model, result, [0, 1, 4])


def test_random_is_reproducible_per_seed_and_varies_across_seeds() -> None:
    model = net()
    picks = [tuple(prune_three(model, "random", seed=s).removed["2"]) for s in range(6)]
    assert all(len(p) == 3 and len(set(p)) == 3 for p in picks)
    assert prune_three(model, "random", seed=3).removed["2"] == list(picks[3])
    assert len(set(picks)) > 1


def test_a_coupled_group_pools_its_layers_scores(make_counts: Callable) -> None:
    model = build_model("resnet18", width=0.25)
    counts = {n: torch.zeros_like(c) for n, c in make_counts(model).items()}
    counts["layer1.0.conv2"][3] = 9  # channel 3 flips in both block outputs of stage 1
    counts["layer1.1.conv2"][3] = 9
    counts["layer1.0.conv2"][7] = 10  # channel 7 flips more, but in one layer only
    sens = compute_sensitivity(counts, model, steps=10)
    plan = plan_manual(model, (3, 32, 32), {"layer1.0.conv2": 15})
    result = apply_plan(model, plan, "wff", sens)
    assert result.removed == {"layer1.0.conv2": [3]}
    keep = [c for c in range(16) if c != 3]
    torch.testing.assert_close(result.model.conv1.weight, model.conv1.weight[keep])  # the stem
    torch.testing.assert_close(
        result.model.layer2[0].shortcut[1].weight, model.layer2[0].shortcut[1].weight[:, keep]
    )


def test_custom_criteria_plug_in_through_the_registry(make_counts: Callable) -> None:
    @register_criterion
    class HighestIndex(Criterion):
        name = "highest_index_test"

        def importance(
            self, model: nn.Module, group: ChannelGroup, sensitivity: Sensitivity | None
        ) -> torch.Tensor:
            return -torch.arange(group.channels, dtype=torch.float64)  # lower = removed

    try:
        model = net()
        sens = compute_sensitivity(make_counts(model), model, steps=20)
        plan = plan_target(model, SHAPE, sens, 0.3)
        result = apply_plan(model, plan, "highest_index_test")
        for g in plan.groups:
            kept = plan.keep[g.name]
            assert result.removed.get(g.name, []) == list(range(kept, g.channels))
    finally:
        CRITERIA.pop("highest_index_test")


def test_criterion_errors_are_clear() -> None:
    model = net()
    with pytest.raises(ValueError, match="unknown criterion 'nope'"):
        get_criterion("nope")
    with pytest.raises(ValueError, match="needs flip data"):
        prune_three(model, "wff")
    no_bn = nn.Sequential(BinaryConv2d(3, 6, 3), BinaryConv2d(6, 4, 3), nn.Flatten())
    plan = plan_manual(no_bn, SHAPE, {"0": 3})
    with pytest.raises(ValueError, match="needs an affine BatchNorm after '0'"):
        apply_plan(no_bn, plan, "bn_scale")
