"""One cost rule: metrics, the pruning planner and the engine count the same BOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnnprune.engine import compile_model
from bnnprune.engine.bench import program_bops
from bnnprune.metrics import count_bops, summarize
from bnnprune.models import MODELS, build_model
from bnnprune.nn import BinaryConv2d, BinaryLinear
from bnnprune.prune import analyze, apply_plan, make_plan

ZOO_SHAPES = {"small": (1, 28, 28)}


def _zoo(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    shape = ZOO_SHAPES.get(name, (3, 32, 32))
    torch.manual_seed(0)
    model = build_model(name, width=0.125, in_channels=shape[0], num_classes=10,
                        image_size=shape[1])
    return model.eval(), shape


class RealInputBinary(nn.Module):
    """A binary-weight layer fed real values (binarize_input=False) between binary layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.bconv1 = BinaryConv2d(8, 12, 3, padding=1, binarize_input=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.bconv2 = BinaryConv2d(12, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = BinaryLinear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.conv0(x))
        x = self.bn1(self.bconv1(x))
        x = self.bn2(self.bconv2(x))
        return self.fc(self.pool(x).flatten(1))


def _three_counts(model: nn.Module, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    return (count_bops(model, shape), analyze(model, shape).bops,
            program_bops(compile_model(model.eval(), shape)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_metrics_planner_engine_agree_on_zoo(name: str) -> None:
    model, shape = _zoo(name)
    counts = _three_counts(model, shape)
    assert counts[0] > 0 and len(set(counts)) == 1, counts
    assert summarize(model, shape).bops == counts[0]


def test_real_input_binary_layer_counts_float_macs_and_prunes() -> None:
    model, shape = RealInputBinary().eval(), (1, 12, 12)
    bops, planned, engine = _three_counts(model, shape)
    # only bconv2 (binary x binary) and the binary head make BOPs; bconv1 is float MACs
    assert bops == planned == engine == 12 * 9 * 16 * 144 + 16 * 10
    s = summarize(model, shape)
    assert s.float_macs >= 8 * 9 * 12 * 144
    plan = make_plan(model, shape, "uniform", target=0.3)
    pruned = apply_plan(model, plan, "magnitude").model
    assert count_bops(pruned, shape) == plan.bops_after < bops
    assert pruned.bconv1.weight.shape[0] < 12


@pytest.mark.parametrize("name", ["small", "nin", "resnet18"])
def test_counts_agree_after_pruning(name: str) -> None:
    model, shape = _zoo(name)
    plan = make_plan(model, shape, "uniform", target=0.4)
    pruned = apply_plan(model, plan, "magnitude").model.eval()
    counts = _three_counts(pruned, shape)
    assert len(set(counts)) == 1 and counts[0] == plan.bops_after, counts
