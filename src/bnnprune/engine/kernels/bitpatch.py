"""Dense bit patch matrix: the KH x KW taps of a window packed back to back.

When a window of per-pixel words wastes bits (channel counts that are not multiples of 64),
each output pixel's taps go into ``words(KH*KW*Cin)`` words and the GEMM runs on that matrix
(the weights repacked the same way by :func:`dense_bits`). The matrix is stored as planes,
one per patch word, so the builder writes long runs of consecutive pixels and nothing is
transposed.

The builder reads a padded input (no border tests) and assembles each patch word in a register
from a fixed schedule (:func:`patch_schedule`): the tap words that land in it, each shifted
into place, ORed together and stored once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from numba import njit

from bnnprune.engine.kernels.base import chunks, need, noop, twins, use_parallel, words
from bnnprune.engine.kernels.intrinsics import patch_word_run


def patch_schedule(kh: int, kw: int, cin: int, row_words: int, plane: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where the bits of patch word ``j`` come from: contributions ``start[j] .. start[j+1]``,
    each ``(x[base + rel] << shl) >> shr`` of a tap word at offset ``rel`` from the window's
    first word (``row_words`` words per input row; with ``plane``, the input's words are in
    planes that far apart, one word per pixel).

    Tap word ``k`` of tap ``(ky, kx)`` holds ``nb`` bits (64, or the rest of ``cin``) and starts
    at bit ``pos = (ky*kw + kx)*cin + 64*k`` of the patch: its low part lands in word
    ``pos // 64`` shifted left by ``pos % 64``, the part that does not fit in the next word
    shifted right by ``64 - pos % 64``. Unused high bits of a tap's last word must be 0.
    """
    wd = words(cin)
    kp = words(kh * kw * cin)
    per_word: list[list[tuple[int, int, int]]] = [[] for _ in range(kp)]
    for ky in range(kh):
        for kx in range(kw):
            for k in range(wd):
                pos = (ky * kw + kx) * cin + 64 * k
                nb = min(64, cin - 64 * k)
                rel = (ky * row_words + kx + k * plane if plane
                       else ky * row_words + kx * wd + k)
                s = pos & 63
                per_word[pos >> 6].append((rel, s, 0))
                if s + nb > 64:
                    per_word[(pos >> 6) + 1].append((rel, 0, 64 - s))
    flat = [c for word in per_word for c in word]
    start = np.cumsum([0] + [len(word) for word in per_word]).astype(np.int64)
    rel = np.array([c[0] for c in flat], np.int64)
    shl = np.array([c[1] for c in flat], np.uint64)
    shr = np.array([c[2] for c in flat], np.uint64)
    return start, rel, shl, shr


@njit(cache=True)
def _im2col_bits_rows(xp, start, rel, shl, shr, kh, sh, sw, ho, wo, band, plane, out, r_lo,
                      r_hi):
    n, hp, wp, wd = xp.shape
    kp, _, _, pitch = out.shape
    xf = xp.reshape(-1)
    of = out.reshape(-1)
    nband = -(-ho // band)
    size = n * ho * pitch
    # stride 1: a band of output rows is one run over the padded rows (the output pitch is the
    # padded width, its last kw - 1 words of each row unused); otherwise one output row per run.
    # More than one word per pixel at stride 1: the band's input rows are first split into
    # word planes, so every run below reads consecutive words (vector loads, not gathers)
    pstep = np.uint64(1 if plane else sw * wd)
    planes = np.empty(wd * plane if plane else 1, np.uint64)
    src_f = planes if plane else xf
    for t in range(r_lo, r_hi):
        b = t // nband
        oy0 = (t - b * nband) * band
        rows = min(band, ho - oy0)
        base = (b * hp + oy0 * sh) * wp * wd
        if plane:
            # a plane at a time, unsigned indices: contiguous stores (a loop over the words
            # of each position inside ran 4x slower)
            npos = np.uint64(((rows - 1) * sh + kh) * wp)
            for k in range(wd):
                o = np.uint64(k * plane)
                src = np.uint64(base + k)
                for q in range(npos):
                    planes[o + q] = xf[src + q * np.uint64(wd)]
            base = 0
        run = np.uint64((rows - 1) * pitch + wo)
        o0 = (b * ho + oy0) * pitch
        for j in range(kp):
            # each patch word: the tap words that land in it, shifted into place and ORed
            # (vectors of consecutive pixels), stored once
            dst = np.uint64(j * size + o0)
            if pstep == 1:
                patch_word_run(src_f, base, rel, shl, shr, start[j], start[j + 1], of, dst, run)
                continue
            c = start[j]
            a = shl[c]
            s = shr[c]
            src = np.uint64(base + rel[c])
            for i in range(run):
                of[dst + i] = (src_f[src + i * pstep] << a) >> s
            for c in range(start[j] + 1, start[j + 1]):
                a = shl[c]
                s = shr[c]
                src = np.uint64(base + rel[c])
                for i in range(run):
                    of[dst + i] |= (src_f[src + i * pstep] << a) >> s


_im2col_bits_par, _im2col_bits_ser = twins(_im2col_bits_rows)


def patch_planes_shape(n: int, hp: int, wp: int, cin: int, k: tuple[int, int],
                       s: tuple[int, int]) -> tuple[int, int, int, int]:
    """Shape (words(KH*KW*cin), N, Ho, pitch) of the patch planes of a padded (N, Hp, Wp, .)
    input: plane ``j`` holds patch word ``j`` of every output pixel, rows ``pitch`` words
    apart (the padded width at stride 1: the builder's runs cross the row ends, and the words
    past Wo, windows that wrap around, are never read)."""
    kh, kw = (int(v) for v in k)
    sh, sw = (int(v) for v in s)
    need(min(kh, kw, sh, sw) >= 1, "positive window")
    ho = (int(hp) - kh) // sh + 1
    wo = (int(wp) - kw) // sw + 1
    need(ho >= 1 and wo >= 1, "window fits the padded input")
    return words(kh * kw * int(cin)), int(n), ho, int(wp) if sh == 1 and sw == 1 else wo


def im2col_bits_call(xp: np.ndarray, cin: int, k: tuple[int, int], s: tuple[int, int],
                     out: np.ndarray, threads: int | None = None) -> Callable[[], None]:
    """Validate a dense bit im2col: every window of the padded packed input ``xp``
    (N, Hp, Wp, words(cin); pad it with :func:`~bnnprune.engine.kernels.pad.pad_call`, as for
    the direct conv) as one patch of ``words(KH*KW*cin)`` words, the ``cin`` bits of each tap
    placed right after the previous tap's (order ky, kx, channel).

    ``out`` has :func:`patch_planes_shape`: word ``j`` of output pixel (b, oy, ox) is
    ``out[j, b, oy, ox]``, each plane written in long vector runs (no transposition) and read
    the same way by :func:`~bnnprune.engine.kernels.bconv.bconv_patch_call`.
    """
    need(xp.dtype == np.uint64 and xp.ndim == 4 and xp.flags.c_contiguous, "bits 4-D")
    n, hp, wp, wd = (int(v) for v in xp.shape)
    cin = int(cin)
    need(cin >= 1 and wd == words(cin), "input words match the channels")
    kp, _, ho, pitch = shape = patch_planes_shape(n, hp, wp, cin, k, s)
    need(out.dtype == np.uint64 and out.shape == shape and out.flags.c_contiguous,
         f"out patch planes {shape}")
    if not n:
        return noop
    kh, kw = (int(v) for v in k)
    sh, sw = (int(v) for v in s)
    wo = (wp - kw) // sw + 1
    work = n * ho * wo * (kh * kw * wd + kp) * 0.3
    par = use_parallel(work, threads)
    fn = _im2col_bits_par if par else _im2col_bits_ser
    unit = sh == 1 and sw == 1
    # stride 1: bands of output rows, whole images unless a few images must feed the threads
    # (longer vector runs)
    band = (ho if not par or n >= 8 else max(1, ho // 4)) if unit else 1
    plane = (band - 1 + kh) * wp if unit and wd > 1 else 0
    sched = patch_schedule(kh, kw, cin, wp if plane else wp * wd, plane)
    nrows = n * -(-ho // band)
    return functools.partial(fn, nrows, chunks(nrows) if par else 1, xp, *sched, kh, sh, sw,
                             ho, wo, band, plane, out)


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
    out = np.empty((words(kh * kw * cin), co, 1, 1), np.uint64)
    _im2col_bits_rows(src, *patch_schedule(1, kh * kw, cin, kh * kw * wd), 1, 1, 1, 1, 1, 1, 0,
                      out, 0, co)
    return np.ascontiguousarray(out.reshape(-1, co).T).reshape(co, 1, -1)
