"""Surgery through the dependency graph: zoo models, user models, hand-computed BOPs."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

from bnnprune.metrics import count_bops
from bnnprune.models import MODELS, build_model, model_from_arch
from bnnprune.nn import BinaryConv2d, binary_layers
from bnnprune.prune import (
    analyze,
    apply_plan,
    carry_flip_counts,
    compute_sensitivity,
    plan_manual,
    plan_target,
)


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv / linear layer (binary or not)."""
    return {n: int(m.weight.shape[0]) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_surgery_on_every_zoo_model_matches_the_plan_and_round_trips(
    name: str, zoo: Callable, make_counts: Callable
) -> None:
    model, shape = zoo(name)
    sens = compute_sensitivity(make_counts(model, seed=4), model, steps=20)
    plan = plan_target(model, shape, sens, 0.4)
    result = apply_plan(model, plan, "wff", sens)
    pruned = result.model
    assert pruned is not model and widths(model) == {**widths(model), **plan.channels}
    assert {n: widths(pruned)[n] for n in plan.keep} == plan.keep
    assert count_bops(pruned, shape) == plan.bops_after == result.bops_after
    pruned.eval()
    x = torch.randn(2, *shape)
    y = pruned(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    # saved and rebuilt from the unpruned spec plus the pruned state_dict
    buf = io.BytesIO()
    torch.save({"arch": pruned.arch, "state_dict": pruned.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    rebuilt = model_from_arch(saved["arch"], saved["state_dict"]).eval()
    torch.testing.assert_close(rebuilt(x), y)
    assert count_bops(rebuilt, shape) == plan.bops_after


def test_channels_and_bops_after_surgery_equal_a_hand_computation() -> None:
    model = build_model("small", width=0.25, in_channels=1, image_size=28)
    b1, b2, b3 = binary_layers(model)
    # fp conv 1->8; binary 3x3 convs 8->16 @28x28, 16->32 @14x14, 32->32 @7x7; pool to 3x3
    before = 8 * 9 * 16 * 28 * 28 + 16 * 9 * 32 * 14 * 14 + 32 * 9 * 32 * 7 * 7
    assert before == 903_168 + 903_168 + 451_584 == count_bops(model, (1, 28, 28))
    plan = plan_manual(model, (1, 28, 28), {b1: 12, b2: 20, b3: 24})
    after = 8 * 9 * 12 * 28 * 28 + 12 * 9 * 20 * 14 * 14 + 20 * 9 * 24 * 7 * 7
    assert after == 677_376 + 423_360 + 211_680 == 1_312_416
    assert plan.bops_before == before and plan.bops_after == after
    pruned = apply_plan(model, plan, "magnitude").model
    assert widths(pruned) == {"conv1": 8, b1: 12, b2: 20, b3: 24, "fc1": 10}
    assert [m.weight.shape[1] for m in binary_layers(pruned).values()] == [8, 12, 20]
    bns = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == [8, 12, 20, 24]
    fc = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1]
    assert fc.in_features == 24 * 3 * 3 and fc.out_features == 10
    assert count_bops(pruned, (1, 28, 28)) == after


def test_user_model_with_residual_adds(residual_net: nn.Module, make_counts: Callable) -> None:
    model, shape = residual_net, (3, 8, 8)
    space = analyze(model, shape)
    stage = space.group("a2")
    assert stage.layers == ("stem", "a2", "b2") and stage.binary == ("a2", "b2")
    assert set(space.fixed) == set()  # the binary FC feeds an fp head, so it is prunable too
    sens = compute_sensitivity(make_counts(model, seed=5), model, steps=20)
    plan = plan_target(model, shape, sens, 0.45)
    assert plan.reached
    result = apply_plan(model, plan, "wff", sens)
    pruned = result.model.eval()
    c = pruned.stem.out_channels
    assert c == pruned.a2.out_channels == pruned.b2.out_channels == plan.keep["a2"] < 12
    assert pruned.a1.in_channels == pruned.b1.in_channels == c
    assert pruned.fc.in_features == c * 4 * 4 and pruned.head.out_features == 5
    assert pruned(torch.randn(3, *shape)).shape == (3, 5)
    assert count_bops(pruned, shape) == plan.bops_after


def test_user_model_with_concat_keeps_the_right_inputs(concat_net: nn.Module) -> None:
    model, shape = concat_net, (3, 8, 8)
    space = analyze(model, shape)
    assert space.fixed == {"head": "its outputs feed the model output through 'head'"}
    counts = {n: torch.randint(0, 3, m.weight.shape, dtype=torch.int32)
              for n, m in binary_layers(model).items()}
    sens = compute_sensitivity(counts, model, steps=3)
    plan = plan_manual(model, shape, {"a": 4, "b": 7, "c": 9})
    result = apply_plan(model, plan, "wff", sens)
    ka, kb = result.kept_out["a"], result.kept_out["b"]
    assert result.kept_in["c"] == ka + [6 + i for i in kb]  # b's channels follow a's 6
    torch.testing.assert_close(result.model.c.weight, model.c.weight[result.kept_out["c"]][
        :, result.kept_in["c"]])
    carried = carry_flip_counts(counts, result)
    for n, m in binary_layers(result.model).items():
        assert carried[n].shape == m.weight.shape
    assert torch.equal(carried["c"], counts["c"][result.kept_out["c"]][:, result.kept_in["c"]])
    assert result.model(torch.randn(2, *shape)).shape == (2, 5)


def test_zero_channel_request_is_clamped_and_the_model_still_runs() -> None:
    model = build_model("small", width=0.25, in_channels=1, image_size=28)
    first = next(iter(binary_layers(model)))
    plan = plan_manual(model, (1, 28, 28), {first: 0})
    assert plan.keep[first] == 1 and plan.clamped == {first: 0}
    assert "clamped to the minimum 1" in plan.notes()[0]
    pruned = apply_plan(model, plan, "magnitude").model.eval()
    assert widths(pruned)[first] == 1
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_inplace_surgery_keeps_the_object_its_arch_and_training_mode() -> None:
    model = build_model("nin", width=0.25)
    model.train()
    plan = plan_manual(model, (3, 32, 32), {next(iter(binary_layers(model))): 20})
    result = apply_plan(model, plan, "magnitude", inplace=True)
    assert result.model is model and model.training
    assert model.arch == {"name": "nin", "kwargs": {"width": 0.25}}


def test_a_plan_for_another_model_is_rejected() -> None:
    model = build_model("nin", width=0.25)
    plan = plan_manual(model, (3, 32, 32), {next(iter(binary_layers(model))): 20})
    with pytest.raises(ValueError, match="plan does not fit this model"):
        apply_plan(build_model("nin", width=0.5), plan, "magnitude")


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.dw = BinaryConv2d(3, 8, 1), nn.Conv2d(8, 8, 3, groups=8)
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.dw(self.a(x)).mean((2, 3)))


class Sliced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = BinaryConv2d(3, 8, 1), BinaryConv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)[:, :4])


class NoGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = BinaryConv2d(3, 8, 1), BinaryConv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.b(self.a(x))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (Depthwise(), "'dw' is a grouped/depthwise convolution"),
        (nn.Sequential(BinaryConv2d(3, 8, 1), nn.GroupNorm(2, 8), BinaryConv2d(8, 2, 1)),
         r"'1' \(GroupNorm\) holds parameters"),
        (Sliced(), "cannot prune channels of 'a' \\(through SliceBackward0\\)"),
        (NoGrad(), "binary layer 'a' is not reached by the traced forward pass"),
    ],
)
def test_operations_surgery_cannot_follow_are_named(model: nn.Module, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        analyze(model, (3, 8, 8))


def test_torch_pruning_prints_and_warns_nothing(
    capfd: pytest.CaptureFixture[str], make_counts: Callable
) -> None:
    model = build_model("resnet18", width=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sens = compute_sensitivity(make_counts(model), model, steps=20)
        plan = plan_target(model, (3, 32, 32), sens, 0.3)
        apply_plan(model, plan, "wff", sens)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
