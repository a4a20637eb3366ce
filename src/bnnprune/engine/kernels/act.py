"""Float elementwise ops: the per-channel activation ``prelu(x + shift, slope) + bias``
(PReLU, RPReLU), the per-channel affine ``x * alpha + beta`` and the residual add.

float32 throughout, rounded after each operation as PyTorch does (numba contracts no
``a * b + c`` into an FMA)."""

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


@njit(cache=True)
def _affine_rows(x, alpha, beta, out, r_lo, r_hi):
    c = x.shape[1]
    for r in range(r_lo, r_hi):
        for k in range(c):
            out[r, k] = x[r, k] * alpha[k] + beta[k]


_affine_par, _affine_ser = twins(_affine_rows)


def affine_call(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray, out: np.ndarray,
                threads: int | None = None) -> Callable[[], None]:
    """Validate ``out = x * alpha + beta`` over the last (channel) axis."""
    need(x.dtype == np.float32 and x.ndim >= 1 and x.flags.c_contiguous, "float32 input")
    need(out.dtype == np.float32 and out.shape == x.shape and out.flags.c_contiguous, "out")
    c = int(x.shape[-1])
    for a in (alpha, beta):
        need(a.dtype == np.float32 and a.shape == (c,), "per-channel float32 (C,)")
    rows = int(x.size) // max(c, 1)
    if not rows:
        return noop
    par = use_parallel(rows * c * 0.3, threads)
    fn = _affine_par if par else _affine_ser
    return functools.partial(fn, rows, chunks(rows) if par else 1, x.reshape(rows, c), alpha,
                             beta, out.reshape(rows, c))


@njit(cache=True)
def _add_rows(x, b, out, r_lo, r_hi):
    c = x.shape[1]
    for r in range(r_lo, r_hi):
        for k in range(c):
            out[r, k] = x[r, k] + b[r, k]


_add_par, _add_ser = twins(_add_rows)


def add_call(x: np.ndarray, b: np.ndarray, out: np.ndarray,
             threads: int | None = None) -> Callable[[], None]:
    """Validate ``out = x + b`` (same shapes; ``out`` may be ``x`` or ``b``)."""
    for a in (x, b, out):
        need(a.dtype == np.float32 and a.ndim >= 1 and a.flags.c_contiguous, "float32 arrays")
    need(x.shape == b.shape == out.shape, "same shapes")
    c = int(x.shape[-1])
    rows = int(x.size) // max(c, 1)
    if not rows:
        return noop
    par = use_parallel(rows * c * 0.3, threads)
    fn = _add_par if par else _add_ser
    return functools.partial(fn, rows, chunks(rows) if par else 1, x.reshape(rows, c),
                             b.reshape(rows, c), out.reshape(rows, c))
