"""Pooling over NHWC: max of packed bits (an AND), float max and average, adaptive average."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import chunks, need, noop, twins, use_parallel


def pool_out_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of a pooling window, with PyTorch's ceil-mode rule."""
    num = size + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@njit(inline="always")
def _and_window(xf, of, o, wd, row0, rstep, ny, xlo, nx):
    """AND of ``ny`` x ``nx`` pixels' words (rows ``rstep`` apart from ``row0``, columns from
    ``xlo``) into ``of[o..o+wd]``."""
    uwd = np.uint64(wd)
    for k in range(wd):
        acc = ~np.uint64(0)
        for yy in range(ny):
            # flat unsigned indices: no negative-index wraparound in the inner loop
            src = np.uint64(row0 + yy * rstep + xlo * wd + k)
            for _ in range(nx):
                acc &= xf[src]
                src += uwd
        of[o + np.uint64(k)] = acc


@njit(cache=True)
def _maxpool_bits_rows(x, kh, kw, sh, sw, ph, pw, out, r_lo, r_hi):
    n, h, w, wd = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    xf = x.reshape(-1)
    of = out.reshape(-1)
    uwd = np.uint64(wd)
    rstep = w * wd
    pairs = kh == 2 and kw == 2 and sw == 2 and pw == 0
    for t in range(r_lo, r_hi):
        b = t // ho
        oy = t - b * ho
        y0 = oy * sh - ph
        ylo = max(y0, 0)
        yhi = min(y0 + kh, h)
        row0 = (b * h + ylo) * rstep
        o = np.uint64(t * wo * wd)
        first = 0
        if pairs and yhi - ylo == 2:
            # the common 2x2 / stride 2 pool: a row's whole windows in one vector loop of four
            # loads per word (flat unsigned indices, no per-pixel bounds)
            first = min(wo, w // 2)
            s0 = np.uint64(row0)
            s1 = s0 + np.uint64(rstep)
            if wd == 1:
                one = np.uint64(1)
                for i in range(np.uint64(first)):
                    j = i + i
                    of[o + i] = xf[s0 + j] & xf[s0 + j + one] & xf[s1 + j] & xf[s1 + j + one]
            else:
                for i in range(np.uint64(first) * uwd):
                    j = i + i - i % uwd
                    of[o + i] = xf[s0 + j] & xf[s0 + j + uwd] & xf[s1 + j] & xf[s1 + j + uwd]
            o += np.uint64(first) * uwd
        for ox in range(first, wo):
            x0 = ox * sw - pw
            xlo = max(x0, 0)
            xhi = min(x0 + kw, w)
            _and_window(xf, of, o, wd, row0, rstep, yhi - ylo, xlo, xhi - xlo)
            o += uwd


@njit(cache=True)
def _maxpool_float_rows(x, kh, kw, sh, sw, ph, pw, out, r_lo, r_hi):
    n, h, w, c = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    # the running maxima live in a scratch row (whole 64-byte lines, the output row may split
    # them) and each output row is written once, contiguously
    acc = np.empty(-(-c // 16) * 16, np.float32)
    for t in range(r_lo, r_hi):
        b = t // ho
        oy = t - b * ho
        y0 = oy * sh - ph
        for ox in range(wo):
            x0 = ox * sw - pw
            acc[:] = -np.inf
            for yy in range(max(y0, 0), min(y0 + kh, h)):
                for xx in range(max(x0, 0), min(x0 + kw, w)):
                    row = x[b, yy, xx]
                    for k in range(c):  # per channel: the same sequence of comparisons
                        v = row[k]
                        if v > acc[k] or np.isnan(v):
                            acc[k] = v
            o = out[b, oy, ox]
            for k in range(c):
                o[k] = acc[k]


@njit(cache=True)
def _avgpool_rows(x, kh, kw, sh, sw, ph, pw, include_pad, out, r_lo, r_hi):
    n, h, w, c = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    for t in range(r_lo, r_hi):
        b = t // ho
        oy = t - b * ho
        for ox in range(wo):
            y0 = oy * sh - ph
            x0 = ox * sw - pw
            y1 = min(y0 + kh, h + ph)
            x1 = min(x0 + kw, w + pw)
            pool = (y1 - y0) * (x1 - x0)
            y0 = max(y0, 0)
            x0 = max(x0, 0)
            y1 = min(y1, h)
            x1 = min(x1, w)
            div = np.float32(pool if include_pad else (y1 - y0) * (x1 - x0))
            o = out[b, oy, ox]
            o[:] = 0.0
            if y0 >= y1 or x0 >= x1:
                continue
            for yy in range(y0, y1):  # per channel: PyTorch's row-major float32 sum
                for xx in range(x0, x1):
                    row = x[b, yy, xx]
                    for k in range(c):
                        o[k] += row[k]
            for k in range(c):
                o[k] = o[k] / div


@njit(cache=True)
def _fpool_rows(kind, x, kh, kw, sh, sw, ph, pw, include_pad, out, r_lo, r_hi):
    if kind == 1:
        _maxpool_float_rows(x, kh, kw, sh, sw, ph, pw, out, r_lo, r_hi)
    else:
        _avgpool_rows(x, kh, kw, sh, sw, ph, pw, include_pad, out, r_lo, r_hi)


_bitpool_par, _bitpool_ser = twins(_maxpool_bits_rows)
_fpool_par, _fpool_ser = twins(_fpool_rows)


def _check_pool(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                ceil_mode: bool) -> tuple[int, int]:
    need(x.ndim == 4 and x.flags.c_contiguous, "4-D contiguous input")
    kh, kw = k
    sh, sw = s
    ph, pw = p
    need(min(kh, kw, sh, sw) >= 1 and min(ph, pw) >= 0, "positive window")
    need(2 * ph <= kh and 2 * pw <= kw, "padding at most half the window")
    ho = pool_out_size(x.shape[1], kh, sh, ph, ceil_mode)
    wo = pool_out_size(x.shape[2], kw, sw, pw, ceil_mode)
    need(ho >= 1 and wo >= 1, "non-empty output")
    return ho, wo


_POOL_KIND = {"maxpool_bits": (0, np.uint64), "maxpool": (1, np.float32),
              "avgpool": (2, np.float32)}


def pool_call(kind: str, x: np.ndarray, k: tuple[int, int], s: tuple[int, int],
              p: tuple[int, int], ceil_mode: bool, out: np.ndarray,
              count_include_pad: bool = True, threads: int | None = None) -> Callable[[], None]:
    """Validate a max-pool of bits (AND), a float max-pool or an average pool into ``out``."""
    code, dtype = _POOL_KIND[kind]
    need(x.dtype == dtype, f"{np.dtype(dtype)} input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    need(out.dtype == dtype and out.flags.c_contiguous
         and out.shape == (x.shape[0], ho, wo, x.shape[3]), "pool output shape")
    n = int(x.shape[0])
    if not n:
        return noop
    work = n * ho * wo * int(x.shape[3]) * k[0] * k[1] * (0.1 if code == 0 else 0.5)
    par = use_parallel(work, threads)
    window = (int(k[0]), int(k[1]), int(s[0]), int(s[1]), int(p[0]), int(p[1]))
    split = (n * ho, chunks(n * ho) if par else 1)
    if code == 0:
        fn = _bitpool_par if par else _bitpool_ser
        return functools.partial(fn, *split, x, *window, out)
    fn = _fpool_par if par else _fpool_ser
    return functools.partial(fn, *split, code, x, *window, bool(count_include_pad), out)


def run_maxpool_bits(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                     ceil_mode: bool) -> np.ndarray:
    """Max-pool of packed ±1 activations: with bit 1 = -1, max is the AND of the bits."""
    need(x.dtype == np.uint64, "bits input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.uint64)
    pool_call("maxpool_bits", x, k, s, p, ceil_mode, out)()
    return out


def run_maxpool_float(x: np.ndarray, k: tuple[int, int], s: tuple[int, int],
                      p: tuple[int, int], ceil_mode: bool) -> np.ndarray:
    """Float max-pool over NHWC with -inf padding (PyTorch semantics, NaN propagates)."""
    need(x.dtype == np.float32, "float32 input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    pool_call("maxpool", x, k, s, p, ceil_mode, out)()
    return out


def run_avgpool(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                ceil_mode: bool, count_include_pad: bool) -> np.ndarray:
    """Float average pool over NHWC, summing in PyTorch's CPU order (row-major, float32)."""
    need(x.dtype == np.float32, "float32 input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    pool_call("avgpool", x, k, s, p, ceil_mode, out, count_include_pad)()
    return out


@njit(cache=True)
def _adaptive_avgpool_rows(x, out, r_lo, r_hi):
    n, h, w, c = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    for t in range(r_lo, r_hi):
        b = t // ho
        oy = t - b * ho
        y0 = (oy * h) // ho
        y1 = -((-(oy + 1) * h) // ho)
        for ox in range(wo):
            x0 = (ox * w) // wo
            x1 = -((-(ox + 1) * w) // wo)
            o = out[b, oy, ox]
            o[:] = 0.0
            for yy in range(y0, y1):  # per channel: row-major float32 sum
                for xx in range(x0, x1):
                    row = x[b, yy, xx]
                    for k in range(c):
                        o[k] += row[k]
            dy = np.float32(y1 - y0)
            dx = np.float32(x1 - x0)
            for k in range(c):
                o[k] = o[k] / dy / dx


_adaptive_avgpool_par, _adaptive_avgpool_ser = twins(_adaptive_avgpool_rows)


def adaptive_avgpool_call(x: np.ndarray, out: np.ndarray,
                          threads: int | None = None) -> Callable[[], None]:
    """Validate an adaptive average pool of NHWC ``x`` into ``out`` (N, Ho, Wo, C)."""
    need(x.dtype == np.float32 and x.ndim == 4 and x.flags.c_contiguous, "float32 4-D")
    need(out.dtype == np.float32 and out.ndim == 4 and out.flags.c_contiguous, "float32 out")
    n, h, w, c = (int(v) for v in x.shape)
    ho, wo = int(out.shape[1]), int(out.shape[2])
    need(ho >= 1 and wo >= 1 and h >= 1 and w >= 1, "positive sizes")
    need(out.shape == (n, ho, wo, c), "output shape")
    if not n:
        return noop
    par = use_parallel(n * h * w * c * 0.5, threads)
    fn = _adaptive_avgpool_par if par else _adaptive_avgpool_ser
    return functools.partial(fn, n * ho, chunks(n * ho) if par else 1, x, out)


def run_adaptive_avgpool(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Adaptive average pool over NHWC (PyTorch's bin edges floor(i*H/o), ceil((i+1)*H/o))."""
    need(x.dtype == np.float32 and x.ndim == 4 and x.flags.c_contiguous, "float32 4-D")
    ho, wo = (int(v) for v in out_hw)
    need(ho >= 1 and wo >= 1 and x.shape[1] >= 1 and x.shape[2] >= 1, "positive sizes")
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    adaptive_avgpool_call(x, out)()
    return out
