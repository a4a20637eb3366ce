"""The premise check: flip the signs of chosen binary weights of a trained BNN, no retraining.

If weights that flip often near the end of training are the ones the accuracy is least
sensitive to, then flipping the signs of the *highest*-WFF weights should hurt accuracy the
least, the *lowest*-WFF weights the most, and random weights in between. The smallest
latent magnitudes are the obvious rival (a weight near zero is one step from flipping).

Weights are chosen per binary layer (``fraction`` of every layer), so every layer is hit
equally and a layer with many flips cannot absorb the whole budget. Flip counts are whole
numbers with many ties (most weights never flip in the window); ties are broken at random
with ``seed``, so past the fraction of weights that flipped at all, "highest WFF" continues
with weights chosen at random among those that never flipped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from bnnprune.nn import binary_layers
from bnnprune.prune.sensitivity import check_flip_data

__all__ = ["CHOICES", "choose_weights", "flip_signs", "premise_curve"]

CHOICES = ("highest_wff", "lowest_wff", "random", "smallest_magnitude")


def _order_key(choice: str, counts: torch.Tensor, weight: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
    """A key whose *largest* entries are flipped first (ties broken at random)."""
    noise = torch.rand(counts.shape, generator=gen, dtype=torch.float64)
    c = counts.detach().cpu().to(torch.float64)
    if choice == "highest_wff":
        return c + 0.5 * noise  # integer counts: the noise only orders equal counts
    if choice == "lowest_wff":
        return -c + 0.5 * noise
    if choice == "random":
        return noise
    if choice == "smallest_magnitude":
        return -weight.detach().cpu().abs().to(torch.float64)
    raise ValueError(f"unknown weight choice {choice!r}; choose from {', '.join(CHOICES)}")


def choose_weights(
    model: nn.Module,
    counts: Mapping[str, torch.Tensor],
    fraction: float,
    choice: str,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Boolean masks (per binary layer) of the ``fraction`` of weights ``choice`` selects."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if choice not in CHOICES:
        raise ValueError(f"unknown weight choice {choice!r}; choose from {', '.join(CHOICES)}")
    check_flip_data(counts, model)
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, layer in binary_layers(model).items():
        key = _order_key(choice, counts[name], layer.weight, gen).flatten()
        k = round(fraction * key.numel())
        mask = torch.zeros(key.numel(), dtype=torch.bool)
        if k:
            mask[torch.topk(key, k).indices] = True
        masks[name] = mask.view_as(layer.weight)
    return masks


@torch.no_grad()
def flip_signs(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose binary weights under ``masks`` have the opposite sign.

    A latent weight of exactly 0 binarizes to +1 (sign(0) = +1), so it becomes a tiny
    negative number instead of -0.
    """
    out = copy.deepcopy(model)
    for name, layer in binary_layers(out).items():
        m = masks[name].to(layer.weight.device)
        w = layer.weight
        tiny = torch.finfo(w.dtype).tiny
        flipped = torch.where(w >= 0, -torch.clamp(w, min=tiny), -w)
        w.copy_(torch.where(m, flipped, w))
    return out


def premise_curve(
    model: nn.Module,
    counts: Mapping[str, torch.Tensor],
    fractions: Iterable[float],
    evaluate: Callable[[nn.Module], float],
    choices: Iterable[str] = CHOICES,
    seed: int = 0,
) -> dict[str, list[float]]:
    """``evaluate`` (accuracy) after flipping each fraction of weights by each choice."""
    fractions = list(fractions)
    return {
        choice: [
            evaluate(flip_signs(model, choose_weights(model, counts, f, choice, seed)))
            for f in fractions
        ]
        for choice in choices
    }
