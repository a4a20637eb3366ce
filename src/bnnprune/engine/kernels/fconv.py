"""Full-precision convolution: the fused float conv + epilogue (+ sign packing), and im2col.

The fused kernel does the float conv (4 pixels x 16 channels of ``<8 x float>`` FMA
accumulators, :mod:`~bnnprune.engine.kernels.intrinsics`) and ``(conv + b) * alpha + beta``
and either packs the sign bits (no float tensor) or stores the floats. When it packs sign
bits, the epilogue is usually folded into one float threshold per channel
(:func:`sign_thresholds`): the same bits for one compare per vector.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import (
    BLOCK_CH,
    EMPTY_F32,
    EMPTY_U64,
    FPIX,
    TILE_PIX,
    need,
    noop,
    pixel_bases,
    pixel_start,
    twins,
    use_parallel,
    words,
)
from bnnprune.engine.kernels.intrinsics import (
    FWORD_MAX_PIX,
    WORD_BLOCKS,
    fconv_store4,
    fconv_store4h,
    fconv_word,
    fconv_word_thr,
    fword_pix,
)

# pixels per fconv_word call by vectors per word (a global array: a constant to numba)
_FWORD_PIX = np.array([0] + [fword_pix(v) for v in range(1, WORD_BLOCKS * 2 + 1)], np.int64)


@njit(cache=True)
def _fconv_tiles(x, w, ncb, kh, seg, c, hp, wp, ho, wo, sh, sw, bias, alpha, beta, wmask, use_bits,
                 use_thr, co, out_b, out_f, t_lo, t_hi):
    m_total = out_b.shape[0] if use_bits else out_f.shape[0]
    rowstep = wp * c
    kk = kh * seg * BLOCK_CH
    bases = np.empty(TILE_PIX + FWORD_MAX_PIX, np.int64)
    vals = np.empty(FPIX * BLOCK_CH, np.float32)
    nw = out_b.shape[1]
    ob_flat = out_b.reshape(-1)
    cur = pixel_start(t_lo * TILE_PIX, ho, wo)
    for tile in range(t_lo, t_hi):
        t0 = tile * TILE_PIX
        t1 = min(t0 + TILE_PIX, m_total)
        npx = t1 - t0
        cur = pixel_bases(bases, cur, npx, ho, wo, hp, wp, sh, sw, c)
        if use_bits:
            # one 64-channel output word at a time, in 8-channel vectors (a partial word
            # costs its channels rounded up to 8): each word is stored once
            for wi in range(nw):
                nvec = (min(64, co - 64 * wi) + 7) // 8
                step = _FWORD_PIX[nvec]
                g = 0  # a while loop: a range with a variable step divides
                if use_thr:  # bias holds the thresholds
                    while g < npx:
                        fconv_word_thr(x, bases, g, rowstep, kh, seg, w, wi * WORD_BLOCKS * kk,
                                       kk, bias, alpha, beta, 64 * wi, nvec, ob_flat,
                                       (t0 + g) * nw + wi, nw, npx - g, wmask[wi])
                        g += step
                else:
                    while g < npx:
                        fconv_word(x, bases, g, rowstep, kh, seg, w, wi * WORD_BLOCKS * kk, kk,
                                   bias, alpha, beta, 64 * wi, nvec, ob_flat, (t0 + g) * nw + wi,
                                   nw, npx - g, wmask[wi])
                        g += step
            continue
        for cb in range(ncb):
            c0 = cb * BLOCK_CH
            half = co - c0 <= BLOCK_CH // 2  # a last block of <= 8 channels: half the FMAs
            nc = min(BLOCK_CH, co - c0)
            for g in range(0, npx, FPIX):
                if half:
                    fconv_store4h(x, bases, g, rowstep, kh, seg, w, cb * kk, bias, alpha,
                                  beta, c0, vals)
                else:
                    fconv_store4(x, bases, g, rowstep, kh, seg, w, cb * kk, bias, alpha,
                                 beta, c0, vals)
                for p in range(min(FPIX, npx - g)):
                    for q in range(nc):
                        out_f[t0 + g + p, c0 + q] = vals[p * BLOCK_CH + q]


_fconv_par, _fconv_ser = twins(_fconv_tiles)


def block_float_weights(w: np.ndarray, co: int) -> np.ndarray:
    """(KH*KW*Cin, Co) float weights -> (ceil(Co/16), KH*KW*Cin, 16), zero-padded channels."""
    taps = int(w.shape[0])
    cb = -(-co // BLOCK_CH)
    out = np.zeros((taps, cb * BLOCK_CH), np.float32)
    out[:, :co] = w
    return np.ascontiguousarray(out.reshape(taps, cb, BLOCK_CH).transpose(1, 0, 2))


def fconv_call(xp: np.ndarray, wf: np.ndarray, co: int, k: tuple[int, int],
               stride: tuple[int, int], epilogue: tuple[np.ndarray, ...], out: np.ndarray,
               threads: int | None = None, thresholds: bool = False) -> Callable[[], None]:
    """Validate a float conv of padded NHWC ``xp`` with its bias and affine epilogue.

    ``wf`` is (ceil(Co/16), KH*KW*C, 16) from :func:`block_float_weights`; ``epilogue`` is
    (bias, alpha, beta) padded by :func:`~bnnprune.engine.kernels.base.block_channels` and
    the per-word masks of the channels that exist (:func:`bnnprune.engine.pack.tail_mask`).
    ``v = (conv + bias) * alpha + beta``; a uint64 ``out`` (N, Ho, Wo, words(Co)) gets the
    sign bits ``not v >= 0``, a float32 ``out`` (N, Ho, Wo, Co) gets ``v``. With
    ``thresholds`` (bits only), ``wf`` and ``epilogue[0]`` are :func:`sign_thresholds`'
    weights and thresholds, the bits ``not conv >= thr``.
    """
    need(xp.dtype == np.float32 and xp.ndim == 4 and xp.flags.c_contiguous, "xp float32 4-D")
    need(wf.dtype == np.float32 and wf.ndim == 3 and wf.flags.c_contiguous, "w float32 3-D")
    n, hp, wp, c = (int(s) for s in xp.shape)
    kh, kw = (int(s) for s in k)
    sh, sw = (int(s) for s in stride)
    co = int(co)
    ncb = -(-co // BLOCK_CH)
    need(min(kh, kw, sh, sw, co, c) >= 1, "positive sizes")
    need(wf.shape == (ncb, kh * kw * c, BLOCK_CH), "weight blocks (Co/16, KH*KW*C, 16)")
    need(out.ndim == 4 and out.flags.c_contiguous and int(out.shape[0]) == n, "out 4-D")
    ho, wo = int(out.shape[1]), int(out.shape[2])
    use_bits = out.dtype == np.uint64
    need(use_bits or out.dtype == np.float32, "out bits or float32")
    need(use_bits or not thresholds, "thresholds give bits only")
    need(int(out.shape[3]) == (words(co) if use_bits else co) and ho >= 1 and wo >= 1,
         "out (N, Ho, Wo, words(Co) or Co)")
    need((ho - 1) * sh + kh <= hp and (wo - 1) * sw + kw <= wp, "window inside padded input")
    bias, alpha, beta, wmask = epilogue
    for a in (bias, alpha, beta):
        need(a.dtype == np.float32 and a.shape == (ncb * BLOCK_CH,), "epilogue (blocks*16,)")
    need(wmask.dtype == np.uint64 and wmask.shape == (words(co),), "masks (words(Co),)")
    m_total = n * ho * wo
    if not m_total:
        return noop
    out2 = out.reshape(m_total, -1)
    out_b, out_f = (out2, EMPTY_F32) if use_bits else (EMPTY_U64, out2)
    work = m_total * ncb * kh * kw * c * 0.42  # ns: 2 FMA vectors per tap
    fn = _fconv_par if use_parallel(work, threads) else _fconv_ser
    ntiles = -(-m_total // TILE_PIX)
    return functools.partial(fn, ntiles, ntiles, xp.reshape(-1), wf.reshape(-1), ncb, kh, kw * c,
                             c, hp, wp, ho, wo, sh, sw, bias, alpha, beta, wmask, use_bits,
                             bool(thresholds), co, out_b, out_f)  # one tile per chunk


fconv_pack_call = fconv_call  # the packing variant (``out`` uint64)

_F32_KEYS = (-0x7F800000, 0x7F800000)  # -inf and +inf as ordered keys


def _from_key(key: np.ndarray) -> np.ndarray:
    """float32 of an ordered key (the float order as integers, -0.0 and 0.0 one key)."""
    bits = np.where(key >= 0, key, (-key) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def sign_thresholds(w: np.ndarray, bias: np.ndarray, alpha: np.ndarray,
                    beta: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """PyTorch's sign epilogue ``not ((conv + bias) * alpha + beta) >= 0`` (float32, each
    operation rounded) as one float threshold per channel, or None when some channel has a
    zero ``alpha`` or a parameter that is not finite.

    Each rounded operation is monotone in its input, so with ``alpha > 0`` the bit is
    ``not conv >= thr`` for ``thr`` the smallest float32 (infinities included) whose epilogue
    is ``>= 0`` (NaN when there is none), found by bisection over the float order: the same
    bit for every conv value, NaN and infinities included. A channel with ``alpha < 0`` gets
    its weights (columns of the (taps, Co) ``w``) negated, which negates its FMA sums exactly
    (round to nearest is symmetric), and its threshold on the negated sum. Returns
    (weights, thresholds).
    """
    b, a, be = (np.asarray(v, np.float32) for v in (bias, alpha, beta))
    if not (np.isfinite(b).all() and np.isfinite(a).all() and np.isfinite(be).all()
            and (a != 0).all()):
        return None
    sign = np.where(a < 0, np.float32(-1), np.float32(1))

    def nonneg(key: np.ndarray) -> np.ndarray:
        acc = _from_key(key) * sign  # the conv value whose (negated) sum this is
        with np.errstate(all="ignore"):
            return ((acc + b) * a + be) >= 0

    lo = np.full(len(a), _F32_KEYS[0], np.int64)
    hi = np.full(len(a), _F32_KEYS[1], np.int64)
    found = nonneg(hi)  # with none, the threshold is NaN: every bit 1
    at_lo = nonneg(lo)
    while True:
        open_ = (hi - lo > 1) & found & ~at_lo  # not nonneg(lo), nonneg(hi)
        if not open_.any():
            break
        mid = (lo + hi) // 2
        up = nonneg(mid)
        hi = np.where(open_ & up, mid, hi)
        lo = np.where(open_ & ~up, mid, lo)
    thr = np.where(at_lo, _from_key(lo), _from_key(hi))
    thr = np.where(found, thr, np.float32(np.nan)).astype(np.float32)
    return np.asarray(w, np.float32) * sign, thr


@njit(cache=True)
def _im2col_rows(x, kh, kw, sh, sw, ph, pw, ho, wo, out, r_lo, r_hi):
    n, h, w, c = x.shape
    for t in range(r_lo, r_hi):
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


_im2col_par, _ = twins(_im2col_rows)


def run_im2col(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
               out_hw: tuple[int, int]) -> np.ndarray:
    """Patches of NHWC float input as rows (N*Ho*Wo, KH*KW*C), zero padded."""
    need(x.dtype == np.float32 and x.ndim == 4 and x.flags.c_contiguous, "float32 4-D")
    kh, kw = k
    sh, sw = s
    ph, pw = p
    ho, wo = out_hw
    need(min(kh, kw, sh, sw, ho, wo) >= 1 and min(ph, pw) >= 0, "positive sizes")
    n, h, w, c = x.shape
    need((ho - 1) * sh + kh <= h + 2 * ph and (wo - 1) * sw + kw <= w + 2 * pw, "window fits")
    out = np.empty((n * ho * wo, kh * kw * c), np.float32)
    if n:
        _im2col_par(n * ho, n * ho, x, kh, kw, sh, sw, ph, pw, ho, wo, out)  # a row per chunk
    return out
