"""Per-channel float activations: ``prelu(x + shift, slope) + bias`` (PReLU, RPReLU)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import chunks, need, noop, twins, use_parallel


@njit(cache=True)
def _prelu_rows(x, shift, slope, bias, out, r_lo, r_hi):
    c = x.shape[1]
    for r in range(r_lo, r_hi):
        for k in range(c):
            t = x[r, k] + shift[k]
            if t < 0:
                t = t * slope[k]
            out[r, k] = t + bias[k]


_prelu_par, _prelu_ser = twins(_prelu_rows)


def prelu_call(x: np.ndarray, shift: np.ndarray, slope: np.ndarray, bias: np.ndarray,
               out: np.ndarray, threads: int | None = None) -> Callable[[], None]:
    """Validate ``out = prelu(x + shift, slope) + bias`` over the last (channel) axis.

    float32 throughout, rounded after each operation as PyTorch does.
    """
    need(x.dtype == np.float32 and x.ndim >= 1 and x.flags.c_contiguous, "float32 input")
    need(out.dtype == np.float32 and out.shape == x.shape and out.flags.c_contiguous, "out")
    c = int(x.shape[-1])
    for a in (shift, slope, bias):
        need(a.dtype == np.float32 and a.shape == (c,), "per-channel float32 (C,)")
    rows = int(x.size) // max(c, 1)
    if not rows:
        return noop
    par = use_parallel(rows * c * 0.5, threads)
    fn = _prelu_par if par else _prelu_ser
    return functools.partial(fn, rows, chunks(rows) if par else 1, x.reshape(rows, c), shift,
                             slope, bias, out.reshape(rows, c))
