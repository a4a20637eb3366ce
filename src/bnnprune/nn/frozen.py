"""Inference copies of the binary layers: weights binarized (and scaled) once, plain float ops.

A frozen layer computes what its training layer computes in eval mode (±1 inputs, ±1 padding,
the same ±1 or scaled weights), without the straight-through autograd function and without
re-binarizing the latent weights on every call. ONNX export and the PyTorch benchmark run
these copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnnprune.nn import BinaryConv2d, BinaryLinear, RSign, sign

__all__ = ["FrozenBinaryConv2d", "FrozenBinaryLinear", "FrozenRSign", "freeze_binary_layers"]


class FrozenBinaryConv2d(nn.Module):
    """BinaryConv2d with its weights binarized (and scaled) once, as plain float ops."""

    def __init__(self, m: BinaryConv2d) -> None:
        super().__init__()
        self.register_buffer("weight", m.binary_weight().detach().clone())
        self.register_buffer("bias", m.bias.detach().clone() if m.bias is not None else None)
        self.stride, self.padding = m.stride, m.padding
        self.pad_value, self.binarize_input = m.pad_value, m.binarize_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binarize_input:
            x = sign(x)
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
        return F.conv2d(x, self.weight, self.bias, self.stride)


class FrozenBinaryLinear(nn.Module):
    """BinaryLinear with its weights binarized (and scaled) once."""

    def __init__(self, m: BinaryLinear) -> None:
        super().__init__()
        self.register_buffer("weight", m.binary_weight().detach().clone())
        self.register_buffer("bias", m.bias.detach().clone() if m.bias is not None else None)
        self.binarize_input = m.binarize_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(sign(x) if self.binarize_input else x, self.weight, self.bias)


class FrozenRSign(nn.Module):
    """RSign as ``sign(x + shift)`` without its autograd function."""

    def __init__(self, m: RSign) -> None:
        super().__init__()
        self.register_buffer("shift", m.shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sign(x + self.shift.view(1, -1, *([1] * (x.dim() - 2))))


def freeze_binary_layers(model: nn.Module) -> nn.Module:
    """Replace every binary layer and RSign of ``model`` (in place) by its frozen copy."""
    for name, child in list(model.named_children()):
        if isinstance(child, BinaryConv2d):
            setattr(model, name, FrozenBinaryConv2d(child))
        elif isinstance(child, BinaryLinear):
            setattr(model, name, FrozenBinaryLinear(child))
        elif isinstance(child, RSign):
            setattr(model, name, FrozenRSign(child))
        else:
            freeze_binary_layers(child)
    return model
