"""Full-precision producers: a first conv feeding only binary layers is pruned with the binary
consumer's input channels, scored from the consumer; BOPs and float MACs are exact."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from bnnprune.metrics import summarize
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d
from bnnprune.prune import (
    analyze,
    apply_plan,
    compute_sensitivity,
    plan_manual,
    plan_target,
    select_channels,
)

SHAPE = (3, 32, 32)
# (model, fp conv, its kernel, binary consumer, channels at width 0.125, kept in the test)
CASES = [("nin", "conv1", 5, "bconv2", 24, 13), ("alexnet", "conv1", 5, "bconv2", 12, 7)]


def _zoo(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, width=0.125).eval()


@pytest.mark.parametrize(("name", "fp", "k", "consumer", "channels", "kept"), CASES)
def test_fp_producer_is_a_group_and_surgery_gives_exact_counts_bops_and_macs(
    name: str, fp: str, k: int, consumer: str, channels: int, kept: int
) -> None:
    model = _zoo(name)
    space = analyze(model, SHAPE)
    g = space.group(fp)
    assert (g.binary, g.layers, g.consumers, g.channels) == ((), (fp,), (consumer,), channels)
    assert g.fp_producer and g.norms == ("bn1",)
    before = summarize(model, SHAPE)
    assert (space.bops, space.float_macs) == (before.bops, before.float_macs)

    plan = plan_manual(model, SHAPE, {fp: kept, consumer: 9})
    assert plan.keep[fp] == kept and plan.channels[fp] == channels
    pruned = apply_plan(model, plan, "magnitude").model
    conv, bn, cons = (pruned.get_submodule(n) for n in (fp, "bn1", consumer))
    assert conv.weight.shape[:2] == (kept, 3) and bn.num_features == kept
    assert cons.weight.shape[:2] == (9, kept)
    after = summarize(pruned, SHAPE)
    assert (after.bops, after.float_macs) == (plan.bops_after, plan.float_macs_after)
    # the fp conv's own MACs shrink in proportion: 3*k*k inputs per output, 32x32 outputs
    fp_macs = {la.name: la.float_macs for la in after.layers}[fp]
    assert fp_macs == 3 * k * k * kept * 32 * 32
    assert plan.to_dict()["fp_producers"] == {fp: [consumer]}
    assert plan.to_dict()["float_macs_after"] == after.float_macs < before.float_macs


@pytest.mark.parametrize(("name", "fp", "k", "consumer", "channels", "kept"), CASES)
def test_target_policy_cuts_the_fp_producer_and_keep_fp_opts_out(
    name: str, fp: str, k: int, consumer: str, channels: int, kept: int, make_counts: Callable
) -> None:
    model = _zoo(name)
    sens = compute_sensitivity(make_counts(model, seed=3), model, steps=20)
    plan = plan_target(model, SHAPE, sens, 0.4, round_to=1)
    assert plan.keep[fp] < channels and plan.reached
    result = apply_plan(model, plan, "wff", sens)
    after = summarize(result.model, SHAPE)
    assert (after.bops, after.float_macs) == (plan.bops_after, plan.float_macs_after)
    assert result.model.get_submodule(fp).out_channels == plan.keep[fp]

    kept_plan = plan_target(model, SHAPE, sens, 0.4, keep_fp=True, round_to=1)
    assert fp not in kept_plan.keep and kept_plan.float_macs_before == plan.float_macs_before
    pruned = apply_plan(model, kept_plan, "wff", sens).model
    assert pruned.get_submodule(fp).weight.shape == model.get_submodule(fp).weight.shape


def test_wff_removes_the_channels_whose_consumer_weights_flip_most() -> None:
    model = _zoo("nin")
    counts = {n: torch.zeros_like(m.weight, dtype=torch.int32)
              for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}
    noisy = [3, 11, 17, 20]
    counts["bconv2"][:, noisy] = 4  # every weight on these input channels flipped 4 times
    counts["bconv2"][:2, 5] = 1  # a few flips elsewhere: less than the noisy ones
    sens = compute_sensitivity(counts, model, steps=5)
    plan = plan_manual(model, SHAPE, {"conv1": 24 - len(noisy)})
    assert select_channels(model, plan, "wff", sens) == {"conv1": noisy}


def test_a_fp_conv_feeding_a_fp_layer_stays_unpruned() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6),  # feeds a fp conv: fixed
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8),  # feeds only a binary conv: a group
        BinaryConv2d(8, 10, 3, padding=1), nn.BatchNorm2d(10),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 4),
    )  # fmt: skip
    space = analyze(model, (3, 8, 8))
    assert [(g.name, g.consumers) for g in space.groups] == [("2", ("4",)), ("4", ())]
    plan = plan_manual(model, (3, 8, 8), {"2": 5, "4": 7})
    pruned = apply_plan(model, plan, "magnitude").model
    after = summarize(pruned, (3, 8, 8))
    assert pruned[0].out_channels == 6 and pruned[2].weight.shape[:2] == (5, 6)
    assert (after.bops, after.float_macs) == (plan.bops_after, plan.float_macs_after)
