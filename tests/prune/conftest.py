"""Fixtures for the pruning tests: zoo models, user-defined models, synthetic flip counts.

(Tests run with --import-mode=importlib, so helpers are shared as fixtures.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from bnnprune.models import MODELS, build_model
from bnnprune.nn import BinaryConv2d, BinaryLinear, binary_layers

Shape = tuple[int, int, int]


def zoo_model(name: str) -> tuple[nn.Module, Shape]:
    """A zoo model at width 0.25 and its default input (32x32x3 CIFAR, 28x28x1 for `small`)."""
    params = inspect.signature(MODELS[name]).parameters
    c, s = params["in_channels"].default, params["image_size"].default
    return build_model(name, width=0.25, in_channels=c, image_size=s), (c, s, s)


def random_counts(model: nn.Module, steps: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    """Flip counts in [0, steps]; flip rates differ per layer and per output channel."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, layer in binary_layers(model).items():
        w = layer.weight
        layer_rate = 0.05 + 0.4 * torch.rand(1, generator=g)
        rate = (torch.rand(w.shape[0], generator=g) * layer_rate).view(-1, *[1] * (w.dim() - 1))
        flipped = torch.bernoulli(rate.expand_as(w).contiguous(), generator=g)
        out[name] = (flipped * torch.randint(1, steps + 1, w.shape, generator=g)).to(torch.int32)
    return out


class ResidualNet(nn.Module):
    """A user-defined BNN: fp stem, two binary residual blocks, a binary FC, fp classifier."""

    def __init__(self, c: int = 12, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(c)
        self.a1, self.n1 = BinaryConv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.a2, self.n2 = BinaryConv2d(8, c, 3, padding=1), nn.BatchNorm2d(c)
        self.b1, self.m1 = BinaryConv2d(c, 10, 3, padding=1, scale=True), nn.BatchNorm2d(10)
        self.b2, self.m2 = BinaryConv2d(10, c, 1), nn.BatchNorm2d(c)
        self.pool = nn.MaxPool2d(2)
        self.fc = BinaryLinear(c * 4 * 4, 16)
        self.fc_bn = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_bn(self.stem(x))
        x = x + self.n2(self.a2(self.n1(self.a1(x))))
        x = x + self.m2(self.b2(self.m1(self.b1(x))))
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.fc_bn(self.fc(x)))


class ConcatNet(nn.Module):
    """Two binary branches concatenated along channels, then a binary conv and a binary head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.a, self.bna = BinaryConv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.b, self.bnb = BinaryConv2d(8, 10, 1), nn.BatchNorm2d(10)
        self.c, self.bnc = BinaryConv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12)
        self.head = BinaryLinear(12 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(x))
        y = torch.cat([self.bna(self.a(x)), self.bnb(self.b(x))], dim=1)
        y = nn.functional.max_pool2d(self.bnc(self.c(y)), 2)
        return self.head(torch.flatten(y, 1))


@pytest.fixture
def make_counts() -> Callable[..., dict[str, torch.Tensor]]:
    """random_counts(model, steps=20, seed=0)."""
    return random_counts


@pytest.fixture
def zoo() -> Callable[[str], tuple[nn.Module, Shape]]:
    """zoo(name) -> (model at width 0.25, input shape)."""
    return zoo_model


@pytest.fixture
def residual_net() -> nn.Module:
    return ResidualNet()


@pytest.fixture
def concat_net() -> nn.Module:
    return ConcatNet()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """These tests run many tiny forward passes; on a shared 2-core machine intra-op threads
    only contend (measured: 13 s with one thread, 40-70 s with two), so use one and restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
