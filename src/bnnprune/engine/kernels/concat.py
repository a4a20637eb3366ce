"""Channel concatenation of packed bits: each input's words shifted to its channel offset."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import chunks, need, noop, twins, use_parallel, words


@njit(cache=True)
def _concat_bits_rows(xs, offs, out, r_lo, r_hi):
    wout = out.shape[1]
    for r in range(r_lo, r_hi):
        for k in range(wout):
            out[r, k] = 0
        for j in range(len(xs)):
            x = xs[j]
            i0 = offs[j] >> 6
            s = offs[j] & 63
            if s == 0:
                for k in range(x.shape[1]):
                    out[r, i0 + k] |= x[r, k]
            else:
                sl = np.uint64(s)
                sr = np.uint64(64 - s)
                for k in range(x.shape[1]):
                    v = x[r, k]
                    out[r, i0 + k] |= v << sl
                    if i0 + k + 1 < wout:
                        out[r, i0 + k + 1] |= v >> sr


_concat_bits_par, _concat_bits_ser = twins(_concat_bits_rows)


def concat_bits_call(xs: list[np.ndarray], channels: list[int], out: np.ndarray,
                     threads: int | None = None) -> Callable[[], None]:
    """Validate concatenating packed (..., words(c_i)) inputs along channels into ``out``.

    Input ``i`` lands at channel ``sum(c_j, j < i)``; the inputs' unused high bits are 0, so
    ``out`` keeps that invariant.
    """
    need(len(xs) == len(channels) and len(xs) >= 1, "one channel count per input")
    need(out.dtype == np.uint64 and out.flags.c_contiguous and out.ndim >= 1, "out bits")
    lead = out.shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    offs = np.zeros(len(xs), np.int64)
    total = 0
    flat = []
    for i, (x, c) in enumerate(zip(xs, channels, strict=True)):
        need(x.dtype == np.uint64 and x.flags.c_contiguous and x.shape[:-1] == lead
             and c >= 1 and x.shape[-1] == words(c), f"input {i} (..., words(c))")
        offs[i] = total
        total += int(c)
        flat.append(x.reshape(rows, -1))
    need(out.shape[-1] == words(total), "out (..., words(sum c))")
    if not rows:
        return noop
    par = use_parallel(rows * out.shape[-1] * 2.0, threads)
    fn = _concat_bits_par if par else _concat_bits_ser
    return functools.partial(fn, rows, chunks(rows) if par else 1, tuple(flat), offs,
                             out.reshape(rows, -1))
