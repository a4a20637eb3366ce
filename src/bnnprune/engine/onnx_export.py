"""ONNX export of the float-simulated BNN (±1 activations and weights as float ops)."""

from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from bnnprune.engine.errors import EngineError
from bnnprune.nn import BinaryConv2d, BinaryLinear, RSign

__all__ = ["export_onnx"]


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _ExportConv(nn.Module):
    """BinaryConv2d with its weights binarized (and scaled) once, as plain float ops."""

    def __init__(self, m: BinaryConv2d) -> None:
        super().__init__()
        self.register_buffer("weight", m.binary_weight().detach().clone())
        self.register_buffer("bias", m.bias.detach().clone() if m.bias is not None else None)
        self.stride, self.padding = m.stride, m.padding
        self.pad_value, self.binarize_input = m.pad_value, m.binarize_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binarize_input:
            x = _sign(x)
        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
        return F.conv2d(x, self.weight, self.bias, self.stride)


class _ExportLinear(nn.Module):
    def __init__(self, m: BinaryLinear) -> None:
        super().__init__()
        self.register_buffer("weight", m.binary_weight().detach().clone())
        self.register_buffer("bias", m.bias.detach().clone() if m.bias is not None else None)
        self.binarize_input = m.binarize_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_sign(x) if self.binarize_input else x, self.weight, self.bias)


class _ExportRSign(nn.Module):
    """RSign as ``sign(x + shift)`` without its autograd function."""

    def __init__(self, m: RSign) -> None:
        super().__init__()
        self.register_buffer("shift", m.shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sign(x + self.shift.view(1, -1, *([1] * (x.dim() - 2))))


def _swap_binary_layers(model: nn.Module) -> nn.Module:
    for name, child in list(model.named_children()):
        if isinstance(child, BinaryConv2d):
            setattr(model, name, _ExportConv(child))
        elif isinstance(child, BinaryLinear):
            setattr(model, name, _ExportLinear(child))
        elif isinstance(child, RSign):
            setattr(model, name, _ExportRSign(child))
        else:
            _swap_binary_layers(child)
    return model


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | os.PathLike[str],
                input_shape: tuple[int, int, int], opset: int = 17) -> None:
    """Write ``model`` (eval mode) as ONNX: input "input", output "logits", dynamic batch.

    Binary layers become float ops on ±1 values (sign as Where, ±1 padding as Pad), so any
    ONNX runtime reproduces PyTorch; runtimes that fuse BatchNorm into a convolution may flip
    a sign where a pre-activation is exactly zero."""
    if len(tuple(input_shape)) != 3:
        raise EngineError(f"input_shape must be (C, H, W), got {input_shape}")
    sim = _swap_binary_layers(copy.deepcopy(model).cpu().float().eval())
    dummy = torch.zeros(1, *(int(s) for s in input_shape))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(sim, (dummy,), os.fspath(path), dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise EngineError(f"ONNX export failed: {str(e).splitlines()[0]}") from None
