"""Dense bit patch matrix: the KH x KW taps of a window packed back to back.

When a window of per-pixel words wastes bits (channel counts that are not multiples of 64),
each output pixel's taps go into ``words(KH*KW*Cin)`` words and the GEMM runs on that matrix
(the weights repacked the same way by :func:`dense_bits`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import chunks, need, noop, twins, use_parallel, words


@njit(cache=True)
def _im2col_bits_rows(x, padw, kh, kw, sh, sw, ph, pw, cin, ho, wo, out, r_lo, r_hi):
    n, h, w, wd = x.shape
    kp = out.shape[1]
    xf = x.reshape(-1)
    of = out.reshape(-1)
    last = cin - (wd - 1) * 64  # bits in a tap's last word (1..64)
    for t in range(r_lo, r_hi):
        b = t // ho
        oy = t - b * ho
        o0 = t * wo * kp
        for j in range(wo * kp):
            of[o0 + j] = 0
        # one tap word at a time over the whole output row: its place in the patch row
        # (word wi, shift s, spill into wi + 1) is the same for every pixel
        for ky in range(kh):
            yy = oy * sh - ph + ky
            row_in = 0 <= yy < h
            rb = (b * h + yy) * w
            for kx in range(kw):
                # output pixels whose tap lies inside the row: lo <= ox < hi
                lo = min(max(0, -((kx - pw) // sw)), wo) if row_in else wo
                hi = max(min(wo, (w - 1 - kx + pw) // sw + 1), lo) if row_in else wo
                for k in range(wd):
                    pos = (ky * kw + kx) * cin + 64 * k
                    wi = pos >> 6
                    s = pos & 63
                    nb = 64 if k < wd - 1 else last
                    sl = np.uint64(s)
                    sr = np.uint64(64 - s)
                    spill = s + nb > 64
                    pv = padw[k]
                    for ox in range(0, lo):
                        o = o0 + ox * kp + wi
                        of[o] |= pv << sl
                        if spill:
                            of[o + 1] |= pv >> sr
                    src = (rb + kx - pw) * wd + k
                    if spill:
                        for ox in range(lo, hi):
                            v = xf[src + ox * sw * wd]
                            o = o0 + ox * kp + wi
                            of[o] |= v << sl
                            of[o + 1] |= v >> sr
                    else:
                        for ox in range(lo, hi):
                            of[o0 + ox * kp + wi] |= xf[src + ox * sw * wd] << sl
                    for ox in range(hi, wo):
                        o = o0 + ox * kp + wi
                        of[o] |= pv << sl
                        if spill:
                            of[o + 1] |= pv >> sr


_im2col_bits_par, _im2col_bits_ser = twins(_im2col_bits_rows)


def im2col_bits_call(x: np.ndarray, cin: int, k: tuple[int, int], s: tuple[int, int],
                     p: tuple[int, int], pad_words: np.ndarray, out: np.ndarray,
                     threads: int | None = None) -> Callable[[], None]:
    """Validate a dense bit im2col: every window of packed ``x`` (N, H, W, words(cin)) as one
    row of ``out`` (N*Ho*Wo, words(KH*KW*cin)), the ``cin`` bits of each tap placed right
    after the previous tap's (order ky, kx, channel); taps outside ``x`` read ``pad_words``.
    """
    need(x.dtype == np.uint64 and x.ndim == 4 and x.flags.c_contiguous, "bits 4-D")
    n, h, w, wd = (int(v) for v in x.shape)
    cin = int(cin)
    need(cin >= 1 and wd == words(cin), "input words match the channels")
    kh, kw = (int(v) for v in k)
    sh, sw = (int(v) for v in s)
    ph, pw = (int(v) for v in p)
    need(min(kh, kw, sh, sw) >= 1 and min(ph, pw) >= 0, "positive window")
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    need(ho >= 1 and wo >= 1, "window fits the padded input")
    kp = words(kh * kw * cin)
    need(out.dtype == np.uint64 and out.shape == (n * ho * wo, kp) and out.flags.c_contiguous,
         "out (N*Ho*Wo, words(KH*KW*Cin))")
    need(pad_words.dtype == np.uint64 and pad_words.shape == (wd,), "pad words (Wd,)")
    if not n:
        return noop
    work = n * ho * wo * (kh * kw * wd * 2 + kp) * 0.3
    par = use_parallel(work, threads)
    fn = _im2col_bits_par if par else _im2col_bits_ser
    return functools.partial(fn, n * ho, chunks(n * ho) if par else 1, x, pad_words, kh, kw,
                             sh, sw, ph, pw, cin, ho, wo, out)


def dense_bits(w: np.ndarray, cin: int) -> np.ndarray:
    """Packed weights (Co, KH, KW*words(cin)) -> dense rows (Co, 1, words(KH*KW*cin)).

    The same bit order as :func:`im2col_bits_call` (the weights are one "pixel" whose window
    covers all KH x KW taps).
    """
    co, kh, seg = w.shape
    wd = words(cin)
    need(seg % wd == 0, "weight rows are whole pixels")
    kw = seg // wd
    src = np.ascontiguousarray(w.reshape(co, 1, kh * kw, wd))
    out = np.empty((co, words(kh * kw * cin)), np.uint64)
    _im2col_bits_rows(src, np.zeros(wd, np.uint64), 1, kh * kw, 1, 1, 0, 0, cin, 1, 1, out, 0, co)
    return out.reshape(co, 1, -1)
