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


def _channel_call(drivers: tuple[Callable, Callable], x: np.ndarray, out: np.ndarray,
                  per_channel: tuple[np.ndarray, ...], like_x: tuple[np.ndarray, ...],
                  ns_per_value: float, threads: int | None) -> Callable[[], None]:
    """The checks and the bound call shared by the elementwise ops over the last (channel)
    axis: float32 C-contiguous ``x``, ``out`` and ``like_x`` of ``x``'s shape, ``per_channel``
    vectors of its channels; the kernel gets ``x``, the ``per_channel`` vectors, the ``like_x``
    arrays and ``out`` as (rows, C)."""
    for a in (x, out, *like_x):
        need(a.dtype == np.float32 and a.ndim >= 1 and a.flags.c_contiguous, "float32 arrays")
        need(a.shape == x.shape, "same shapes")
    c = int(x.shape[-1])
    for a in per_channel:
        need(a.dtype == np.float32 and a.shape == (c,), "per-channel float32 (C,)")
    rows = int(x.size) // max(c, 1)
    if not rows:
        return noop
    par = use_parallel(rows * c * ns_per_value, threads)
    fn = drivers[0] if par else drivers[1]
    return functools.partial(fn, rows, chunks(rows) if par else 1, x.reshape(rows, c),
                             *per_channel, *(a.reshape(rows, c) for a in like_x),
                             out.reshape(rows, c))


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
    """Validate ``out = prelu(x + shift, slope) + bias`` over the last (channel) axis."""
    return _channel_call((_prelu_par, _prelu_ser), x, out, (shift, slope, bias), (), 0.5,
                         threads)


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
    return _channel_call((_affine_par, _affine_ser), x, out, (alpha, beta), (), 0.3, threads)


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
    return _channel_call((_add_par, _add_ser), x, out, (), (b,), 0.3, threads)
