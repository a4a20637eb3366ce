"""Operation and memory counting: binary MACs (BOPs), float MACs, parameters, memory."""

from __future__ import annotations

import torch
from torch import nn

from bnnprune.nn import is_binary_layer

__all__ = ["count_bops"]


@torch.no_grad()
def count_bops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Binary multiply-accumulates of one forward pass on an input of shape (C, H, W)."""
    total = 0

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        per_out = m.weight[0].numel()  # K = cin/groups * kh * kw (or in_features)
        total += per_out * out[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if is_binary_layer(m)]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return int(total)
