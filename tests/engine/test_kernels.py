"""Kernels against plain numpy references: direct and patch-matrix XNOR-popcount convolution,
the fused float conv + sign, pooling; shape validation; plan reuse and thread counts."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnnprune.engine import EngineError, compile_model
from bnnprune.engine import kernels as K
from bnnprune.engine.kernels import intrinsics as I
from bnnprune.engine.kernels.base import pixel_bases, pixel_start
from bnnprune.engine.kernels.intrinsics import (
    BYTE_ENV,
    BYTE_WORDS,
    CSA_MIN_WORDS,
    FWORD_MAX_PIX,
    SCHEMES,
    SHORT_WORDS,
    byte_counts,
    byte_min_words,
    byte_sum_isa,
    counting_scheme,
    fword_passes,
    fword_pix,
    fword_shape,
    vector_registers,
)
from bnnprune.engine.pack import pack_signs, tail_mask, unpack_signs
from bnnprune.models import build_model

from .conftest import dyadic_fp_weights, dyadic_input, randomize_bn


def _random_bits(rng, shape, channels):
    raw = rng.integers(0, 2**63, size=shape, dtype=np.int64).view(np.uint64)
    raw |= rng.integers(0, 2, size=shape).astype(np.uint64) << np.uint64(63)
    mask = tail_mask(channels)
    return raw & np.tile(mask, shape[-1] // len(mask))


def _popcounts(xp, w, k, s, out_hw):
    """Reference XOR popcounts (N, Ho, Wo, Co) of padded bits and (Co, KH, KW*Wd) weights."""
    n, co = xp.shape[0], w.shape[0]
    ho, wo = out_hw
    cnt = np.zeros((n, ho, wo, co), np.int64)
    for oy in range(ho):
        for ox in range(wo):
            patch = xp[:, oy * s:oy * s + k, ox * s:ox * s + k, :].reshape(n, 1, -1)
            x = np.ascontiguousarray(patch ^ w.reshape(1, co, -1))
            cnt[:, oy, ox, :] = np.unpackbits(x.view(np.uint8), axis=-1).reshape(
                n, co, -1).sum(-1)
    return cnt


CONVS = [  # n, h, w, cin, cout, k, stride, pad, pad_value
    (2, 7, 9, 37, 45, 3, 1, 1, -1),
    (1, 9, 8, 96, 33, 5, 2, 2, 1),
    (3, 5, 5, 130, 17, 1, 1, 0, 1),
    (2, 6, 6, 128, 16, 3, 1, 1, -1),
    (1, 4, 4, 1, 29, 3, 1, 1, -1),
    (2, 3, 5, 200, 64, 3, 2, 0, 1),
    # partial last 16-channel blocks of 4, 6 and 11 channels
    (1, 5, 5, 20, 4, 3, 1, 1, 1),
    (2, 5, 6, 70, 22, 3, 1, 1, -1),
    (1, 6, 5, 9, 27, 3, 2, 1, 1),
    # fewer than 16 channels over many 32-pixel tiles (float stores spill into later pixels
    # of the same tile only), big enough for the parallel driver
    (4, 12, 12, 20, 5, 3, 1, 1, 1),
    (3, 11, 11, 70, 37, 3, 1, 1, -1),
    # last blocks of exactly 8 and of 9 channels (half-block kernel up to 8)
    (2, 5, 5, 20, 24, 3, 1, 1, 1),
    (1, 5, 5, 130, 25, 1, 1, 0, -1),
    # several 64-channel output words, each computed whole: 64 + 64 + 2 channels (a lone half
    # block), 64 + 56 (four blocks, the last half), 64 + 26 (a pruned 7x7 layer)
    (2, 6, 5, 40, 130, 3, 1, 1, -1),
    (1, 5, 5, 64, 120, 3, 2, 1, 1),
    (2, 7, 7, 90, 90, 3, 1, 1, -1),
    # long windows: 16 words and 20 over two output words (per word in bytes in both
    # schemes), carry-save (csa) 27 (three groups and a tail of 3) and 25 with a lone half
    # block
    (1, 5, 4, 1000, 24, 1, 1, 0, 1),
    (1, 6, 6, 130, 40, 3, 1, 1, -1),
    (2, 5, 5, 64, 20, 5, 1, 2, 1),
    (1, 4, 5, 320, 100, 2, 1, 0, -1),
    # short windows (scheme csa: straight line, full adders): 3 words direct, 1x1 over 150
    # channels to 150 (output words of four blocks, then two, the last half), and dense, 3x3
    # rows over 20 channels (180 bits) to 70 (four blocks, then a lone half block); 4, 6 and
    # 7 words direct (1x1), 5 dense (3x3 over 32 channels, 288 bits)
    (2, 5, 4, 150, 150, 1, 1, 0, 1),
    (1, 6, 5, 20, 70, 3, 1, 1, -1),
    (2, 4, 5, 256, 70, 1, 1, 0, -1),
    (1, 4, 3, 380, 20, 1, 1, 0, 1),
    (1, 3, 4, 420, 30, 1, 1, 0, 1),
    (1, 6, 6, 32, 40, 3, 1, 1, 1),
    # a window of 144 words: per word (scheme popcount) on AVX2 its byte counts are added
    # into the accumulators four times within the window and once after it; carry-save
    # (csa) whole groups only
    (1, 4, 4, 1000, 20, 3, 1, 1, -1),
]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n,h,w,cin,co,k,s,p,pv", CONVS)
def test_bconv_direct_and_patch_matrix_match_reference(n, h, w, cin, co, k, s, p, pv, scheme,
                                                       rng):
    """Every counting scheme runs on any x86 CPU (``popcount`` is ``vpopcntq`` only where
    the CPU has it), so each is checked here whatever the machine would choose."""
    wd = K.words(cin)
    x = _random_bits(rng, (n, h, w, wd), cin)
    wt = _random_bits(rng, (co, k, k * wd), cin)
    pad_words = tail_mask(cin) if pv == -1 else np.zeros(wd, np.uint64)
    xp = K.run_pad_bits(x, (p, p), pad_words)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    nbits = cin * k * k
    cnt = _popcounts(xp, wt, k, s, (ho, wo))
    thr = rng.integers(-1, nbits + 1, size=co).astype(np.int32)
    thr[:2] = (-1, nbits)  # constant channels
    flip = rng.integers(0, 2, size=co).astype(np.uint8)
    expect = pack_signs(np.where((cnt > thr) != (flip != 0), -1.0, 1.0).astype(np.float32))
    aff = tuple(rng.standard_normal(co).astype(np.float32) for _ in range(4))
    expect_f = ((np.float32(nbits) - 2 * cnt).astype(np.float32) * aff[0] + aff[1]) \
        * aff[2] + aff[3]

    got = K.run_bconv(xp, K.block_weights(wt), co, (s, s), nbits, (ho, wo), thr=thr, flip=flip,
                      scheme=scheme)
    assert np.array_equal(got, expect)
    # every output word is written whole (nothing relies on a zeroed buffer), also in parallel
    init, xmask = K.threshold_init(thr, flip)
    dirty = np.full_like(expect, ~np.uint64(0))
    K.bconv_call(xp, K.block_weights(wt), co, (s, s), nbits, dirty, init, xmask=xmask,
                 threads=2, scheme=scheme)()
    assert np.array_equal(dirty, expect)
    got_f = K.run_bconv(xp, K.block_weights(wt), co, (s, s), nbits, (ho, wo), affine=aff,
                         scheme=scheme)
    assert np.array_equal(got_f, expect_f)

    # the same convolution on a dense bit patch matrix (taps packed back to back)
    dense = K.dense_bits(wt, cin)
    kp = dense.shape[2]
    assert kp == K.words(nbits)
    planes = np.zeros(K.patch_planes_shape(n, *xp.shape[1:3], cin, (k, k), (s, s)), np.uint64)
    K.im2col_bits_call(xp, cin, (k, k), (s, s), planes)()
    wb = K.block_weights(dense)
    dirty = np.full_like(expect, ~np.uint64(0))
    K.bconv_patch_call(planes, wb, co, nbits, dirty, init, xmask=xmask, scheme=scheme)()
    assert np.array_equal(dirty, expect)
    got_f = np.empty_like(expect_f)
    K.bconv_patch_call(planes, wb, co, nbits, got_f, np.zeros_like(init),
                       affine=aff, threads=1, scheme=scheme)()
    assert np.array_equal(got_f, expect_f)
    # the same on one thread
    assert np.array_equal(K.run_bconv(xp, K.block_weights(wt), co, (s, s), nbits, (ho, wo),
                                      thr=thr, flip=flip, threads=1, scheme=scheme),
                          expect)


def test_conv_cases_cover_carry_save_groups_tails_and_short_windows():
    """The cases above reach every branch of the ``csa`` scheme: windows below
    CSA_MIN_WORDS (counted word by word), whole groups only, and groups with a tail, every
    length of SHORT_WORDS (straight line), 3 words direct and dense with whole 64-channel
    output words;
    and of the per-word count in bytes: windows below AVX2's minimum (64-bit lanes), and
    windows that add their byte counts within the window (more than BYTE_WORDS words) and
    not at a multiple of BYTE_WORDS."""
    sizes = {k * k * K.words(cin) for _, _, _, cin, _, k, _, _, _ in CONVS}
    dense = {K.words(k * k * cin) for _, _, _, cin, _, k, _, _, _ in CONVS}
    assert any(n < CSA_MIN_WORDS and n not in SHORT_WORDS for n in sizes)
    assert set(SHORT_WORDS) <= sizes | dense
    assert any(k * k * K.words(cin) == 3 and co > 64 for _, _, _, cin, co, k, _, _, _ in CONVS)
    assert any(K.words(k * k * cin) == 3 and co > 64 for _, _, _, cin, co, k, _, _, _ in CONVS)
    long = [n for n in sizes if n >= CSA_MIN_WORDS]
    assert any(n % 8 == 0 for n in long) and any(n % 8 for n in long)
    assert any(n < byte_min_words(frozenset({"avx2"})) for n in sizes)
    assert any(n > 2 * BYTE_WORDS and n % BYTE_WORDS for n in sizes)


def test_counting_scheme_follows_the_cpu_and_the_override(monkeypatch):
    assert counting_scheme(frozenset({"avx2", "popcnt"})) == "csa"
    assert counting_scheme(frozenset({"avx512f", "avx512vpopcntdq"})) == "popcount"
    assert counting_scheme(frozenset({"neon"})) == "popcount"  # cnt + uaddlp per word
    # per-word counts in bytes where a word's popcount is a table lookup, not vpopcntq
    assert byte_counts(frozenset({"avx2", "popcnt"}))
    assert not byte_counts(frozenset({"avx2", "avx512f", "avx512vpopcntdq"}))
    # and on NEON, where a word's popcount is cnt + a widening chain: in bytes, cnt + add
    assert byte_counts(frozenset({"neon"})) and byte_sum_isa(frozenset({"neon"})) == "neon"
    assert byte_sum_isa(frozenset({"avx2"})) == "avx2" and byte_sum_isa(frozenset()) is None
    assert not byte_counts(frozenset())
    # the short windows' own nibble tables and vmovmskpd sign bits: AVX2's ymm only
    assert I.ymm_only(frozenset({"avx2", "popcnt"}))
    assert not I.ymm_only(frozenset({"avx2", "avx512f", "avx512bw"}))
    assert not I.ymm_only(frozenset({"avx", "popcnt"})) and not I.ymm_only(frozenset())
    monkeypatch.setattr(I, "target_arch", lambda: "aarch64")
    assert not I.ymm_only(frozenset({"avx2", "neon"}))
    monkeypatch.undo()
    # the minimum window of the byte counts: forced for comparisons, checked
    assert byte_min_words(frozenset({"avx2"})) > 1
    monkeypatch.setenv(BYTE_ENV, "off")
    assert not byte_counts()
    monkeypatch.setenv(BYTE_ENV, "5")
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,+popcnt")
    assert byte_min_words() == 5
    monkeypatch.delenv("NUMBA_CPU_FEATURES")
    monkeypatch.setenv("NUMBA_CPU_NAME", "generic")  # no byte sum to force
    with pytest.raises(EngineError, match="no byte sum"):
        byte_min_words()
    monkeypatch.delenv("NUMBA_CPU_NAME")
    for bad in ("0", "yes", "-3"):
        monkeypatch.setenv(BYTE_ENV, bad)
        with pytest.raises(EngineError, match=BYTE_ENV):
            byte_min_words()
    monkeypatch.delenv(BYTE_ENV)
    monkeypatch.setenv("BNNPRUNE_COUNTING", "popcount")
    assert counting_scheme() == "popcount"
    monkeypatch.setenv("BNNPRUNE_COUNTING", "nibble")
    with pytest.raises(EngineError, match="BNNPRUNE_COUNTING"):
        counting_scheme()
    monkeypatch.delenv("BNNPRUNE_COUNTING")
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,+popcnt,-avx512vpopcntdq")
    assert counting_scheme() == "csa"
    # numba compiles for a generic CPU without features: no AVX2 intrinsics for it
    monkeypatch.delenv("NUMBA_CPU_FEATURES")
    monkeypatch.setenv("NUMBA_CPU_NAME", "generic")
    assert not byte_counts() and vector_registers() == 16


@pytest.mark.parametrize("cin,k,dense,carry_save", [(192, 3, False, True), (64, 3, False, False),
                                                  (1024, 1, False, False), (1536, 1, False, True),
                                                  (96, 5, True, False), (192, 1, False, True),
                                                  (20, 3, True, True), (256, 1, False, True),
                                                  (512, 1, False, False)])
def test_csa_variant_binds_long_direct_and_short_windows(cin, k, dense, carry_save, rng):
    """The csa scheme binds its own GEMM for direct windows of CSA_MIN_WORDS words or more
    (carry-save) and for windows of SHORT_WORDS, direct or dense (straight line), the
    per-word one for other windows and long dense patch rows; all exact."""
    from bnnprune.engine.kernels.bconv import _DRIVERS
    co, wd = 40, K.words(cin)
    x = _random_bits(rng, (1, 6, 6, wd), cin)
    wt = _random_bits(rng, (co, k, k * wd), cin)
    xp = K.run_pad_bits(x, (k // 2, k // 2), tail_mask(cin))
    nbits = cin * k * k
    thr = rng.integers(0, nbits, size=co).astype(np.int32)
    init, xmask = K.threshold_init(thr, np.zeros(co, np.uint8))
    cnt = _popcounts(xp, wt, k, 1, (6, 6))
    expect = pack_signs(np.where(cnt > thr, -1.0, 1.0).astype(np.float32))
    out = np.empty_like(expect)
    if dense:
        planes = np.zeros(K.patch_planes_shape(1, *xp.shape[1:3], cin, (k, k), (1, 1)),
                          np.uint64)
        K.im2col_bits_call(xp, cin, (k, k), (1, 1), planes)()
        call = K.bconv_patch_call(planes, K.block_weights(K.dense_bits(wt, cin)), co, nbits,
                                  out, init, xmask=xmask, threads=1, scheme="csa")
    else:
        call = K.bconv_call(xp, K.block_weights(wt), co, (1, 1), nbits, out, init,
                            xmask=xmask, threads=1, scheme="csa")
    assert call.func is _DRIVERS["csa" if carry_save else "popcount"][1]
    call()
    assert np.array_equal(out, expect)


def test_engine_cache_follows_forced_byte_counts(monkeypatch):
    """numba's cache key does not see BNNPRUNE_BYTE_COUNTS, so the engine's cached functions
    move to a folder per forced value (and carry the kernel sources' hash); functions outside
    the engine keep numba's own locators."""
    from numba.core import caching

    from bnnprune.engine.kernels import base, pack

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    ours = [c for c in impl._locator_classes if c.__name__.startswith("BnnpruneEngine")]
    assert len(ours) == 3

    def locate(func, file):  # as numba does: the first locator that takes the function
        return next((loc for c in ours if (loc := c.from_function(func, file))), None)

    func = pack._affine_pack_rows.py_func
    monkeypatch.delenv(BYTE_ENV, raising=False)
    plain = locate(func, pack.__file__)
    assert plain.get_source_stamp()[1] == base.KERNELS_HASH
    plain_path = Path(plain.get_cache_path())  # read when asked, as numba does
    monkeypatch.setenv(BYTE_ENV, " Off ")
    forced = locate(func, pack.__file__)
    assert Path(forced.get_cache_path()) == plain_path / "byte_counts_off"
    assert locate(_random_bits, __file__) is None


def test_bconv_refuses_an_unknown_counting_scheme():
    x = np.zeros((1, 3, 3, 1), np.uint64)
    wb = K.block_weights(np.zeros((16, 3, 3), np.uint64))
    init, xmask = K.threshold_init(np.zeros(16, np.int32), np.zeros(16, np.uint8))
    out = np.empty((1, 1, 1, 1), np.uint64)
    with pytest.raises(EngineError, match="counting scheme"):
        K.bconv_call(x, wb, 16, (1, 1), 9, out, init, xmask=xmask, scheme="nibble")


FCONVS = [(2, 9, 7, 3, 37, 5, 1, 2), (1, 12, 12, 3, 192, 5, 1, 2), (3, 6, 6, 5, 20, 3, 2, 1),
          (1, 4, 4, 7, 16, 4, 1, 0),
          # last blocks of 7, 8 (half blocks), 9 channels and a lone half block
          (2, 7, 7, 1, 23, 3, 1, 1), (1, 6, 6, 2, 24, 3, 1, 1), (1, 6, 6, 2, 25, 3, 1, 1),
          (1, 5, 6, 3, 8, 3, 1, 1),
          # words of 6 and 7 vectors of 8 channels (45; 64 + 56), a second word of 5 (64 + 36)
          (2, 7, 7, 1, 45, 3, 1, 1), (1, 6, 6, 2, 120, 3, 2, 1), (1, 5, 5, 3, 100, 3, 1, 1),
          # one input channel: two output words, a 5x5 window
          (3, 9, 8, 1, 30, 3, 1, 1), (2, 6, 7, 1, 100, 5, 1, 2), (1, 3, 3, 1, 5, 3, 1, 0)]


@pytest.mark.parametrize("n,h,w,c,co,k,s,p", FCONVS)
def test_float_conv_kernel_matches_im2col_matmul(n, h, w, c, co, k, s, p, rng):
    x = (rng.integers(-16, 17, size=(n, h, w, c)) / 8).astype(np.float32)
    wm = (rng.integers(-16, 17, size=(k * k * c, co)) / 16).astype(np.float32)
    b = (rng.integers(-16, 17, size=co) / 16).astype(np.float32)
    alpha = rng.standard_normal(co).astype(np.float32)
    alpha[0] = 0.0
    beta = rng.standard_normal(co).astype(np.float32)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    cols = K.run_im2col(x, (k, k), (s, s), (p, p), (ho, wo))
    expect = K.run_affine_pack((cols @ wm + b).reshape(n, ho, wo, co), alpha, beta)
    xp = np.zeros((n, h + 2 * p, w + 2 * p, c), np.float32)
    K.pad_call(x, (p, p), xp)()
    out = np.empty((n, ho, wo, K.words(co)), np.uint64)
    ep = (K.block_channels(b, 0.0), K.block_channels(alpha, 0.0), K.block_channels(beta, 0.0),
          tail_mask(co))
    wf = K.block_float_weights(wm, co)
    expect_f = ((cols @ wm + b) * alpha + beta).reshape(n, ho, wo, co)
    out_f = np.empty((n, ho, wo, co), np.float32)
    for threads in (1, None):
        out[:] = ~np.uint64(0)  # every output word is written whole
        K.fconv_call(xp, wf, co, (k, k), (s, s), ep, out, threads=threads)()
        assert np.array_equal(out, expect)
        K.fconv_call(xp, wf, co, (k, k), (s, s), ep, out_f, threads=threads)()
        assert np.array_equal(out_f, expect_f)
    assert not np.any(out & ~tail_mask(co))  # no bits beyond the channels
    # a zero alpha cannot be folded into thresholds; without it, the folded epilogue (one
    # compare per vector, negated weights where alpha < 0) gives the same bits
    assert K.sign_thresholds(wm, b, alpha, beta) is None
    alpha[0] = -0.5
    expect = K.run_affine_pack((cols @ wm + b).reshape(n, ho, wo, co), alpha, beta)
    wt, thr = K.sign_thresholds(wm, b, alpha, beta)
    ep = (K.block_channels(thr, 0.0), K.block_channels(alpha, 0.0),
          K.block_channels(beta, 0.0), tail_mask(co))
    for threads in (1, None):
        out[:] = ~np.uint64(0)
        K.fconv_call(xp, K.block_float_weights(wt, co), co, (k, k), (s, s), ep, out,
                     threads=threads, thresholds=True)()
        assert np.array_equal(out, expect)
    with pytest.raises(EngineError, match="thresholds give bits"):
        K.fconv_call(xp, wf, co, (k, k), (s, s), ep, out_f, thresholds=True)


@pytest.mark.parametrize("vregs", [16, 32])
def test_float_word_passes_fit_the_registers(vregs):
    # every vector of a word in exactly one pass, in order; a pass's accumulators within the
    # register budget; 32 registers (AVX-512) keep the whole word in one pass
    accs, per = fword_shape(vregs)
    for nvec in range(1, 9):
        passes = fword_passes(nvec, vregs)
        assert [v for p in passes for v in p] == list(range(nvec))
        assert max(len(p) for p in passes) <= per
        assert max(len(p) for p in passes) - min(len(p) for p in passes) <= 1
        npix = fword_pix(nvec, vregs)
        assert 1 <= npix <= FWORD_MAX_PIX and npix * max(len(p) for p in passes) <= accs
        if vregs == 32:
            assert len(passes) == 1
    assert vector_registers(frozenset({"avx2"})) == 16
    assert vector_registers(frozenset({"avx2", "avx512f"})) == 32


def _epilogue_bit(acc, b, a, be):
    with np.errstate(all="ignore"):
        return ~(((acc + b) * a + be) >= 0)


def test_sign_thresholds_give_the_epilogue_bit_for_every_float(rng):
    co = 64
    b = (rng.standard_normal(co) * 10.0 ** rng.integers(-8, 8, co)).astype(np.float32)
    a = (rng.standard_normal(co) * 10.0 ** rng.integers(-30, 30, co)).astype(np.float32)
    be = (rng.standard_normal(co) * 10.0 ** rng.integers(-8, 8, co)).astype(np.float32)
    b[:4], a[:4], be[:4] = 0.0, (1.0, -1.0, 3e38, -3e-38), (0.0, -0.0, 1e-45, -3e38)
    w = rng.standard_normal((5, co)).astype(np.float32)
    wt, thr = K.sign_thresholds(w, b, a, be)
    sign = np.where(a < 0, np.float32(-1), np.float32(1))
    assert np.array_equal(wt, w * sign)  # negated exactly where alpha < 0
    # conv values around every threshold, across magnitudes, and the special values
    near = thr[np.isfinite(thr)]
    with np.errstate(over="ignore"):
        accs = [rng.standard_normal(2000).astype(np.float32) * np.float32(10.0) ** e
                for e in range(-40, 39, 6)]
    accs += [near, np.nextafter(near, np.float32(np.inf)), np.nextafter(near, -np.float32(np.inf)),
             np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45], np.float32)]
    acc = np.concatenate([*accs, -near]).astype(np.float32)[:, None]  # every value x channel
    want = _epilogue_bit(acc, b, a, be)
    with np.errstate(invalid="ignore"):
        got = ~((acc * sign) >= thr)  # what the kernel computes on the (negated) sums
    assert np.array_equal(got, want)
    assert want.any() and (~want).any()


def test_sign_thresholds_refuse_a_zero_or_non_finite_parameter():
    w, one = np.ones((3, 2), np.float32), np.ones(2, np.float32)
    assert K.sign_thresholds(w, one, one, one) is not None
    assert K.sign_thresholds(w, one, np.array([1.0, 0.0], np.float32), one) is None
    for bad in (np.inf, -np.inf, np.nan):
        assert K.sign_thresholds(w, np.array([1.0, bad], np.float32), one, one) is None
        assert K.sign_thresholds(w, one, np.array([1.0, bad], np.float32), one) is None
        assert K.sign_thresholds(w, one, one, np.array([1.0, bad], np.float32)) is None


@pytest.mark.parametrize("c,k,s,p,ceil", [(90, 2, 2, 0, False), (130, 3, 2, 1, True),
                                           (23, 2, 2, 1, True), (64, 3, 1, 1, False),
                                           # 2x2 windows: whole ones take the unrolled path,
                                           # clipped last row/column (ceil), stride 1
                                           (64, 2, 2, 0, True), (200, 2, 1, 0, False)])
def test_bit_maxpool_is_and_of_window_and_float_maxpool_matches_torch(c, k, s, p, ceil, rng):
    x = rng.standard_normal((2, 7, 9, c)).astype(np.float32)
    t = torch.from_numpy(x.transpose(0, 3, 1, 2))
    ref = F.max_pool2d(t, k, s, p, ceil_mode=ceil).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(K.run_maxpool_float(x, (k, k), (s, s), (p, p), ceil), ref)
    # on signs (bit 1 = -1) the max of a window is the AND of its bits
    bits = K.run_maxpool_bits(pack_signs(x), (k, k), (s, s), (p, p), ceil)
    assert np.array_equal(bits, pack_signs(np.ascontiguousarray(ref)))


def test_float_pools_match_torch(rng):
    x = rng.standard_normal((2, 7, 9, 13)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[1, 3, 3, :] = -np.inf
    t = torch.from_numpy(x.transpose(0, 3, 1, 2))
    nhwc = lambda y: y.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    got = K.run_maxpool_float(x, (3, 3), (2, 2), (1, 1), True)
    np.testing.assert_array_equal(got, nhwc(F.max_pool2d(t, 3, 2, 1, ceil_mode=True)))
    got = K.run_avgpool(x, (3, 2), (2, 1), (1, 1), False, False)
    ref = nhwc(F.avg_pool2d(t, (3, 2), (2, 1), (1, 1), count_include_pad=False))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    got = K.run_adaptive_avgpool(np.nan_to_num(x, nan=0.0, neginf=-1.0), (2, 3))
    ref = nhwc(F.adaptive_avg_pool2d(torch.from_numpy(
        np.nan_to_num(x, nan=0.0, neginf=-1.0).transpose(0, 3, 1, 2)), (2, 3)))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_kernel_calls_validate_shapes(rng):
    cin, co = 70, 20
    x = _random_bits(rng, (1, 6, 6, 2), cin)
    wb = K.block_weights(_random_bits(rng, (co, 3, 6), cin))
    init, xmask = K.threshold_init(np.zeros(co, np.int32), np.zeros(co, np.uint8))
    out = np.empty((1, 4, 4, 1), np.uint64)
    K.bconv_call(x, wb, co, (1, 1), cin * 9, out, init, xmask=xmask)  # fine
    with pytest.raises(EngineError, match="window inside"):
        K.bconv_call(x, wb, co, (1, 1), cin * 9, np.empty((1, 5, 4, 1), np.uint64), init,
                     xmask=xmask)
    with pytest.raises(EngineError, match="weight blocks"):
        K.bconv_call(x, wb, co + 16, (1, 1), cin * 9, out, init, xmask=xmask)
    with pytest.raises(EngineError, match="init"):
        K.bconv_call(x, wb, co, (1, 1), cin * 9, out, init[:-1], xmask=xmask)
    with pytest.raises(EngineError, match="bit count"):
        K.bconv_call(x, wb, co, (1, 1), 10**6, out, init, xmask=xmask)
    with pytest.raises(EngineError, match="input words"):
        K.im2col_bits_call(x, 140, (3, 3), (1, 1), np.empty((16, K.words(9 * 140)), np.uint64))
    with pytest.raises(EngineError, match="out patch planes"):
        K.im2col_bits_call(x, cin, (3, 3), (1, 1), np.empty((16, 10), np.uint64))
    planes = np.zeros(K.patch_planes_shape(1, 6, 6, cin, (3, 3), (1, 1)), np.uint64)
    dense = K.block_weights(K.dense_bits(_random_bits(rng, (co, 3, 6), cin), cin))
    K.bconv_patch_call(planes, dense, co, cin * 9, out, init, xmask=xmask)  # fine
    with pytest.raises(EngineError, match="dense weights"):
        K.bconv_patch_call(planes, wb, co, cin * 9, out, init, xmask=xmask)
    with pytest.raises(EngineError, match="window inside"):
        K.bconv_patch_call(planes, dense, co, cin * 9, np.empty((1, 4, 7, 1), np.uint64), init,
                           xmask=xmask)
    with pytest.raises(EngineError, match="padded output"):
        K.pad_call(x, (1, 1), np.empty((1, 8, 7, 2), np.uint64))
    xf = np.zeros((1, 6, 6, 3), np.float32)
    ep = (np.zeros(32, np.float32),) * 3 + (tail_mask(co),)
    with pytest.raises(EngineError, match="weight blocks"):
        K.fconv_pack_call(xf, np.zeros((2, 26, 16), np.float32), co, (3, 3), (1, 1), ep,
                          np.empty((1, 4, 4, 1), np.uint64))


def _program(seed: int = 0):
    torch.manual_seed(seed)
    model = dyadic_fp_weights(randomize_bn(build_model("nin", width=0.25), seed=seed))
    return model.eval(), compile_model(model.eval(), (3, 32, 32))


def test_plans_are_reused_and_results_not_aliased():
    model, program = _program()
    x = dyadic_input((5, 3, 32, 32), seed=4)
    first = program(x)
    again = program(x)
    assert np.array_equal(first, again)
    first[:] = 0  # the caller owns the result: the next call is unaffected
    assert np.array_equal(program(x), again)
    one = np.concatenate([program(x[i:i + 1]) for i in range(5)])
    np.testing.assert_allclose(one, again, rtol=1e-6, atol=1e-6)
    serial = program(x, batch_size=2, threads=1)
    np.testing.assert_allclose(serial, again, rtol=1e-6, atol=1e-6)
    for threads in (None, 1):  # an empty batch gives empty logits, one chunk or many
        assert program(x[:0], threads=threads).shape == (0, again.shape[1])
    inter = program.intermediates(x[:2])
    assert inter and all(v.shape[0] == 2 for v in inter.values())
    assert np.array_equal(unpack_signs(pack_signs(np.ones((1, 3), np.float32)), 3),
                          np.ones((1, 3), np.float32))


def test_patch_planes_built_per_chunk_of_images_give_the_same_logits(monkeypatch):
    from bnnprune.engine import plan as plan_mod

    _, program = _program()
    x = dyadic_input((5, 3, 32, 32), seed=4)
    whole = program(x)
    dense = [i for i, op in enumerate(program.ops)
             if op.kind == "bconv" and program.prepared(i).dense]
    assert dense  # the test needs a layer on a patch matrix
    monkeypatch.setattr(plan_mod, "PATCH_CHUNK_BYTES", 1)  # one image per chunk
    _, chunked = _program()
    assert np.array_equal(chunked(x, threads=1), whole)  # chunks on one thread only
    for threads, calls in ((1, 5), (2, 1)):
        steps = dict(chunked.plan(5, threads).steps)
        for i in dense:
            builders = [c for c in steps[i] if "im2col" in c.func.__name__]
            assert len(builders) == calls


@pytest.mark.parametrize("shape,dtype", [((5,), np.float32), ((3, 7), np.uint64),
                                         ((2, 3, 1), np.int64)])
def test_aligned_arrays_start_on_a_cache_line_and_keep_their_values(shape, dtype, rng):
    src = rng.integers(0, 1000, size=shape).astype(dtype)
    for a in (K.aligned(src), K.aligned_zeros(shape, dtype), K.aligned_empty(shape, dtype)):
        assert a.ctypes.data % K.base.ALIGN == 0
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
    assert np.array_equal(K.aligned(src), src)
    assert not K.aligned_zeros(shape, dtype).any()


def test_weights_and_buffers_the_kernels_load_in_vectors_are_aligned():
    _, program = _program()
    plan = program.plan(2, 1)
    arrays = [b for vid, b in plan.bufs.items() if vid != 0] + plan._scratch
    for i, op in enumerate(program.ops):
        if op.kind in ("bconv", "fconv"):
            prep = program.prepared(i)
            arrays += ([prep.wb, prep.init] if op.kind == "bconv"
                       else [prep.wf, *prep.epilogue[:3]])
    assert arrays and all(a.ctypes.data % K.base.ALIGN == 0 for a in arrays)


def test_plan_bytes_count_each_buffer_once():
    _, program = _program()  # NIN: its padded first layer's buffer takes the input
    plan = program.plan(2, 1)
    assert plan._input_buffer[1] != (0, 0)
    counted: list[np.ndarray] = []
    for a in [*plan._scratch, *plan.bufs.values()]:  # views (input, flatten) share memory
        if not any(np.shares_memory(a, b) for b in counted):
            counted.append(a)
    assert plan.nbytes == sum(a.nbytes for a in counted)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_must_be_positive(threads):
    _, program = _program()
    with pytest.raises(EngineError, match="threads"):
        program(np.zeros((1, 3, 32, 32), np.float32), threads=threads)


@pytest.mark.parametrize("kh,kw,cin,cout,run,dense", [
    (5, 5, 96, 192, 316, True),  # NIN's 5x5: 38 words instead of 50, for 12 output blocks
    (5, 5, 61, 121, 10**6, True),  # 24 words instead of 25 for 8 blocks: pays in long runs
    (5, 5, 61, 121, 316, False),   # but not on nin's 16x16 maps (short runs cost more)
    (5, 5, 61, 32, 10**6, False),  # the same for 2 blocks: not worth building the matrix
    (3, 3, 45, 90, 222, True),     # 7 instead of 9 words for 6 blocks
    (3, 3, 61, 16, 838, False),    # 9 instead of 9 words: nothing saved
    (3, 3, 56, 16, 838, False),    # 8 instead of 9 words for 1 block
    (3, 3, 21, 45, 838, True),     # 3 instead of 9 words for 3 blocks
    (3, 3, 120, 120, 78, False),   # 17 instead of 18 words for 8 blocks on 8x8 maps
    (3, 3, 128, 128, 61, False),   # whole words: nothing saved
    (1, 1, 7, 512, 10**6, False),  # a 1x1 conv has no window to pack
])
def test_patch_matrix_only_where_it_saves_more_than_it_costs(kh, kw, cin, cout, run, dense):
    direct, kp = kh * kw * K.words(cin), K.words(kh * kw * cin)
    saved = -(-cout // K.BLOCK_CH) * (direct - kp)
    build = (K.PATCH_WORD_COST + K.PATCH_RUN_COST / run) * direct
    assert (kh * kw > 1 and saved > build) == dense
    assert K.use_patch_matrix(kh, kw, cin, cout, run) == dense


def test_patch_run_is_what_the_serial_builder_covers_in_one_run():
    assert K.patch_run((28, 28), 3, (1, 1)) == 27 * 30 + 28  # a whole image at the pitch
    assert K.patch_run((14, 14), 3, (2, 2)) == 14  # one output row


@pytest.mark.parametrize("n,h,w,cin,k,s,p,pv", [
    (10, 24, 24, 23, 3, 1, 1, -1),  # big enough for the parallel driver (bands of rows)
    (10, 23, 25, 90, 3, 2, 1, 1),   # stride 2: one output row per run, 2 words per tap
    (2, 6, 7, 45, 2, 1, 0, 1),      # no padding, even window
    # stride 1 with 2 and 3 words per pixel: the input split into word planes first (whole
    # images, and bands of rows for the parallel driver)
    (3, 9, 8, 130, 3, 1, 1, -1), (10, 16, 16, 96, 5, 1, 2, 1),
    # 5 and 7 channels: up to 13 tap words land in one patch word (the builder ORs them in
    # registers four at a time, then into the stored words); runs of 3 and 17 words are not
    # whole vectors of 8
    (2, 9, 11, 5, 3, 1, 1, -1), (1, 7, 6, 7, 5, 1, 2, 1), (1, 1, 3, 9, 3, 1, 1, 1),
    (1, 3, 7, 9, 3, 1, 1, -1),
])
def test_patch_matrix_rows_are_the_windows_bits(n, h, w, cin, k, s, p, pv, rng):
    wd = K.words(cin)
    x = _random_bits(rng, (n, h, w, wd), cin)
    pad_words = tail_mask(cin) if pv == -1 else np.zeros(wd, np.uint64)
    signs = np.pad(unpack_signs(x, cin), ((0, 0), (p, p), (p, p), (0, 0)),
                   constant_values=float(pv))
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    win = np.stack([signs[:, ky:ky + s * (ho - 1) + 1:s, kx:kx + s * (wo - 1) + 1:s]
                    for ky in range(k) for kx in range(k)], axis=3)
    expect = pack_signs(win.reshape(n * ho * wo, k * k * cin))
    xp = K.run_pad_bits(x, (p, p), pad_words)
    shape = K.patch_planes_shape(n, *xp.shape[1:3], cin, (k, k), (s, s))
    assert shape[:3] == (K.words(k * k * cin), n, ho)
    assert shape[3] == (xp.shape[2] if s == 1 else wo)
    for threads in (1, 2):
        planes = np.full(shape, 7, np.uint64)
        K.im2col_bits_call(xp, cin, (k, k), (s, s), planes, threads=threads)()
        # plane j, pixel (b, oy, ox) is word j of that pixel's patch (the words past wo in
        # each row are the runs' don't-care positions)
        got = planes[:, :, :, :wo].reshape(shape[0], -1).T
        assert np.array_equal(got, expect)


@pytest.mark.parametrize("t0,npx,ho,wo,sh,sw", [(0, 32, 5, 7, 1, 1), (29, 32, 5, 7, 2, 1),
                                                (64, 5, 3, 3, 1, 2), (3, 1, 1, 4, 1, 1)])
def test_pixel_bases_are_the_window_offsets_across_rows_and_images(t0, npx, ho, wo, sh, sw):
    hp, wp, c = ho * sh + 2, wo * sw + 2, 3
    cur = pixel_start(t0, ho, wo)
    assert cur == (t0 // (ho * wo), t0 // wo % ho, t0 % wo)
    for tile in range(3):  # consecutive tiles carry the cursor, no division
        start = t0 + tile * npx
        bases = np.full(40, -1, np.int64)
        cur = pixel_bases(bases, cur, npx, ho, wo, hp, wp, sh, sw, c)
        m = np.arange(start, start + npx)
        n, oy, ox = m // (ho * wo), m // wo % ho, m % wo
        expect = ((n * hp + oy * sh) * wp + ox * sw) * c
        assert np.array_equal(bases[:npx], expect)
        assert np.all(bases[npx:] == expect[-1])  # the rest repeats the last pixel
        assert cur == pixel_start(start + npx, ho, wo)


@pytest.mark.parametrize("dtype", [np.uint64, np.float32])
@pytest.mark.parametrize("ph,pw,c", [(1, 2, 3), (2, 0, 1), (0, 1, 2)])
def test_pad_copies_the_interior_and_leaves_the_border(dtype, ph, pw, c, rng):
    x = rng.integers(1, 1000, size=(3, 4, 5, c)).astype(dtype)
    out = np.full((3, 4 + 2 * ph, 5 + 2 * pw, c), 7, dtype)
    K.pad_call(x, (ph, pw), out)()
    expect = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=7)
    assert np.array_equal(out, expect)


@pytest.mark.parametrize("ph,pw,c,threads", [(0, 0, 3, 1), (2, 1, 3, 2), (1, 1, 1, None),
                                               (0, 2, 5, 2)])
def test_nchw_input_is_copied_channels_last_into_the_interior(ph, pw, c, threads, rng):
    x = rng.standard_normal((4, c, 6, 7)).astype(np.float32)
    out = np.full((4, 6 + 2 * ph, 7 + 2 * pw, c), 7, np.float32)
    load = K.nchw_load_call(out, (ph, pw), threads=threads)
    load(x)
    expect = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (ph, ph), (pw, pw), (0, 0)),
                    constant_values=7)
    assert np.array_equal(out, expect)
    load(np.asfortranarray(x[::-1]))  # any memory layout
    assert np.array_equal(out[:, ph:ph + 6, pw:pw + 7], x[::-1].transpose(0, 2, 3, 1))
    with pytest.raises(EngineError, match="contiguous"):
        K.nchw_load_call(out[:, 1:])


def test_engine_caches_are_stamped_with_every_kernel_source(tmp_path):
    """numba drops a cached function when its own file changes; the engine's functions also
    inline intrinsics.py and base.py, so their cache stamps carry a hash of every kernel
    source (a function elsewhere keeps numba's own stamp)."""
    import importlib.util
    import inspect

    from bnnprune.engine import bench
    from bnnprune.engine.kernels import base, bconv

    sources = sorted(Path(inspect.getfile(base)).parent.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()
    assert base.KERNELS_HASH == digest
    for fn in (bconv._bconv_ser, bconv._bconv_tiles, bench._xpc_probe):
        assert fn._cache._impl._locator.get_source_stamp()[1] == digest
    (tmp_path / "outside_mod.py").write_text(
        "import numba\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location("outside_mod", tmp_path / "outside_mod.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.f(1) == 2
    assert not type(mod.f._cache._impl._locator).__name__.startswith("BnnpruneEngine")
