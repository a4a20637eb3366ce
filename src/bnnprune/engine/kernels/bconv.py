"""XNOR-popcount convolution (GEMM over packed bits) with a threshold or affine epilogue.

Output pixels go in tiles of :data:`TILE_PIX` that reuse the weights of one output word (up
to four 16-channel blocks) while they sit in L1. The inner loops are LLVM IR from
:mod:`~bnnprune.engine.kernels.intrinsics`: ``xpc_word`` in threshold mode and
``xpc_affine_word`` in float mode, each a whole 64-channel output word for 2 or 4 pixels
that share each weight vector load.
"""

from __future__ import annotations

import functools
import types as pytypes
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import (
    BLOCK_CH,
    EMPTY_F32,
    EMPTY_U64,
    F1,
    TILE_PIX,
    U1,
    block_channels,
    need,
    noop,
    pixel_bases,
    pixel_start,
    twins,
    use_parallel,
    words,
)
from bnnprune.engine.kernels.intrinsics import (
    CSA_MIN_WORDS,
    SCHEMES,
    SHORT_WORDS,
    WORD_BLOCKS,
    XWORD_MAX_PIX,
    counting_scheme,
    xpc_affine_word,
    xpc_word,
    xword_pix,
)


def block_weights(w: np.ndarray) -> np.ndarray:
    """(Co, KH, L) packed weights -> (ceil(Co/16), KH, L, 16), zero-padded channels.

    Each activation word is then XORed with 16 contiguous weight words (four vectors).
    """
    co, kh, seg = w.shape
    cb = -(-co // BLOCK_CH)
    out = np.zeros((cb * BLOCK_CH, kh, seg), np.uint64)
    out[:co] = w
    return np.ascontiguousarray(out.reshape(cb, BLOCK_CH, kh, seg).transpose(0, 2, 3, 1))


def threshold_init(thr: np.ndarray, flip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accumulator start values and per-output-word masks for ``(popcount > thr) xor flip``.

    A channel's accumulator starts at ``-(thr+1)``, so it ends negative exactly when
    ``popcount <= thr``; the bit is then ``sign xor (not flip)``. Padding channels of the last
    16-channel block start very negative with mask bit 1, channels past it have mask bit 0:
    both always give bit 0.
    """
    co = int(thr.shape[0])
    cb = -(-co // BLOCK_CH)
    init = np.full(cb * BLOCK_CH, -(1 << 62), np.int64)
    init[:co] = -(thr.astype(np.int64) + 1)
    keep = np.zeros(words(co) * 64, np.uint64)
    keep[:cb * BLOCK_CH] = 1
    keep[:co] = 1 - (flip.astype(np.uint64) & np.uint64(1))
    shifts = np.arange(64, dtype=np.uint64)
    xmask = np.bitwise_or.reduce(keep.reshape(-1, 64) << shifts, axis=1)
    return init, np.ascontiguousarray(xmask, dtype=np.uint64)


_xword_pix = njit(inline="always")(xword_pix)


def _tiles(x, w, ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, rowstep, kstride, init, xmask,
           use_bits, nbits, m1, a1, m2, a2, co, out_b, out_f, offs, t_lo, t_hi):
    """The GEMM's row function; ``CSA`` (a constant bound per variant, :func:`_variant`)
    selects the counting scheme."""
    m_total = out_b.shape[0] if use_bits else out_f.shape[0]
    kk = kh * seg * BLOCK_CH
    out_flat = out_f.reshape(-1)
    cpad = ncb * BLOCK_CH
    # no row buffer: threshold mode, or whole 8-channel vectors (the epilogue stores 8 floats
    # at a time, a half last block only its 8, so no store runs past a pixel's channels)
    direct = use_bits or co % (BLOCK_CH // 2) == 0
    rows = np.empty(1 if direct else TILE_PIX * cpad, np.float32)
    bases = np.empty(TILE_PIX + XWORD_MAX_PIX, np.int64)
    nw = -(-ncb // WORD_BLOCKS)
    ob_flat = out_b.reshape(-1)
    if direct:
        dst, pitch = out_flat, co
    else:
        dst, pitch = rows, cpad
    cur = pixel_start(t_lo * TILE_PIX, ho, wo)
    for tile in range(t_lo, t_hi):
        t0 = tile * TILE_PIX
        t1 = min(t0 + TILE_PIX, m_total)
        npx = t1 - t0
        # the bases past the tile's last pixel repeat it (its words are read, not stored)
        cur = pixel_bases(bases, cur, npx, ho, wo, hp, wp, sh, sw, wd)
        # threshold mode: one 64-channel output word at a time, all of its blocks in
        # registers: each word is stored once (no zeroing, no read-modify-write per block).
        # Float mode: the same words, the floats stored by the intrinsic 8 at a time,
        # straight into the output when the channels are whole 8-channel vectors; otherwise
        # the tile's rows are assembled in a row buffer padded to whole blocks, then copied
        # out in one contiguous run (a last vector would spill into the next pixel's row)
        d0 = t0 * co if direct else 0
        for wi in range(nw):
            cb0 = wi * WORD_BLOCKS
            nb = min(WORD_BLOCKS, ncb - cb0)
            half = 1 if co - (cb0 + nb - 1) * BLOCK_CH <= BLOCK_CH // 2 else 0
            c0 = cb0 * BLOCK_CH
            step = _xword_pix(nb)
            i = 0  # while loops: a range with a variable step divides
            if use_bits:
                while i < npx:
                    xpc_word(x, bases, i, rowstep, kh, seg, kstride, w, cb0 * kk, kk, init, c0,
                             xmask, wi, ob_flat, (t0 + i) * nw + wi, nw, npx - i, nb, half,
                             offs, CSA)  # noqa: F821
                    i += step
            else:
                while i < npx:
                    xpc_affine_word(x, bases, i, rowstep, kh, seg, kstride, w, cb0 * kk, kk,
                                    init, c0, nbits, m1, a1, m2, a2, dst, d0 + i * pitch + c0,
                                    pitch, npx - i, nb, half, offs, CSA)  # noqa: F821
                    i += step
        if not direct:
            o = np.uint64(t0 * co)
            for p in range(npx):
                r = np.uint64(p * cpad)
                for q in range(np.uint64(co)):
                    out_flat[o + q] = rows[r + q]
                o += np.uint64(co)


def _variant(fn: Callable, name: str, csa: bool) -> Callable:
    """``fn`` compiled with the global ``CSA`` bound to ``csa`` (a compile-time constant, so
    the scheme not taken is folded away: the ``popcount`` variant is the per-word GEMM alone,
    its registers not shared with carry-save code), named ``name`` for numba's cache."""
    code = fn.__code__.replace(co_name=name)
    glb = {**fn.__globals__, "CSA": csa}
    out = pytypes.FunctionType(code, glb, name)
    out.__module__, out.__qualname__, out.__doc__ = fn.__module__, name, fn.__doc__
    return njit(cache=True)(out)


_bconv_tiles = _variant(_tiles, "_bconv_tiles", False)
_bconv_tiles_csa = _variant(_tiles, "_bconv_tiles_csa", True)
_bconv_par, _bconv_ser = twins(_bconv_tiles)
_bconv_csa_par, _bconv_csa_ser = twins(_bconv_tiles_csa)
_DRIVERS = {"popcount": (_bconv_par, _bconv_ser), "csa": (_bconv_csa_par, _bconv_csa_ser)}


def bconv_call(
    xp: np.ndarray,
    wb: np.ndarray,
    co: int,
    stride: tuple[int, int],
    nbits: int,
    out: np.ndarray,
    init: np.ndarray,
    *,
    xmask: np.ndarray | None = None,
    affine: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    threads: int | None = None,
    scheme: str | None = None,
) -> Callable[[], None]:
    """Validate an XNOR-popcount convolution of ``xp`` (N, Hp, Wp, Wd) into ``out``.

    ``wb`` holds the weights blocked by :func:`block_weights`: (ceil(Co/16), KH, KW*Wd, 16).
    With ``xmask`` (and ``init`` from :func:`threshold_init`) ``out`` is packed bits
    (N, Ho, Wo, words(Co)); with ``affine`` = (m1, a1, m2, a2) and a zero ``init`` it is
    float32 (N, Ho, Wo, Co) = ((K - 2*popcount) * m1 + a1) * m2 + a2 with K = ``nbits``.
    ``scheme``: the counting scheme (:data:`~.intrinsics.SCHEMES`), by default this CPU's
    (:func:`~.intrinsics.counting_scheme`). Returns the kernel call, bound to these arrays.
    """
    need(xp.dtype == np.uint64 and xp.ndim == 4 and xp.flags.c_contiguous, "xp uint64 4-D")
    need(wb.dtype == np.uint64 and wb.ndim == 4 and wb.flags.c_contiguous, "w uint64 4-D")
    n, hp, wp, wd = (int(s) for s in xp.shape)
    _, kh, seg, _ = (int(s) for s in wb.shape)
    need(wd >= 1 and seg % wd == 0, "weight row length is a multiple of the input words")
    geometry = (n, kh, seg // wd, seg, wd, hp, wp, *(int(s) for s in stride), wp * wd, 1)
    return _bind(xp, wb, co, geometry, nbits, out, init, xmask, affine, threads, scheme)


def bconv_patch_call(
    planes: np.ndarray,
    wb: np.ndarray,
    co: int,
    nbits: int,
    out: np.ndarray,
    init: np.ndarray,
    *,
    xmask: np.ndarray | None = None,
    affine: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    threads: int | None = None,
    scheme: str | None = None,
) -> Callable[[], None]:
    """:func:`bconv_call` on the patch planes (Kp, N, Ho, pitch) of
    :func:`~bnnprune.engine.kernels.bitpatch.im2col_bits_call`, with the dense weights
    ``block_weights(dense_bits(w, cin))`` (ceil(Co/16), 1, Kp, 16): each output pixel reads
    its ``Kp`` words one plane apart."""
    need(planes.dtype == np.uint64 and planes.ndim == 4 and planes.flags.c_contiguous,
         "patch planes uint64 4-D")
    need(wb.dtype == np.uint64 and wb.ndim == 4 and wb.flags.c_contiguous, "w uint64 4-D")
    kp, n, ho, pitch = (int(s) for s in planes.shape)
    need(int(wb.shape[1]) == 1 and int(wb.shape[2]) == kp, "dense weights (.., 1, Kp, 16)")
    # the planes as an (N, Ho, pitch) image of one word per pixel and a 1 x 1 window of Kp
    # words, one plane apart
    geometry = (n, 1, 1, kp, 1, ho, pitch, 1, 1, 0, n * ho * pitch)
    return _bind(planes, wb, co, geometry, nbits, out, init, xmask, affine, threads, scheme)


def uses_csa(scheme: str, window_words: int, kstride: int) -> bool:
    """Whether a GEMM of scheme ``scheme`` runs the ``csa`` variant: direct windows (words 1
    apart in a row) of at least :data:`~.intrinsics.CSA_MIN_WORDS` words (carry-save), and
    windows of :data:`~.intrinsics.SHORT_WORDS`, direct or dense (straight line, full
    adders, :func:`~.intrinsics._short_window`). Other windows and long dense patch rows
    (words a plane apart) run the ``popcount`` variant: carry-save measured no faster there
    than the per-word count in bytes (NIN's 38-word patch rows 0.87x, also 0.88-1.02x with
    passes of 2-4 units sharing each activation word; ``benchmarks/bench_counting.py`` on
    an AVX2 AMD EPYC)."""
    return scheme == "csa" and ((window_words >= CSA_MIN_WORDS and kstride == 1)
                                or window_words in SHORT_WORDS)


def _bind(x: np.ndarray, wb: np.ndarray, co: int, geometry: tuple[int, ...], nbits: int,
          out: np.ndarray, init: np.ndarray, xmask: np.ndarray | None,
          affine: tuple[np.ndarray, ...] | None, threads: int | None,
          scheme: str | None) -> Callable[[], None]:
    """The checks and the bound kernel call shared by :func:`bconv_call` and
    :func:`bconv_patch_call`; ``geometry`` = (n, kh, kw, seg, wd, hp, wp, sh, sw, rowstep,
    kstride): the window as the kernel walks it, ``kh`` rows ``rowstep`` apart of ``seg``
    words ``kstride`` apart, in an (n, hp, wp) image of ``wd`` words per pixel."""
    ncb, _, _, blk = (int(s) for s in wb.shape)
    n, kh, kw, seg, wd, hp, wp, sh, sw, rowstep, kstride = geometry
    co = int(co)
    need(out.ndim == 4 and out.flags.c_contiguous and int(out.shape[0]) == n, "out 4-D (N, ...)")
    ho, wo = int(out.shape[1]), int(out.shape[2])
    need(blk == BLOCK_CH and ncb == -(-co // BLOCK_CH), "weight blocks match Co")
    need(min(co, kh, kw, sh, sw, ho, wo) >= 1 and n >= 0, "positive sizes")
    need((ho - 1) * sh + kh <= hp and (wo - 1) * sw + kw <= wp, "window inside padded input")
    need(0 <= nbits <= kh * seg * 64 and nbits < 2**31, "bit count fits the words")
    need(init.dtype == np.int64 and init.shape == (ncb * BLOCK_CH,)
         and init.flags.c_contiguous, "init int64 (blocks*16,)")
    scheme = counting_scheme() if scheme is None else scheme
    need(scheme in SCHEMES, f"counting scheme one of {SCHEMES}")
    m_total = n * ho * wo
    ntiles = -(-m_total // TILE_PIX)
    # each window word's offset from a pixel's base, in the order of its weights
    offs = (np.arange(kh, dtype=np.int64)[:, None] * rowstep
            + np.arange(seg, dtype=np.int64)[None, :] * kstride).reshape(-1)
    flat = x.reshape(-1)
    wflat = wb.reshape(-1)
    shape = (ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, rowstep, kstride)
    if xmask is not None:
        need(affine is None, "threshold mode takes no affine arrays")
        need(xmask.dtype == np.uint64 and xmask.shape == (words(co),), "xmask uint64 (words,)")
        need(out.dtype == np.uint64 and int(out.shape[3]) == words(co), "out bits (.., words)")
        args = (flat, wflat, *shape, init, xmask, True, nbits, F1, F1, F1, F1, co,
                out.reshape(m_total, -1), EMPTY_F32, offs)
    else:
        need(affine is not None and len(affine) == 4, "float mode needs the affine arrays")
        for a in affine:
            need(a.dtype == np.float32 and a.shape == (co,), "affine float32 (Co,)")
        need(out.dtype == np.float32 and int(out.shape[3]) == co, "out float (.., Co)")
        blocked = tuple(block_channels(a, 0.0) for a in affine)  # whole blocks are read
        args = (flat, wflat, *shape, init, U1, False, nbits, *blocked, co, EMPTY_U64,
                out.reshape(m_total, co), offs)
    if not m_total:
        return noop
    work = m_total * ncb * kh * seg * 4.0  # ns: 16 XOR-popcounts of one word
    par, ser = _DRIVERS["csa" if uses_csa(scheme, kh * seg, kstride) else "popcount"]
    fn = par if use_parallel(work, threads) else ser
    return functools.partial(fn, ntiles, ntiles, *args)  # one tile per chunk


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
    threads: int | None = None,
    scheme: str | None = None,
) -> np.ndarray:
    """XNOR-popcount convolution of the padded packed input ``xp`` (N, Hp, Wp, Wd).

    ``wb`` holds the weights blocked by :func:`block_weights`: (ceil(Co/16), KH, KW*Wd, 16).
    With ``thr``/``flip`` the result is packed bits (N, Ho, Wo, words(Co)), bit =
    (popcount > thr) xor flip. With ``affine`` = (m1, a1, m2, a2) it is float32
    (N, Ho, Wo, Co) = ((K - 2*popcount) * m1 + a1) * m2 + a2 with K = ``nbits``.
    """
    need(xp.ndim == 4, "xp 4-D")
    co = int(co)
    ho, wo = (int(s) for s in out_hw)
    need(ho >= 1 and wo >= 1 and co >= 1, "positive sizes")
    shape = (int(xp.shape[0]), ho, wo)
    if thr is not None:
        need(flip is not None and affine is None, "threshold mode needs thr and flip only")
        need(thr.dtype == np.int32 and thr.shape == (co,), "thr int32 (Co,)")
        need(flip.dtype == np.uint8 and flip.shape == (co,), "flip uint8 (Co,)")
        init, xmask = threshold_init(thr, flip)
        out = np.empty((*shape, words(co)), np.uint64)
        bconv_call(xp, wb, co, stride, nbits, out, init, xmask=xmask, threads=threads,
                   scheme=scheme)()
        return out
    need(affine is not None and flip is None, "float mode needs the affine arrays")
    out = np.empty((*shape, co), np.float32)
    init = np.zeros(-(-co // BLOCK_CH) * BLOCK_CH, np.int64)
    bconv_call(xp, wb, co, stride, nbits, out, init, affine=affine, threads=threads,
               scheme=scheme)()
    return out
