"""Folding float post-processing into integer thresholds and float affine terms.

A binary layer computes the exact integer ``d = K - 2p`` from ``p = popcount(x XOR w)``
(mismatches over K valid bits). Everything between it and the next sign() -- the weight
scale, a bias, BatchNorm, Hardtanh/ReLU -- is per channel and monotone in ``d``, so
``sign(f_c(d))`` is a threshold function of ``p``: bit (= -1) iff ``(p > thr_c) xor flip_c``.
The threshold is found by evaluating the real PyTorch modules on candidate values (a
binary search over ``p``), so it reproduces PyTorch's float rounding exactly, and negative
gammas (flip) and constant channels (zero gamma: thr = -1 or K) need no special case.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from bnnprune.engine.errors import EngineError

__all__ = ["bn_affine", "fold_threshold", "popcount_candidates"]


def bn_affine(bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as float32 ``x * alpha + beta`` (equal to PyTorch within rounding).

    alpha = gamma / sqrt(var + eps) and beta = bias - mean * alpha, all in float32.
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise EngineError(f"expected a BatchNorm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise EngineError("BatchNorm without running statistics (track_running_stats=False) "
                          "normalizes with batch statistics even in eval mode")
    n = bn.num_features
    mean = bn.running_mean.detach().cpu().numpy().astype(np.float32)
    var = bn.running_var.detach().cpu().numpy().astype(np.float32)
    gamma = (bn.weight.detach().cpu().numpy().astype(np.float32) if bn.weight is not None
             else np.ones(n, np.float32))
    bias = (bn.bias.detach().cpu().numpy().astype(np.float32) if bn.bias is not None
            else np.zeros(n, np.float32))
    invstd = np.float32(1.0) / np.sqrt(var + np.float32(bn.eps))
    alpha = (invstd * gamma).astype(np.float32)
    beta = (bias - mean * alpha).astype(np.float32)
    return alpha, beta


def popcount_candidates(nbits: int, p: torch.Tensor, mul: torch.Tensor,
                        add: torch.Tensor) -> torch.Tensor:
    """Layer output before post-processing for popcounts ``p``: (K - 2p) * mul + add, float32."""
    return (nbits - 2 * p).to(torch.float32) * mul + add


@torch.no_grad()
def fold_threshold(
    nbits: int,
    mul: np.ndarray,
    add: np.ndarray,
    post: Callable[[torch.Tensor], torch.Tensor],
    spatial: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(thr int32, flip uint8)``: sign(post(d*mul+add)) = -1 iff (p > thr) ^ flip.

    ``post`` maps a (1, C, 1, 1) tensor (``spatial``) or a (1, C) tensor to the same shape;
    it must be monotone per channel (BatchNorm, Hardtanh, ReLU, identity).
    """
    c = int(mul.shape[0])
    mul_t = torch.from_numpy(np.asarray(mul, np.float32))
    add_t = torch.from_numpy(np.asarray(add, np.float32))

    def negative(p: torch.Tensor) -> torch.Tensor:
        y = popcount_candidates(nbits, p, mul_t, add_t)
        z = post(y.reshape(1, c, 1, 1) if spatial else y.reshape(1, c)).reshape(c)
        return ~(z >= 0)

    zero = torch.zeros(c, dtype=torch.int64)
    full = torch.full((c,), int(nbits), dtype=torch.int64)
    neg0, negk = negative(zero), negative(full)
    lo, hi = zero.clone(), full.clone()
    switching = neg0 != negk
    while bool(((hi - lo) > 1)[switching].any()):
        mid = (lo + hi) // 2
        same = negative(mid) == neg0
        lo = torch.where(switching & same, mid, lo)
        hi = torch.where(switching & ~same, mid, hi)
    # p* = hi is the first popcount whose sign differs from p = 0
    thr = torch.where(switching, hi - 1, torch.where(neg0, -1, int(nbits)))
    flip = (switching & neg0).to(torch.uint8)
    return thr.to(torch.int32).numpy(), flip.numpy()
