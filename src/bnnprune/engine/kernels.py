"""Numba kernels of the packed engine: XNOR-popcount convolution, bit pooling, float helpers.

Layout: activations are channels-last. Binary activations are packed per pixel into
``words(C)`` 64-bit words (bit ``j`` of word ``w`` is channel ``64*w + j``; bit 1 = -1,
bit 0 = +1; unused high bits of the last word are always 0). Kernels never check bounds
themselves: the ``run_*`` wrappers check every shape first and raise :class:`EngineError`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from bnnprune.engine.errors import EngineError

__all__ = [
    "popcount64",
    "run_adaptive_avgpool",
    "run_affine_pack",
    "run_avgpool",
    "block_weights",
    "run_bconv",
    "run_im2col",
    "run_maxpool_bits",
    "run_maxpool_float",
    "run_pad_bits",
    "stream_xor_popcount",
    "words",
]

def words(channels: int) -> int:
    """Number of 64-bit words holding ``channels`` bits."""
    return (int(channels) + 63) // 64


@intrinsic
def popcount64(typingctx, x):  # noqa: ARG001
    """Population count of a 64-bit integer via LLVM's ``llvm.ctpop.i64`` (returns int64)."""
    if not (isinstance(x, types.Integer) and x.bitwidth == 64):
        return None

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, [args[0]])

    return types.int64(x), codegen


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise EngineError(f"kernel precondition failed: {what}")


# --------------------------------------------------------------------------- XNOR-popcount conv

BLOCK_CH = 16  # output channels per register block (one activation word feeds 16 popcounts)
TILE_PIX = 32  # output pixels that reuse one weight block while it sits in L1


def block_weights(w: np.ndarray) -> np.ndarray:
    """(Co, KH, L) packed weights -> (ceil(Co/16), KH, L, 16), zero-padded channels.

    Each activation word is then XORed with 16 contiguous weight words (register blocking).
    """
    co, kh, seg = w.shape
    cb = -(-co // BLOCK_CH)
    out = np.zeros((cb * BLOCK_CH, kh, seg), np.uint64)
    out[:co] = w
    return np.ascontiguousarray(out.reshape(cb, BLOCK_CH, kh, seg).transpose(0, 2, 3, 1))


@njit(parallel=True, cache=True)
def _bconv(xp, wb, co, wd, hp, wp, ho, wo, sh, sw, nbits, use_bits, thr, flip, m1, a1, m2, a2,
           out_b, out_f):
    ncb, kh, seg, _ = wb.shape
    m_total = out_b.shape[0] if use_bits else out_f.shape[0]
    hw = ho * wo
    rowstep = wp * wd
    ntiles = (m_total + TILE_PIX - 1) // TILE_PIX
    for tile in prange(ntiles):
        t0 = tile * TILE_PIX
        t1 = min(t0 + TILE_PIX, m_total)
        bases = np.empty(TILE_PIX, np.int64)
        for m in range(t0, t1):
            n = m // hw
            r = m - n * hw
            oy = r // wo
            bases[m - t0] = ((n * hp + oy * sh) * wp + (r - oy * wo) * sw) * wd
            if use_bits:
                for j in range(out_b.shape[1]):
                    out_b[m, j] = 0
        for cb in range(ncb):
            c0 = cb * BLOCK_CH
            nc = min(BLOCK_CH, co - c0)
            for m in range(t0, t1):
                base = bases[m - t0]
                a0 = 0; a1_ = 0; a2_ = 0; a3 = 0; a4 = 0; a5 = 0; a6 = 0; a7 = 0  # noqa: E702
                a8 = 0; a9 = 0; a10 = 0; a11 = 0; a12 = 0; a13 = 0; a14 = 0; a15 = 0  # noqa: E702
                for ky in range(kh):
                    o = base + ky * rowstep
                    for i in range(seg):
                        x = xp[o + i]
                        a0 += popcount64(x ^ wb[cb, ky, i, 0])
                        a1_ += popcount64(x ^ wb[cb, ky, i, 1])
                        a2_ += popcount64(x ^ wb[cb, ky, i, 2])
                        a3 += popcount64(x ^ wb[cb, ky, i, 3])
                        a4 += popcount64(x ^ wb[cb, ky, i, 4])
                        a5 += popcount64(x ^ wb[cb, ky, i, 5])
                        a6 += popcount64(x ^ wb[cb, ky, i, 6])
                        a7 += popcount64(x ^ wb[cb, ky, i, 7])
                        a8 += popcount64(x ^ wb[cb, ky, i, 8])
                        a9 += popcount64(x ^ wb[cb, ky, i, 9])
                        a10 += popcount64(x ^ wb[cb, ky, i, 10])
                        a11 += popcount64(x ^ wb[cb, ky, i, 11])
                        a12 += popcount64(x ^ wb[cb, ky, i, 12])
                        a13 += popcount64(x ^ wb[cb, ky, i, 13])
                        a14 += popcount64(x ^ wb[cb, ky, i, 14])
                        a15 += popcount64(x ^ wb[cb, ky, i, 15])
                if use_bits:
                    sh_ = c0 & 63
                    out_b[m, c0 >> 6] |= _bits16(
                        a0, a1_, a2_, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
                        thr, flip, c0, nc) << np.uint64(sh_)
                else:
                    _f(out_f, m, a0, nbits, m1, a1, m2, a2, c0, 0, nc)
                    _f(out_f, m, a1_, nbits, m1, a1, m2, a2, c0, 1, nc)
                    _f(out_f, m, a2_, nbits, m1, a1, m2, a2, c0, 2, nc)
                    _f(out_f, m, a3, nbits, m1, a1, m2, a2, c0, 3, nc)
                    _f(out_f, m, a4, nbits, m1, a1, m2, a2, c0, 4, nc)
                    _f(out_f, m, a5, nbits, m1, a1, m2, a2, c0, 5, nc)
                    _f(out_f, m, a6, nbits, m1, a1, m2, a2, c0, 6, nc)
                    _f(out_f, m, a7, nbits, m1, a1, m2, a2, c0, 7, nc)
                    _f(out_f, m, a8, nbits, m1, a1, m2, a2, c0, 8, nc)
                    _f(out_f, m, a9, nbits, m1, a1, m2, a2, c0, 9, nc)
                    _f(out_f, m, a10, nbits, m1, a1, m2, a2, c0, 10, nc)
                    _f(out_f, m, a11, nbits, m1, a1, m2, a2, c0, 11, nc)
                    _f(out_f, m, a12, nbits, m1, a1, m2, a2, c0, 12, nc)
                    _f(out_f, m, a13, nbits, m1, a1, m2, a2, c0, 13, nc)
                    _f(out_f, m, a14, nbits, m1, a1, m2, a2, c0, 14, nc)
                    _f(out_f, m, a15, nbits, m1, a1, m2, a2, c0, 15, nc)


@njit(inline="always")
def _b(p, thr, flip, c0, q, nc):
    if q >= nc:
        return np.uint64(0)
    c = c0 + q
    return np.uint64(1 if (p > thr[c]) != (flip[c] != 0) else 0) << np.uint64(q)


@njit(inline="always")
def _bits16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, thr, flip,
            c0, nc):
    return (_b(a0, thr, flip, c0, 0, nc) | _b(a1, thr, flip, c0, 1, nc)
            | _b(a2, thr, flip, c0, 2, nc) | _b(a3, thr, flip, c0, 3, nc)
            | _b(a4, thr, flip, c0, 4, nc) | _b(a5, thr, flip, c0, 5, nc)
            | _b(a6, thr, flip, c0, 6, nc) | _b(a7, thr, flip, c0, 7, nc)
            | _b(a8, thr, flip, c0, 8, nc) | _b(a9, thr, flip, c0, 9, nc)
            | _b(a10, thr, flip, c0, 10, nc) | _b(a11, thr, flip, c0, 11, nc)
            | _b(a12, thr, flip, c0, 12, nc) | _b(a13, thr, flip, c0, 13, nc)
            | _b(a14, thr, flip, c0, 14, nc) | _b(a15, thr, flip, c0, 15, nc))


@njit(inline="always")
def _f(out_f, m, p, nbits, m1, a1, m2, a2, c0, q, nc):
    if q < nc:
        c = c0 + q
        out_f[m, c] = (np.float32(nbits - 2 * p) * m1[c] + a1[c]) * m2[c] + a2[c]

_EMPTY_U64 = np.zeros((1, 1), np.uint64)
_EMPTY_F32 = np.zeros((1, 1), np.float32)
_F1 = np.zeros(1, np.float32)
_I1 = np.zeros(1, np.int32)
_U1 = np.zeros(1, np.uint8)


def run_bconv(
    xp: np.ndarray,
    wb: np.ndarray,
    co: int,
    stride: tuple[int, int],
    nbits: int,
    out_hw: tuple[int, int],
    *,
    thr: np.ndarray | None = None,
    flip: np.ndarray | None = None,
    affine: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """XNOR-popcount convolution of the padded packed input ``xp`` (N, Hp, Wp, Wd).

    ``wb`` holds the weights blocked by :func:`block_weights`: (ceil(Co/16), KH, KW*Wd, 16).
    With ``thr``/``flip`` the result is packed bits (N, Ho, Wo, words(Co)), bit =
    (popcount > thr) xor flip. With ``affine`` = (m1, a1, m2, a2) it is float32
    (N, Ho, Wo, Co) = ((K - 2*popcount) * m1 + a1) * m2 + a2 with K = ``nbits``.
    """
    _need(xp.dtype == np.uint64 and xp.ndim == 4 and xp.flags.c_contiguous, "xp uint64 4-D")
    _need(wb.dtype == np.uint64 and wb.ndim == 4 and wb.flags.c_contiguous, "w uint64 4-D")
    n, hp, wp, wd = (int(s) for s in xp.shape)
    ncb, kh, seg, blk = (int(s) for s in wb.shape)
    sh, sw = (int(s) for s in stride)
    ho, wo = (int(s) for s in out_hw)
    co = int(co)
    _need(blk == BLOCK_CH and ncb == -(-co // BLOCK_CH), "weight blocks match Co")
    _need(wd >= 1 and seg % wd == 0, "weight row length is a multiple of the input words")
    kw = seg // wd
    _need(min(co, kh, kw, sh, sw, ho, wo) >= 1 and n >= 0, "positive sizes")
    _need((ho - 1) * sh + kh <= hp and (wo - 1) * sw + kw <= wp, "window inside padded input")
    _need(0 <= nbits <= kh * kw * wd * 64, "bit count fits the words")
    m_total = n * ho * wo
    wdo = words(co)
    flat = xp.reshape(-1)
    if thr is not None:
        _need(flip is not None and affine is None, "threshold mode needs thr and flip only")
        _need(thr.dtype == np.int32 and thr.shape == (co,), "thr int32 (Co,)")
        _need(flip.dtype == np.uint8 and flip.shape == (co,), "flip uint8 (Co,)")
        out_b = np.empty((m_total, wdo), np.uint64)
        if m_total:
            _bconv(flat, wb, co, wd, hp, wp, ho, wo, sh, sw, nbits, True, thr, flip,
                   _F1, _F1, _F1, _F1, out_b, _EMPTY_F32)
        return out_b.reshape(n, ho, wo, wdo)
    _need(affine is not None and flip is None, "float mode needs the affine arrays")
    for a in affine:
        _need(a.dtype == np.float32 and a.shape == (co,), "affine float32 (Co,)")
    out_f = np.empty((m_total, co), np.float32)
    if m_total:
        _bconv(flat, wb, co, wd, hp, wp, ho, wo, sh, sw, nbits, False, _I1, _U1, *affine,
               _EMPTY_U64, out_f)
    return out_f.reshape(n, ho, wo, co)


# --------------------------------------------------------------------------- packing


@njit(parallel=True, cache=True)
def _affine_pack(y, alpha, beta, use_affine, out):
    rows, c = y.shape
    wd = out.shape[1]
    for r in prange(rows):
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


def run_affine_pack(y: np.ndarray, alpha: np.ndarray | None = None,
                    beta: np.ndarray | None = None) -> np.ndarray:
    """Sign bits of ``y * alpha + beta`` (or of ``y``) over the last axis, packed to words.

    Bit 1 means the value is negative or NaN (so sign(x) = -1), matching ``where(x >= 0, 1, -1)``.
    """
    _need(y.dtype == np.float32 and y.ndim >= 1, "float32 input")
    c = int(y.shape[-1])
    _need(c >= 1, "at least one channel")
    y2 = np.ascontiguousarray(y.reshape(-1, c))
    use = alpha is not None
    if use:
        _need(beta is not None and alpha.shape == (c,) and beta.shape == (c,), "affine (C,)")
        _need(alpha.dtype == np.float32 and beta.dtype == np.float32, "affine float32")
    a = alpha if use else _F1
    b = beta if use else _F1
    out = np.empty((y2.shape[0], words(c)), np.uint64)
    if y2.shape[0]:
        _affine_pack(y2, a, b, use, out)
    return out.reshape(y.shape[:-1] + (words(c),))


@njit(parallel=True, cache=True)
def _pad_bits(x, ph, pw, padw, out):
    n, h, w, wd = x.shape
    hp = out.shape[1]
    wp = out.shape[2]
    for t in prange(n * hp):
        b = t // hp
        y = t - b * hp
        for xx in range(wp):
            inside = ph <= y < ph + h and pw <= xx < pw + w
            for k in range(wd):
                out[b, y, xx, k] = x[b, y - ph, xx - pw, k] if inside else padw[k]


def run_pad_bits(x: np.ndarray, pad: tuple[int, int], pad_words: np.ndarray) -> np.ndarray:
    """Pad packed (N, H, W, Wd) bits spatially with the per-pixel words ``pad_words`` (Wd,)."""
    _need(x.dtype == np.uint64 and x.ndim == 4 and x.flags.c_contiguous, "bits 4-D")
    ph, pw = (int(p) for p in pad)
    _need(ph >= 0 and pw >= 0, "non-negative padding")
    _need(pad_words.dtype == np.uint64 and pad_words.shape == (x.shape[3],), "pad words (Wd,)")
    if ph == 0 and pw == 0:
        return x
    n, h, w, wd = x.shape
    out = np.empty((n, h + 2 * ph, w + 2 * pw, wd), np.uint64)
    if n:
        _pad_bits(x, ph, pw, pad_words, out)
    return out


# --------------------------------------------------------------------------- pooling


def pool_out_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of a pooling window, with PyTorch's ceil-mode rule."""
    num = size + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@njit(parallel=True, cache=True)
def _maxpool_bits(x, kh, kw, sh, sw, ph, pw, out):
    n, h, w, wd = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    for t in prange(n * ho):
        b = t // ho
        oy = t - b * ho
        y0 = oy * sh - ph
        for ox in range(wo):
            x0 = ox * sw - pw
            for k in range(wd):
                acc = ~np.uint64(0)
                for yy in range(max(y0, 0), min(y0 + kh, h)):
                    for xx in range(max(x0, 0), min(x0 + kw, w)):
                        acc &= x[b, yy, xx, k]
                out[b, oy, ox, k] = acc


@njit(parallel=True, cache=True)
def _maxpool_float(x, kh, kw, sh, sw, ph, pw, out):
    n, h, w, c = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    for t in prange(n * ho):
        b = t // ho
        oy = t - b * ho
        y0 = oy * sh - ph
        for ox in range(wo):
            x0 = ox * sw - pw
            for k in range(c):
                acc = -np.inf
                for yy in range(max(y0, 0), min(y0 + kh, h)):
                    for xx in range(max(x0, 0), min(x0 + kw, w)):
                        v = x[b, yy, xx, k]
                        if v > acc or np.isnan(v):
                            acc = v
                out[b, oy, ox, k] = np.float32(acc)


def _check_pool(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                ceil_mode: bool) -> tuple[int, int]:
    _need(x.ndim == 4 and x.flags.c_contiguous, "4-D contiguous input")
    kh, kw = k
    sh, sw = s
    ph, pw = p
    _need(min(kh, kw, sh, sw) >= 1 and min(ph, pw) >= 0, "positive window")
    _need(2 * ph <= kh and 2 * pw <= kw, "padding at most half the window")
    ho = pool_out_size(x.shape[1], kh, sh, ph, ceil_mode)
    wo = pool_out_size(x.shape[2], kw, sw, pw, ceil_mode)
    _need(ho >= 1 and wo >= 1, "non-empty output")
    return ho, wo


def run_maxpool_bits(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                     ceil_mode: bool) -> np.ndarray:
    """Max-pool of packed ±1 activations: with bit 1 = -1, max is the AND of the bits."""
    _need(x.dtype == np.uint64, "bits input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.uint64)
    if x.shape[0]:
        _maxpool_bits(x, k[0], k[1], s[0], s[1], p[0], p[1], out)
    return out


def run_maxpool_float(x: np.ndarray, k: tuple[int, int], s: tuple[int, int],
                      p: tuple[int, int], ceil_mode: bool) -> np.ndarray:
    """Float max-pool over NHWC with -inf padding (PyTorch semantics, NaN propagates)."""
    _need(x.dtype == np.float32, "float32 input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    if x.shape[0]:
        _maxpool_float(x, k[0], k[1], s[0], s[1], p[0], p[1], out)
    return out


@njit(parallel=True, cache=True)
def _avgpool(x, kh, kw, sh, sw, ph, pw, include_pad, out):
    n, h, w, c = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    for t in prange(n * ho):
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
            div = pool if include_pad else (y1 - y0) * (x1 - x0)
            for k in range(c):
                acc = np.float32(0.0)
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        acc += x[b, yy, xx, k]
                if y0 >= y1 or x0 >= x1:
                    out[b, oy, ox, k] = 0.0
                else:
                    out[b, oy, ox, k] = acc / np.float32(div)


def run_avgpool(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                ceil_mode: bool, count_include_pad: bool) -> np.ndarray:
    """Float average pool over NHWC, summing in PyTorch's CPU order (row-major, float32)."""
    _need(x.dtype == np.float32, "float32 input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    if x.shape[0]:
        _avgpool(x, k[0], k[1], s[0], s[1], p[0], p[1], bool(count_include_pad), out)
    return out


@njit(parallel=True, cache=True)
def _adaptive_avgpool(x, out):
    n, h, w, c = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    for t in prange(n * ho):
        b = t // ho
        oy = t - b * ho
        y0 = (oy * h) // ho
        y1 = -((-(oy + 1) * h) // ho)
        for ox in range(wo):
            x0 = (ox * w) // wo
            x1 = -((-(ox + 1) * w) // wo)
            for k in range(c):
                acc = np.float32(0.0)
                for yy in range(y0, y1):
                    for xx in range(x0, x1):
                        acc += x[b, yy, xx, k]
                out[b, oy, ox, k] = acc / np.float32(y1 - y0) / np.float32(x1 - x0)


def run_adaptive_avgpool(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Adaptive average pool over NHWC (PyTorch's bin edges floor(i*H/o), ceil((i+1)*H/o))."""
    _need(x.dtype == np.float32 and x.ndim == 4 and x.flags.c_contiguous, "float32 4-D")
    ho, wo = (int(v) for v in out_hw)
    _need(ho >= 1 and wo >= 1 and x.shape[1] >= 1 and x.shape[2] >= 1, "positive sizes")
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    if x.shape[0]:
        _adaptive_avgpool(x, out)
    return out


# --------------------------------------------------------------------------- float conv


@njit(parallel=True, cache=True)
def _im2col(x, kh, kw, sh, sw, ph, pw, ho, wo, out):
    n, h, w, c = x.shape
    for t in prange(n * ho):
        b = t // ho
        oy = t - b * ho
        for ox in range(wo):
            row = (b * ho + oy) * wo + ox
            col = 0
            for ky in range(kh):
                yy = oy * sh - ph + ky
                for kx in range(kw):
                    xx = ox * sw - pw + kx
                    inside = 0 <= yy < h and 0 <= xx < w
                    for k in range(c):
                        out[row, col] = x[b, yy, xx, k] if inside else np.float32(0.0)
                        col += 1


def run_im2col(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
               out_hw: tuple[int, int]) -> np.ndarray:
    """Patches of NHWC float input as rows (N*Ho*Wo, KH*KW*C), zero padded."""
    _need(x.dtype == np.float32 and x.ndim == 4 and x.flags.c_contiguous, "float32 4-D")
    kh, kw = k
    sh, sw = s
    ph, pw = p
    ho, wo = out_hw
    _need(min(kh, kw, sh, sw, ho, wo) >= 1 and min(ph, pw) >= 0, "positive sizes")
    n, h, w, c = x.shape
    _need((ho - 1) * sh + kh <= h + 2 * ph and (wo - 1) * sw + kw <= w + 2 * pw, "window fits")
    out = np.empty((n * ho * wo, kh * kw * c), np.float32)
    if n:
        _im2col(x, kh, kw, sh, sw, ph, pw, ho, wo, out)
    return out


# --------------------------------------------------------------------------- roofline


@njit(inline="always")
def _stream_one(a, b, reps):
    s = 0
    for _ in range(reps):
        for i in range(a.shape[0]):
            s += popcount64(a[i] ^ b[i])
    return s


@njit(parallel=True, cache=True)
def _stream(a, b, reps, out):
    for t in prange(a.shape[0]):
        out[t] = _stream_one(a[t], b[t], reps)


def stream_xor_popcount(a: np.ndarray, b: np.ndarray, reps: int) -> np.ndarray:
    """Roofline probe: each thread row streams popcount(a ^ b) over its (L1-sized) row."""
    _need(a.dtype == np.uint64 and b.dtype == np.uint64 and a.shape == b.shape, "equal rows")
    _need(a.ndim == 2 and a.flags.c_contiguous and b.flags.c_contiguous, "2-D rows")
    out = np.zeros(a.shape[0], np.int64)
    _stream(a, b, int(reps), out)
    return out
