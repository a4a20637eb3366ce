"""Counting rules shared by :func:`count_bops` and the summary, and the hooked dummy forward.

One rule decides what a multiply-accumulate costs, as in larq: a MAC's precision is the
larger bit width of its two operands. So only layers whose inputs *and* weights are
binarized produce BOPs (XNOR-popcount work); a binary layer fed real-valued inputs
(``binarize_input=False``) does float MACs, as does every full-precision conv / linear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from bnnprune.nn import is_binary_layer

__all__ = [
    "binary_channels",
    "count_bops",
    "is_bop_layer",
    "layer_macs",
]

Hook = Callable[[nn.Module, tuple, object], None]


def is_bop_layer(module: nn.Module) -> bool:
    """True for a binary layer whose input activations are binarized too (XNOR-popcount)."""
    return is_binary_layer(module) and bool(getattr(module, "binarize_input", True))


def layer_macs(module: nn.Module, inputs: tuple, output: object) -> int:
    """Multiply-accumulates of one call of a conv / linear layer on a batch of one.

    Convolution and linear: K * output elements, with K = in_channels/groups * kh * kw
    (or in_features), i.e. ``weight[0].numel()``. A transposed convolution scatters each
    input element into ``weight[0].numel()`` outputs. Any other module counts 0.
    """
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        driver = inputs[0] if inputs else None
    elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        driver = output
    else:
        return 0
    if not isinstance(driver, torch.Tensor):
        return 0
    return int(driver.numel()) * module.weight[0].numel()


def check_input_shape(input_shape: object) -> tuple[int, int, int]:
    """Return ``input_shape`` as a (C, H, W) tuple of positive ints, or raise ValueError."""
    ok = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == 3
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    )
    if not ok:
        raise ValueError(
            f"input_shape must be a (C, H, W) tuple of 3 positive ints, got {input_shape!r}"
        )
    return tuple(int(d) for d in input_shape)  # type: ignore[return-value]


def _dummy_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """A zero batch of one on the device and in the float dtype the model holds."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return torch.zeros(1, *input_shape, device=t.device, dtype=t.dtype)
    return torch.zeros(1, *input_shape)


@torch.no_grad()
def run_with_hooks(
    model: nn.Module, input_shape: tuple[int, int, int], modules: Iterable[nn.Module], hook: Hook
) -> None:
    """One eval-mode forward pass of a zero input with ``hook`` on ``modules``.

    Every module's own train/eval flag is restored afterwards (not just the root's), so a
    model with frozen sub-modules comes back exactly as it was. A forward that fails on the
    shape becomes a one-line ValueError.
    """
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        model.eval()
        x = _dummy_input(model, input_shape)
        try:
            model(x)
        except Exception as e:  # any failure inside a user's forward means "wrong input"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ValueError(
                f"model does not accept input (C, H, W) = {tuple(input_shape)}: {first}"
            ) from e
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training


def count_bops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Binary multiply-accumulates (BOPs) of one forward pass on an input of shape (C, H, W).

    A plain single forward with hooks on the binary layers only, so it stays cheap enough
    for pruning loops; it equals :func:`bnnprune.metrics.summarize`'s ``bops``.
    """
    shape = check_input_shape(input_shape)
    total = 0

    def hook(m: nn.Module, inp: tuple, out: object) -> None:
        nonlocal total
        total += layer_macs(m, inp, out)

    run_with_hooks(model, shape, [m for m in model.modules() if is_bop_layer(m)], hook)
    return total


def binary_channels(model: nn.Module) -> dict[str, int]:
    """Output-channel (or out-feature) count of every binary layer, by qualified name.

    Read from the weight's shape, which is what the forward pass uses, so it stays right
    after channel surgery that does not update ``out_channels``.
    """
    return {
        name: int(m.weight.shape[0]) for name, m in model.named_modules() if is_binary_layer(m)
    }
