"""Binary building blocks: sign with a straight-through gradient, binary conv and linear.

Convention used everywhere in bnnprune (training, flip tracking, packing):
``sign(x) = +1 if x >= 0 else -1``. Packed bits store ``1`` for ``-1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = [
    "PER_CHANNEL_TYPES",
    "RPReLU",
    "RSign",
    "BinaryConv2d",
    "BinaryLinear",
    "ClippingHook",
    "attach_clipping",
    "binarize",
    "binary_layers",
    "clip_latent_weights",
    "is_binary_layer",
    "sign",
]


def sign(x: torch.Tensor) -> torch.Tensor:
    """Hard sign with sign(0) = +1 (so every value maps to exactly one bit; NaN -> -1).

    The ±1 are 0-dim tensors of ``x``'s dtype broadcast by ``where``: two passes over ``x``'s
    size (compare, select) instead of five (two ``ones_like``, a negation besides)."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)


class _SignSTE(torch.autograd.Function):
    """sign() forward; straight-through gradient where |x| <= 1, zero elsewhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Binarize to ±1 with the straight-through estimator (Courbariaux et al. 2016)."""
    return _SignSTE.apply(x)


def _check_pad_value(pad_value: float) -> float:
    if pad_value not in (1.0, -1.0):
        raise ValueError(
            f"pad_value must be +1 or -1 so the padded input stays binary, got {pad_value}"
        )
    return float(pad_value)


class BinaryConv2d(nn.Conv2d):
    """Conv2d whose input activations and weights are binarized to ±1.

    - ``pad_value``: the border is padded with this binary value (+1 or -1), not zeros, so
      a bit-packed engine reproduces the layer exactly.
    - ``scale``: multiply each output channel by mean |w| of its latent filter (XNOR-Net).
    - ``clip``: latent weights are clipped to [-clip, clip] by :func:`clip_latent_weights`,
      or after every optimizer step by :func:`attach_clipping` (``None`` disables it).
    - ``binarize_input``: set False to feed real-valued inputs (weights stay binary).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        pad_value: float = 1.0,
        scale: bool = False,
        clip: float | None = 1.0,
        binarize_input: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias
        )
        self.pad_value = _check_pad_value(pad_value)
        self.scale = bool(scale)
        self.clip = clip
        self.binarize_input = bool(binarize_input)

    def binary_weight(self) -> torch.Tensor:
        """The ±1 weights used in the forward pass (with the optional per-channel scale)."""
        wb = binarize(self.weight)
        if self.scale:
            wb = wb * self.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return wb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binarize_input:
            x = binarize(x)
        ph, pw = self.padding  # type: ignore[misc]
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
        return F.conv2d(
            x, self.binary_weight(), self.bias, self.stride, 0, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", pad_value={self.pad_value:+g}, scale={self.scale}, clip={self.clip}"
            + ("" if self.binarize_input else ", binarize_input=False")
        )


class BinaryLinear(nn.Linear):
    """Linear layer whose inputs and weights are binarized to ±1 (see :class:`BinaryConv2d`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        scale: bool = False,
        clip: float | None = 1.0,
        binarize_input: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.scale = bool(scale)
        self.clip = clip
        self.binarize_input = bool(binarize_input)

    def binary_weight(self) -> torch.Tensor:
        wb = binarize(self.weight)
        if self.scale:
            wb = wb * self.weight.abs().mean(dim=1, keepdim=True)
        return wb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.binarize_input:
            x = binarize(x)
        return F.linear(x, self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale}, clip={self.clip}"


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (C,) parameter shaped to broadcast over the channel dimension of (N, C, ...) ``x``."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


class RSign(nn.Module):
    """ReActNet's RSign: ``sign(x + shift_c)``, a sign with a learnable per-channel threshold.

    The straight-through gradient reaches ``x`` and ``shift``. A binary layer after it
    binarizes ±1 again without change; the engine folds ``shift`` into its thresholds.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(int(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binarize(x + _per_channel(self.shift, x))

    def extra_repr(self) -> str:
        return f"{self.shift.numel()}"


class RPReLU(nn.Module):
    """ReActNet's RPReLU: ``prelu(x + shift_in_c, slope_c) + shift_out_c`` (per channel).

    A learnable activation for real-valued paths (after a residual add).
    """

    def __init__(self, channels: int, slope: float = 0.25) -> None:
        super().__init__()
        c = int(channels)
        self.shift_in = nn.Parameter(torch.zeros(c))
        self.slope = nn.Parameter(torch.full((c,), float(slope)))
        self.shift_out = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.prelu(x + _per_channel(self.shift_in, x), self.slope)
        return y + _per_channel(self.shift_out, x)

    def extra_repr(self) -> str:
        return f"{self.slope.numel()}"


# Modules whose parameters are all (C,) vectors over the channels of their input and output:
# channel surgery slices them, and resizing a pruned model rebuilds them at the new width.
PER_CHANNEL_TYPES = (RSign, RPReLU)

BINARY_LAYER_TYPES = (BinaryConv2d, BinaryLinear)


def is_binary_layer(module: nn.Module) -> bool:
    return isinstance(module, BINARY_LAYER_TYPES)


def binary_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every binary layer of ``model`` by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if is_binary_layer(m)}


@torch.no_grad()
def clip_latent_weights(model: nn.Module) -> None:
    """Clip each binary layer's latent weights to [-clip, clip] (call after optimizer.step)."""
    for m in binary_layers(model).values():
        if m.clip is not None:
            m.weight.clamp_(-m.clip, m.clip)


@dataclass
class ClippingHook:
    """Clips ``model``'s latent weights after every step of one optimizer (see
    :func:`attach_clipping`); :meth:`detach` stops it."""

    model: nn.Module
    handle: RemovableHandle

    def detach(self) -> None:
        self.handle.remove()


def attach_clipping(model: nn.Module, optimizer: torch.optim.Optimizer) -> ClippingHook:
    """Call :func:`clip_latent_weights` after every ``optimizer.step()`` (a post-step hook),
    so a hand-written training loop needs no extra call."""
    if not binary_layers(model):
        raise ValueError("model has no binary layers whose latent weights need clipping")
    handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: clip_latent_weights(model))
    return ClippingHook(model, handle)
