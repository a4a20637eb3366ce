"""Policies: paper rule, BOPs targets, uniform baseline, rounding, minimums, exclusions."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from bnnprune.config import ConfigError, PruneConfig
from bnnprune.metrics import binary_channels, count_bops
from bnnprune.models import MODELS, build_model
from bnnprune.nn import BinaryConv2d, binary_layers
from bnnprune.prune import (
    POLICIES,
    PlanOptions,
    Policy,
    analyze,
    compute_sensitivity,
    make_plan,
    parse_method,
    plan_manual,
    plan_paper,
    plan_target,
    plan_uniform,
    prune_once,
    prune_trained,
    register_policy,
)
from bnnprune.prune.resolve import default_criterion, default_policy, resolve_prune

SHAPE = (3, 8, 8)


def chain() -> nn.Module:
    """fp conv -> three binary convs (8, 10, 6 channels) -> fp classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
        BinaryConv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8),
        BinaryConv2d(8, 10, 3, padding=1), nn.BatchNorm2d(10),
        BinaryConv2d(10, 6, 1), nn.BatchNorm2d(6),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )  # fmt: skip


def counts_with_fraction(model: nn.Module, fractions: dict[str, float]) -> dict[str, torch.Tensor]:
    """The first round(f * numel) weights of each layer flipped once."""
    out = {}
    for name, f in fractions.items():
        w = model.get_submodule(name).weight
        c = torch.zeros(w.numel(), dtype=torch.int32)
        c[: round(f * w.numel())] = 1
        out[name] = c.view(w.shape)
    return out


def test_paper_policy_rounds_and_clamps_to_the_minimum() -> None:
    model = chain()
    counts = counts_with_fraction(model, {"2": 0.25, "4": 0.35, "6": 1.0})
    sens = compute_sensitivity(counts, model, steps=1)
    plan = plan_paper(model, SHAPE, sens, round_to=1)
    # 8 * (1 - 0.25) = 6; 10 * (1 - 0.35) = 6.5 -> 7 (half up); 6 * (1 - 1) = 0 -> clamped to 1;
    # the fp conv "0" feeds only "2": p of its consumer, 4 * (1 - 0.25) = 3
    assert plan.keep == {"0": 3, "2": 6, "4": 7, "6": 1}
    assert plan.channels == {"0": 4, "2": 8, "4": 10, "6": 6}
    assert plan.clamped == {"6": 0}
    assert plan.notes() == ["6: the paper policy asked for 0 channel(s); clamped to the minimum 1"]
    assert plan.bops_after == analyze(model, SHAPE).bops_for([3, 6, 7, 1]) < plan.bops_before
    kept = plan_paper(model, SHAPE, sens, keep_fp=True, round_to=1)  # the pre-fp-pruning plan
    assert kept.keep == {"2": 6, "4": 7, "6": 1}
    # float MACs: fp conv 3*9*4 per pixel on 8x8 = 6912, classifier 6*3 = 18
    assert (kept.float_macs_before, kept.float_macs_after) == (6912 + 18, 6912 + 1 * 3)
    assert plan.float_macs_after == 3 * 9 * 3 * 64 + 1 * 3
    summary = json.loads(json.dumps(plan.to_dict()))
    assert summary["layers"]["6"] == {"before": 6, "after": 1}
    assert summary["clamped"] == {"6": 0} and summary["bops_after"] == plan.bops_after


def test_paper_policy_respects_min_channels_and_exclude() -> None:
    model = chain()
    sens = compute_sensitivity(counts_with_fraction(model, {"2": 0.9, "4": 0.9, "6": 0.9}), model,
                               steps=1)
    plan = plan_paper(model, SHAPE, sens, min_channels=3, exclude=["4"], round_to=1)
    # round(0.4) = 0, round(0.8) = 1 and round(0.6) = 1 -> 3
    assert plan.keep == {"0": 3, "2": 3, "4": 10, "6": 3}
    assert plan.excluded == ("4",)
    with pytest.raises(ValueError, match="no such layer"):
        plan_paper(model, SHAPE, sens, exclude=["nope"])


@pytest.mark.parametrize("target", [0.0, 1.0, -0.2, 1.5, math.nan])
def test_target_outside_the_open_unit_interval_is_an_error(
    target: float, make_counts: Callable
) -> None:
    model = chain()
    sens = compute_sensitivity(make_counts(model), model, steps=20)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        plan_target(model, SHAPE, sens, target)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        plan_uniform(model, SHAPE, target)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_target_meets_bops_and_uniform_matches_it_on_every_zoo_model(
    name: str, zoo: Callable, make_counts: Callable
) -> None:
    model, shape = zoo(name)
    sens = compute_sensitivity(make_counts(model, seed=1), model, steps=20)
    plan = plan_target(model, shape, sens, 0.4, round_to=1)
    assert plan.bops_before == count_bops(model, shape)
    assert abs(plan.reduction - 0.4) <= 0.01 and plan.reached
    assert plan.bops_after == analyze(model, shape).bops_for(list(plan.group_keep().values()))
    uni = plan_uniform(model, shape, plan.reduction, round_to=1)
    assert abs(uni.reduction - plan.reduction) <= 0.01
    # uniform: every group cut by (nearly) the same ratio; rounding moves a group a channel or two
    for g in uni.groups:
        assert abs(uni.keep[g.name] - g.channels * (1 - uni.scale)) <= 2


def test_target_cuts_in_proportion_to_p_and_never_cuts_layers_without_flips() -> None:
    model = chain()
    sens = compute_sensitivity(counts_with_fraction(model, {"2": 0.4, "4": 0.2, "6": 0.0}), model,
                               steps=1)
    plan = plan_target(model, SHAPE, sens, 0.3, round_to=1)
    assert plan.reached
    assert plan.keep["6"] == 6
    cut2, cut4 = 1 - plan.keep["2"] / 8, 1 - plan.keep["4"] / 10
    assert cut2 > cut4 > 0


def test_unreachable_target_gives_the_nearest_plan_and_says_so() -> None:
    model = chain()
    sens = compute_sensitivity(counts_with_fraction(model, {"2": 0.0, "4": 0.0, "6": 0.5}), model,
                               steps=1)
    plan = plan_target(model, SHAPE, sens, 0.9)
    assert plan.keep == {"0": 4, "2": 8, "4": 10, "6": 1}  # "0" feeds "2", which never flips
    assert not plan.reached and plan.reduction < 0.9
    assert plan.notes()[-1] == (
        "target BOPs reduction 90.0% not reached: the target policy with these options came "
        f"closest at {plan.reduction:.1%}"
    )
    still = compute_sensitivity(counts_with_fraction(model, {"2": 0, "4": 0, "6": 0}), model,
                                steps=1)
    nothing = plan_target(model, SHAPE, still, 0.2)  # no weight flipped: nothing to cut
    assert nothing.keep == nothing.channels and not nothing.reached


def test_round_to_keeps_multiples_where_layers_are_wide_enough(make_counts: Callable) -> None:
    model = build_model("nin", width=0.5)  # binary widths 80, 48, 96, 96, 96, 96, 96
    shape = (3, 32, 32)
    sens = compute_sensitivity(make_counts(model, seed=2), model, steps=20)
    plans = [
        plan_paper(model, shape, sens, round_to=32),
        plan_target(model, shape, sens, 0.5, round_to=32),
        plan_uniform(model, shape, 0.5, round_to=32),
    ]
    assert {g.channels for g in plans[0].groups} == {80, 48, 96}
    for plan in plans:
        for g in plan.groups:
            k = plan.keep[g.name]
            assert k == g.channels or (k % 32 == 0 and k >= 32), (plan.policy, g.name, k)
    assert any(k != plans[1].channels[n] for n, k in plans[1].keep.items())
    small = build_model("small", width=0.25, in_channels=1, image_size=28)  # widths 16, 32, 32
    first, second, third = binary_layers(small)
    uni = plan_uniform(small, (1, 28, 28), 0.5, round_to=32)
    assert uni.keep[first] < 16  # fewer than 32 channels: step 1
    assert uni.keep[second] == uni.keep[third] == 32  # the minimum is one step of 32


def test_residual_stage_is_one_group_with_one_count(make_counts: Callable) -> None:
    model = build_model("resnet18", width=0.25)
    space = analyze(model, (3, 32, 32))
    stage1 = space.group("layer1.0.conv2")
    assert stage1.binary == ("layer1.0.conv2", "layer1.1.conv2")
    assert stage1.layers == ("conv1", "layer1.0.conv2", "layer1.1.conv2")  # the stem follows
    assert "layer2.0.shortcut.1" in space.group("layer2.0.conv2").layers
    assert len(space.groups) == 12  # 8 inner convs + 4 stages
    sens = compute_sensitivity(make_counts(model, seed=3), model, steps=20)
    plan = plan_target(model, (3, 32, 32), sens, 0.3)
    for g in plan.groups:
        assert len({plan.keep[b] for b in g.binary}) == 1
    excl = plan_target(model, (3, 32, 32), sens, 0.3, exclude=["conv1"])
    assert excl.keep["layer1.0.conv2"] == excl.keep["layer1.1.conv2"] == 16


def test_manual_plan_checks_groups_and_clamps_zero() -> None:
    model = build_model("resnet18", width=0.25)
    plan = plan_manual(model, (3, 32, 32), {"layer1.1.conv2": 0, "layer2.0.conv1": 5})
    assert plan.keep["layer1.0.conv2"] == plan.keep["layer1.1.conv2"] == 1
    assert plan.clamped == {"layer1.0.conv2": 0}
    with pytest.raises(ValueError, match="same channel count"):
        plan_manual(model, (3, 32, 32), {"layer1.0.conv2": 4, "layer1.1.conv2": 5})
    with pytest.raises(ValueError, match="no prunable output channels"):
        plan_manual(model, (3, 32, 32), {"fc": 4})


def test_make_plan_dispatches_and_checks_its_inputs(make_counts: Callable) -> None:
    model = chain()
    sens = compute_sensitivity(make_counts(model), model, steps=20)
    assert make_plan(model, SHAPE, "paper", sensitivity=sens).policy == "paper"
    assert make_plan(model, SHAPE, "target", sensitivity=sens, target=0.3).policy == "target"
    assert make_plan(model, SHAPE, "uniform", target=0.3).policy == "uniform"
    with pytest.raises(ValueError, match="unknown policy"):
        make_plan(model, SHAPE, "greedy")
    with pytest.raises(ValueError, match="needs flip data.*track-last"):
        make_plan(model, SHAPE, "target", target=0.3)
    with pytest.raises(ValueError, match="needs a target"):
        make_plan(model, SHAPE, "uniform")


def test_flip_data_of_another_model_is_rejected_when_planning(make_counts: Callable) -> None:
    model, other = chain(), build_model("small", width=0.25, in_channels=1, image_size=28)
    sens = compute_sensitivity(make_counts(other), other, steps=20)
    with pytest.raises(ValueError, match="does not match the model's binary layers"):
        plan_paper(model, SHAPE, sens)


def test_a_registered_policy_is_a_method_everywhere_and_its_rules_come_from_it() -> None:
    """A policy added to the registry is parsed, planned, pruned and checked (config, plan)
    by what it declares, with no list of policy names to update elsewhere."""

    class Half(Policy):
        """Every group keeps half its channels: no target, no flip data."""

        name = "half_test"
        targets = ()

        def _keep(self, pl: Any, sensitivity: Any) -> list[int]:
            return pl.quantize([c / 2 for c in pl.active_channels()], record=True)

    register_policy(Half)
    try:
        model = chain()
        method = parse_method("half_test+magnitude")
        assert method.policy == Half() and not method.needs_flips
        plan, pruned = prune_once(model, method, SHAPE, options=PlanOptions(round_to=1))
        assert plan.policy == "half_test" and plan.keep == {"0": 2, "2": 4, "4": 5, "6": 3}
        assert binary_channels(pruned) == {"2": 4, "4": 5, "6": 3}
        with pytest.raises(ValueError, match="needs the target or uniform policy, not 'half_t"):
            make_plan(model, SHAPE, "half_test", target_latency=0.5, latency_model=object())
        with pytest.raises(ConfigError, match="target_latency needs the target or uniform"):
            resolve_prune(PruneConfig(policy="half_test", target_latency=0.5))
        resolve_prune(PruneConfig(policy="half_test", criterion="magnitude"))
    finally:
        del POLICIES["half_test"]


def test_prune_trained_reads_the_flip_state_at_its_threshold() -> None:
    model = chain()
    counts = counts_with_fraction(model, {"2": 0.25, "4": 0.35, "6": 1.0})
    counts["4"][0] = 2  # one filter of "4" flipped twice: insensitive at threshold 1 too
    state = {"counts": counts, "steps_in_window": 2}
    options = PlanOptions(round_to=1)
    for threshold in (0, 1):
        sens = compute_sensitivity(counts, model, steps=2, threshold=threshold)
        want = prune_once(model, parse_method("paper+wff"), SHAPE, sensitivity=sens,
                          options=options)
        got = prune_trained(model, state, parse_method("paper+wff"), SHAPE, options=options,
                            threshold=threshold)
        assert got.plan.keep == want.plan.keep
        assert binary_channels(got.model) == binary_channels(want.model)
    assert prune_trained(model, state, parse_method("paper+wff"), SHAPE, options=options,
                         threshold=1).plan.keep["2"] == 8  # nothing flipped twice there
    # a method that reads no flips needs no flip data
    plan, _ = prune_trained(model, None, parse_method("uniform+magnitude"), SHAPE, target=0.3)
    assert plan.reduction > 0
    with pytest.raises(ValueError, match="no flip data"):
        prune_trained(model, None, parse_method("paper+wff"), SHAPE)


def test_prune_command_defaults_the_paper_method_without_a_target() -> None:
    assert (default_policy(targeted=False), default_criterion("paper")) == ("paper", "wff")
    assert default_policy(targeted=True) == PruneConfig().policy
    assert default_criterion("target") == PruneConfig().criterion
