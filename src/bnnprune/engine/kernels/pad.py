"""Spatial padding of NHWC buffers (the border filled once, the interior copied per call), and
the network input's NCHW -> NHWC copy (into such an interior or a plain buffer)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import chunks, need, noop, twins, use_parallel


@njit(inline="always")
def _interior_row(t, h, hp, wp, ph, pw, c):
    """Image ``b``, row ``y`` and the flat (unsigned) offset in a padded (N, Hp, Wp, C)
    buffer of row ``t`` (N*H order) of its interior."""
    b = t // h
    y = t - b * h
    return b, y, np.uint64(((b * hp + y + ph) * wp + pw) * c)


@njit(cache=True)
def _pad_rows(x, ph, pw, out, r_lo, r_hi):
    n, h, w, c = x.shape
    hp = out.shape[1]
    wp = out.shape[2]
    xf = x.reshape(-1)
    of = out.reshape(-1)
    run = w * c  # an input row is one contiguous run of the output row
    for t in range(r_lo, r_hi):
        _, _, dst = _interior_row(t, h, hp, wp, ph, pw, c)
        # flat unsigned indices: a vectorised copy, no negative-index wraparound
        src = np.uint64(t * run)
        for i in range(np.uint64(run)):
            of[dst + i] = xf[src + i]


_pad_par, _pad_ser = twins(_pad_rows)


def pad_fill(out: np.ndarray, pad: tuple[int, int], pad_words: np.ndarray) -> None:
    """Fill the border of a padded (N, Hp, Wp, C) buffer with the per-pixel ``pad_words``."""
    ph, pw = pad
    out[:, :ph] = pad_words
    out[:, out.shape[1] - ph:] = pad_words
    out[:, :, :pw] = pad_words
    out[:, :, out.shape[2] - pw:] = pad_words


def pad_call(x: np.ndarray, pad: tuple[int, int], out: np.ndarray,
             threads: int | None = None) -> Callable[[], None]:
    """Validate copying ``x`` (N, H, W, C) into the interior of ``out`` (N, H+2ph, W+2pw, C).

    The border of ``out`` is not written (fill it once with :func:`pad_fill`).
    """
    need(x.ndim == 4 and x.flags.c_contiguous and out.flags.c_contiguous, "4-D contiguous")
    need(x.dtype == out.dtype, "same dtype")
    ph, pw = (int(p) for p in pad)
    n, h, w, c = (int(v) for v in x.shape)
    need(ph >= 0 and pw >= 0, "non-negative padding")
    need(out.shape == (n, h + 2 * ph, w + 2 * pw, c), "padded output shape")
    if not n:
        return noop
    par = use_parallel(n * h * w * c * 0.5, threads)
    fn = _pad_par if par else _pad_ser
    return functools.partial(fn, n * h, chunks(n * h) if par else 1, x, ph, pw, out)


def run_pad_bits(x: np.ndarray, pad: tuple[int, int], pad_words: np.ndarray) -> np.ndarray:
    """Pad packed (N, H, W, Wd) bits spatially with the per-pixel words ``pad_words`` (Wd,)."""
    need(x.dtype == np.uint64 and x.ndim == 4 and x.flags.c_contiguous, "bits 4-D")
    ph, pw = (int(p) for p in pad)
    need(ph >= 0 and pw >= 0, "non-negative padding")
    need(pad_words.dtype == np.uint64 and pad_words.shape == (x.shape[3],), "pad words (Wd,)")
    if ph == 0 and pw == 0:
        return x
    n, h, w, wd = x.shape
    out = np.empty((n, h + 2 * ph, w + 2 * pw, wd), np.uint64)
    pad_fill(out, (ph, pw), pad_words)
    pad_call(x, (ph, pw), out)()
    return out


@njit(cache=True)
def _nchw_rows(x, ph, pw, out, r_lo, r_hi):
    _, c, h, w = x.shape
    hp = out.shape[1]
    wp = out.shape[2]
    xf = x.reshape(-1)
    of = out.reshape(-1)
    uc = np.uint64(c)
    for t in range(r_lo, r_hi):
        b, y, dst = _interior_row(t, h, hp, wp, ph, pw, c)
        for k in range(c):
            src = np.uint64(((b * c + k) * h + y) * w)
            for i in range(np.uint64(w)):
                of[dst + i * uc + np.uint64(k)] = xf[src + i]


_nchw_par, _nchw_ser = twins(_nchw_rows)


def nchw_load_call(out: np.ndarray, pad: tuple[int, int] = (0, 0),
                   threads: int | None = None) -> Callable[[np.ndarray], None]:
    """The copy of float32 NCHW input into the interior of ``out`` (N, H+2ph, W+2pw, C), a
    C-contiguous float32 buffer (``pad`` (0, 0): the whole buffer), in place of numpy's copy
    of a transposed view. The returned function takes the input, whose shape its caller has
    checked.
    """
    need(out.ndim == 4 and out.dtype == np.float32 and out.flags.c_contiguous,
         "out float32 4-D contiguous")
    ph, pw = (int(p) for p in pad)
    n, h = int(out.shape[0]), int(out.shape[1]) - 2 * ph
    need(ph >= 0 and pw >= 0 and h >= 1 and int(out.shape[2]) > 2 * pw, "padding inside out")
    if not n:
        return lambda x: None
    par = use_parallel(out.size * 0.5, threads)
    fn, nchunks = (_nchw_par, chunks(n * h)) if par else (_nchw_ser, 1)
    return lambda x: fn(n * h, nchunks, np.ascontiguousarray(x), ph, pw, out)
