"""Helpers for engine tests: randomized BatchNorm, exactly representable inputs, hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.nn import BinaryConv2d, BinaryLinear


def randomize_bn(model: nn.Module, seed: int = 0, zero_gamma: bool = True) -> nn.Module:
    """Random running stats and affine terms; some gammas negative and (optionally) zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 3)
                m.running_var.copy_(torch.rand(n, generator=g) * 8 + 0.25)
                gamma = torch.randn(n, generator=g)
                if zero_gamma and n > 2:
                    gamma[torch.randint(0, n, (max(1, n // 8),), generator=g)] = 0.0
                m.weight.copy_(gamma)
                m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


def dyadic_fp_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Full-precision conv/linear weights on a 1/16 grid, so float sums are exact in any order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            binary = isinstance(m, BinaryConv2d | BinaryLinear)
            if isinstance(m, nn.Conv2d | nn.Linear) and not binary:
                m.weight.copy_(torch.randint(-16, 17, m.weight.shape, generator=g) / 16.0)
                if m.bias is not None:
                    m.bias.copy_(torch.randint(-16, 17, m.bias.shape, generator=g) / 16.0)
    return model


def dyadic_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Inputs on a 1/8 grid in [-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-16, 17, shape, generator=g).float() / 8.0


def torch_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Output of every named module of ``model`` on ``x`` (eval mode, no grad)."""
    outs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, name=name: outs.__setitem__(name, o))
             for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            outs[""] = model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


def assert_engine_matches(model: nn.Module, program, x: torch.Tensor) -> int:
    """Every binary engine value equals sign() of its PyTorch module output; logits agree.

    Returns the number of binary values compared (so callers can assert it is not zero).
    """
    ref = torch_outputs(model, x)
    inter = program.intermediates(x)
    compared = 0
    for key, val in inter.items():
        source, kind = key.rsplit(":", 1)
        if source not in ref:
            continue
        t = ref[source].detach().numpy()
        if kind == "bits":
            expect = np.where(t >= 0, 1.0, -1.0)
            mismatch = int((val != expect).sum())
            assert mismatch == 0, f"{source}: {mismatch} of {val.size} bits differ"
            compared += 1
        else:
            np.testing.assert_allclose(val, t, rtol=1e-4, atol=1e-4, err_msg=source)
    logits = program(x)
    expect = ref[""].detach().numpy()
    np.testing.assert_allclose(logits, expect, rtol=1e-4, atol=1e-3)
    assert (logits.argmax(1) == expect.argmax(1)).all()
    return compared


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
