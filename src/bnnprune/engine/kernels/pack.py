"""Sign packing of float activations (optionally through a per-channel affine) into bit words."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import F1, chunks, need, noop, twins, use_parallel, words


@njit(cache=True)
def _affine_pack_rows(y, alpha, beta, use_affine, out, r_lo, r_hi):
    c = y.shape[1]
    wd = out.shape[1]
    for r in range(r_lo, r_hi):
        for w in range(wd):
            word = np.uint64(0)
            for j in range(min(64, c - w * 64)):
                ch = w * 64 + j
                v = y[r, ch]
                if use_affine:
                    v = v * alpha[ch] + beta[ch]
                if not v >= 0:
                    word |= np.uint64(1) << np.uint64(j)
            out[r, w] = word


_affine_pack_par, _affine_pack_ser = twins(_affine_pack_rows)


def affine_pack_call(y: np.ndarray, out: np.ndarray, alpha: np.ndarray | None = None,
                     beta: np.ndarray | None = None,
                     threads: int | None = None) -> Callable[[], None]:
    """Validate packing the sign bits of ``y * alpha + beta`` (or of ``y``) into ``out``."""
    need(y.dtype == np.float32 and y.ndim >= 1 and y.flags.c_contiguous, "float32 input")
    c = int(y.shape[-1])
    need(c >= 1, "at least one channel")
    rows = int(y.size) // c
    need(out.dtype == np.uint64 and out.flags.c_contiguous
         and out.shape == y.shape[:-1] + (words(c),), "out (..., words(C))")
    use = alpha is not None
    if use:
        need(beta is not None and alpha.shape == (c,) and beta.shape == (c,), "affine (C,)")
        need(alpha.dtype == np.float32 and beta.dtype == np.float32, "affine float32")
    a = alpha if use else F1
    b = beta if use else F1
    if not rows:
        return noop
    par = use_parallel(rows * c * 0.6, threads)
    fn = _affine_pack_par if par else _affine_pack_ser
    return functools.partial(fn, rows, chunks(rows) if par else 1, y.reshape(rows, c), a, b, use,
                             out.reshape(rows, -1))


def run_affine_pack(y: np.ndarray, alpha: np.ndarray | None = None,
                    beta: np.ndarray | None = None) -> np.ndarray:
    """Sign bits of ``y * alpha + beta`` (or of ``y``) over the last axis, packed to words.

    Bit 1 means the value is negative or NaN (so sign(x) = -1), matching ``where(x >= 0, 1, -1)``.
    """
    need(y.dtype == np.float32 and y.ndim >= 1, "float32 input")
    c = int(y.shape[-1])
    need(c >= 1, "at least one channel")
    y = np.ascontiguousarray(y)
    out = np.empty(y.shape[:-1] + (words(c),), np.uint64)
    affine_pack_call(y, out, alpha, beta)()
    return out
