"""Torch-Pruning interop: our criteria as tp importances (tp's own pruner reaches the plan of
apply_plan), tp importances as our criteria, and one ordering convention (lower = pruned)."""

from __future__ import annotations

import copy
import dataclasses
import zlib
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from bnnprune.nn import BinaryConv2d, binary_layers
from bnnprune.prune import (
    BNScaleImportance,
    ChannelGroup,
    MagnitudeImportance,
    RandomImportance,
    Sensitivity,
    WFFImportance,
    apply_plan,
    check_criterion,
    compute_sensitivity,
    get_criterion,
    plan_manual,
    plan_target,
    select_channels,
)
from bnnprune.prune.graph import build_graph, out_pruning_fn


def _distinct_scores(model: nn.Module, sens: Sensitivity, seed: int = 1) -> Sensitivity:
    """The same sensitivity with continuous per-channel WFF scores (no ties: tp's topk
    breaks ties in no documented order)."""
    g = torch.Generator().manual_seed(seed)
    scores = {
        n: torch.rand(m.weight.shape[0], generator=g, dtype=torch.float64)
        for n, m in binary_layers(model).items()
    }
    return dataclasses.replace(sens, channel_scores=scores)


def _random_gammas(model: nn.Module, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))


# ---- one convention: the same channels as the old "higher removal score = removed" code


def _old_removal_scores(
    name: str, model: nn.Module, group: ChannelGroup, sens: Sensitivity
) -> torch.Tensor:
    """The removal scores of the criteria before the switch (copied from the old code)."""

    def pooled(per_weight: Callable[[str, nn.Module], torch.Tensor]) -> torch.Tensor:
        total, count = torch.zeros(group.channels, dtype=torch.float64), 0
        for b in group.binary:
            w = per_weight(b, model.get_submodule(b)).detach().double()
            total += w.flatten(1).sum(dim=1)
            count += w[0].numel()
        return total / count

    if name == "wff":
        return pooled(
            lambda b, m: sens.channel_scores[b].double()[:, None].expand(-1, m.weight[0].numel())
        )
    if name == "magnitude":
        return -pooled(lambda _, m: m.weight.abs())
    if name == "bn_scale":
        gammas = [model.get_submodule(n).weight.detach().abs().double() for n in group.norms]
        return -torch.stack(gammas).mean(dim=0)
    gen = torch.Generator().manual_seed(7 ^ zlib.crc32(group.name.encode()))
    return torch.rand(group.channels, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("arch", ["small", "resnet18"])
@pytest.mark.parametrize("name", ["wff", "magnitude", "bn_scale", "random"])
def test_lower_is_pruned_removes_the_same_channels_as_the_old_convention(
    arch: str, name: str, zoo: Callable, make_counts: Callable
) -> None:
    model, shape = zoo(arch)
    counts = make_counts(model, steps=4)  # few steps: many tied WFF scores
    counts[next(iter(counts))].zero_()  # a layer of all-equal scores
    sens = compute_sensitivity(counts, model, steps=4)
    _random_gammas(model)
    plan = plan_target(model, shape, sens, 0.5)
    kw = {"seed": 7} if name == "random" else {}
    got = select_channels(model, plan, name, sens, **kw)
    keep = plan.group_keep()
    assert got, "the plan removes nothing"
    for g in plan.groups:
        n_remove = g.channels - keep[g.name]
        if n_remove <= 0:
            continue
        old = _old_removal_scores(name, model, g, sens)
        order = torch.sort(old, descending=True, stable=True).indices
        assert got[g.name] == sorted(int(i) for i in order[:n_remove]), g.name


def test_ties_still_remove_the_lower_channel_index_first() -> None:
    model = nn.Sequential(BinaryConv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6),
                          BinaryConv2d(6, 4, 3, padding=1), nn.Flatten())  # fmt: skip
    plan = plan_manual(model, (3, 4, 4), {"0": 2})
    assert select_channels(model, plan, "bn_scale") == {"0": [0, 1, 2, 3]}  # all gammas 1


# ---- our criteria inside Torch-Pruning's own pruner


def _tp_prune(model: nn.Module, imp: tp.importance.Importance, plan, shape) -> nn.Module:
    """Torch-Pruning's MetaPruner cutting every planned group to its planned width."""
    keep = plan.group_keep()
    ratios = {
        model.get_submodule(g.name): 1.0 - (keep[g.name] + 0.5) / g.channels
        for g in plan.groups
        if keep[g.name] < g.channels
    }
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]  # the classifier
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros(1, *shape),
        importance=imp,
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=heads,
    )
    pruner.step()
    return model


@pytest.mark.parametrize("arch", ["small", "resnet18"])
@pytest.mark.parametrize("name", ["wff", "magnitude", "bn_scale", "random"])
def test_tp_metapruner_with_our_importance_matches_apply_plan(
    arch: str, name: str, zoo: Callable, make_counts: Callable
) -> None:
    model, shape = zoo(arch)
    model.eval()
    _random_gammas(model)
    sens = compute_sensitivity(make_counts(model), model, steps=20)
    plan = plan_target(model, shape, sens, 0.4)
    sens = _distinct_scores(model, sens)
    imp = {
        "wff": lambda m: WFFImportance(m, sens),
        "magnitude": MagnitudeImportance,
        "bn_scale": BNScaleImportance,
        "random": lambda m: RandomImportance(m, seed=3),
    }[name]
    ours = apply_plan(model, plan, name, sens, **({"seed": 3} if name == "random" else {}))
    theirs = copy.deepcopy(model)
    _tp_prune(theirs, imp(theirs), plan, shape)
    a, b = binary_layers(ours.model), binary_layers(theirs)
    assert {n: m.weight.shape for n, m in a.items()} == {n: m.weight.shape for n, m in b.items()}
    assert {n: int(m.weight.shape[0]) for n, m in a.items()} == {
        n: plan.keep.get(n, int(m.weight.shape[0])) for n, m in a.items()
    }
    for n in a:  # the same channels kept, in and out
        torch.testing.assert_close(a[n].weight, b[n].weight, rtol=0, atol=0)
    x = torch.randn(4, *shape)
    torch.testing.assert_close(ours.model(x), theirs(x))


def test_our_importance_skips_groups_without_binary_layers(zoo: Callable) -> None:
    model, shape = zoo("small")
    dg = build_graph(model, shape)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # feeds no binary layer
    group = dg.get_pruning_group(head, tp.prune_linear_out_channels, [0, 1])
    assert MagnitudeImportance(model)(group) is None


def test_our_importance_scores_a_fp_producer_from_its_binary_consumer(zoo: Callable) -> None:
    model, shape = zoo("small")
    dg = build_graph(model, shape)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not isinstance(stem, BinaryConv2d)
    group = dg.get_pruning_group(stem, tp.prune_conv_out_channels, [0, 1])
    consumer = model.get_submodule("bconv2")  # the stem's only consumer
    want = consumer.weight.detach().abs().transpose(0, 1).flatten(1).mean(dim=1)[:2]
    torch.testing.assert_close(MagnitudeImportance(model)(group), want.float())


# ---- Torch-Pruning's importances as our criteria


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4),
        BinaryConv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8),
        BinaryConv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    ).eval()  # fmt: skip


SHAPE = (3, 6, 6)


def _expected(model: nn.Module, imp: tp.importance.Importance, n_remove: int) -> list[int]:
    dg = build_graph(model, SHAPE)
    layer = model[2]
    scores = imp(dg.get_pruning_group(layer, out_pruning_fn(layer), list(range(8))))
    return sorted(int(i) for i in torch.sort(scores.double(), stable=True).indices[:n_remove])


@pytest.mark.parametrize(
    "spec, imp",
    [
        ("tp:magnitude", tp.importance.MagnitudeImportance()),
        ("tp:lamp", tp.importance.LAMPImportance()),
        ("tp:fpgm", tp.importance.FPGMImportance()),
        ("torch_pruning.pruner.importance:LAMPImportance", tp.importance.LAMPImportance()),
    ],
)
def test_tp_importances_choose_their_lowest_channels(spec: str, imp) -> None:
    model = _net()
    plan = plan_manual(model, SHAPE, {"2": 5})
    result = apply_plan(model, plan, spec)
    assert result.removed == {"2": _expected(model, imp, 3)}
    assert result.criterion == spec and result.model[2].weight.shape[0] == 5


def test_import_path_to_one_of_our_criteria() -> None:
    model = _net()
    plan = plan_manual(model, SHAPE, {"2": 5})
    a = apply_plan(model, plan, "bnnprune.prune.criteria:Magnitude").removed
    assert a == apply_plan(model, plan, "magnitude").removed


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(8, *SHAPE, generator=g), torch.randint(0, 3, (8,), generator=g))
            for _ in range(2)]  # fmt: skip


def test_taylor_computes_gradients_on_the_given_batches_and_leaves_no_trace() -> None:
    model = _net()
    data = _batches()
    ref = copy.deepcopy(model)
    for x, y in data:
        F.cross_entropy(ref(x), y).backward()
    want = _expected(ref, tp.importance.TaylorImportance(), 3)
    plan = plan_manual(model, SHAPE, {"2": 5})
    before = copy.deepcopy(model.state_dict())
    result = apply_plan(model, plan, get_criterion("tp:taylor", data=data))
    assert result.removed == {"2": want}
    assert all(p.grad is None for p in model.parameters())  # previous grads restored
    for k, v in model.state_dict().items():  # eval mode: BatchNorm statistics unchanged
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert model.training is False


def test_taylor_without_data_refuses_clearly() -> None:
    model = _net()
    plan = plan_manual(model, SHAPE, {"2": 5})
    with pytest.raises(ValueError, match="'tp:taylor' needs gradients, and no data was given"):
        apply_plan(model, plan, "tp:taylor")


def test_hessian_runs_on_given_batches() -> None:
    model = _net()
    plan = plan_manual(model, SHAPE, {"2": 5})
    crit = get_criterion("tp:hessian", data=_batches())
    assert crit.needs_grads
    assert len(apply_plan(model, plan, crit).removed["2"]) == 3


@pytest.mark.parametrize(
    "spec, match",
    [
        ("tp:nope", "unknown Torch-Pruning importance 'tp:nope'"),
        ("no_such_pkg.mod:X", "cannot import criterion 'no_such_pkg.mod:X'"),
        ("torch.nn:Linear", "neither a bnnprune Criterion nor a Torch-Pruning Importance"),
        (":X", "write an import path as pkg.module:"),
        ("nope", "unknown criterion 'nope'"),
    ],
)
def test_bad_criterion_specs_are_refused(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_criterion(spec)
