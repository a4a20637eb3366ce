"""Numba kernels of the packed engine: XNOR-popcount convolution, bit pooling, float helpers.

Layout: activations are channels-last. Binary activations are packed per pixel into
``words(C)`` 64-bit words (bit ``j`` of word ``w`` is channel ``64*w + j``; bit 1 = -1,
bit 0 = +1; unused high bits of the last word are always 0). Kernels never check bounds
themselves: the ``*_call`` builders (and the ``run_*`` wrappers over them) check every shape
and index range first and raise :class:`EngineError`; they return a zero-argument callable,
so a validated call can be repeated on the same (preallocated) arrays without re-checking.

Every row-parallel kernel exists twice: ``_x_par`` (``parallel=True``, a ``prange`` over
chunks) and ``_x_ser`` (plain loop, no thread-pool round trip). :func:`use_parallel` picks
one from the amount of work, so small layers at batch 1 do not pay a parallel region.

The inner loops of the XNOR-popcount GEMM and of the fused float-conv+sign kernel are
written as LLVM IR (``numba.extending.intrinsic``) over vector registers: a 16-channel
block keeps four ``<4 x i64>`` accumulators, each activation word is broadcast and XORed
with four vectors of weight words, and ``llvm.ctpop.v4i64`` (lowered to the ``vpshufb``
nibble lookup + ``vpsadbw`` on AVX2, as in the roofline loop) counts the bits. The
threshold epilogue starts the accumulators at ``-(thr+1)`` so the output bits are the
accumulators' sign bits (``vmovmskpd``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from bnnprune.engine.errors import EngineError

__all__ = [
    "BLOCK_CH",
    "PAR_MIN_WORK",
    "adaptive_avgpool_call",
    "affine_pack_call",
    "bconv_call",
    "block_channels",
    "block_float_weights",
    "block_weights",
    "channel_masks",
    "dense_bits",
    "fconv_call",
    "fconv_pack_call",
    "im2col_bits_call",
    "pad_call",
    "pad_fill",
    "pool_call",
    "pool_out_size",
    "popcount64",
    "run_adaptive_avgpool",
    "run_affine_pack",
    "run_avgpool",
    "run_bconv",
    "run_im2col",
    "run_maxpool_bits",
    "run_maxpool_float",
    "run_pad_bits",
    "stream_xor_popcount",
    "threshold_init",
    "use_parallel",
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


# Work (roughly: nanoseconds of one core) below which a kernel runs on the calling thread.
# A parallel region costs a thread hand-off and a barrier (~5 us on an idle machine, far
# more when the cores are shared), which the smallest layers at batch 1 cannot win back.
PAR_MIN_WORK = 20_000


def use_parallel(work: float, threads: int | None) -> bool:
    """Whether a kernel with ``work`` (~ns on one core) should use the numba thread pool."""
    t = numba.get_num_threads() if threads is None else int(threads)
    return t > 1 and work >= PAR_MIN_WORK


def _chunks(rows: int) -> int:
    return max(1, min(rows, 4 * numba.get_num_threads()))


# --------------------------------------------------------------------------- LLVM IR helpers

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
_V4I64 = ir.VectorType(_I64, 4)
_V8F32 = ir.VectorType(_F32, 8)

BLOCK_CH = 16  # output channels per register block (4 x <4 x i64> or 2 x <8 x float>)
TILE_PIX = 32  # output pixels that reuse one weight block while it sits in L1
FPIX = 4  # pixels per register block of the float conv


def _is_vec(t: types.Type, dtype: types.Type) -> bool:
    return isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and t.dtype == dtype


def _ints(context, builder, sig_args, args, idx):
    return [context.cast(builder, args[i], sig_args[i], types.int64) for i in idx]


def _data(context, builder, ty, val):
    return context.make_array(ty)(context, builder, val).data


def _vload(builder, ptr, off, vty, align):
    p = builder.bitcast(builder.gep(ptr, [off]), vty.as_pointer())
    return builder.load(p, align=align)


def _splat(builder, x, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, ir.Constant(_I32, 0))
    mask = ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count)
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), mask)


def _concat_masks(builder, masks):
    """Concatenate ``<n x i1>`` masks into one integer of n*len(masks) bits (lane 0 = bit 0)."""
    while len(masks) > 1:
        nxt = []
        for a, b in zip(masks[::2], masks[1::2], strict=True):
            n = a.type.count
            sel = ir.Constant(ir.VectorType(_I32, 2 * n), list(range(2 * n)))
            nxt.append(builder.shuffle_vector(a, b, sel))
        masks = nxt
    m = masks[0]
    return builder.zext(builder.bitcast(m, ir.IntType(m.type.count)), _I64)


@intrinsic
def _xpc16(typingctx, x, base, rowstep, kh, seg, w, woff, init, ioff):  # noqa: ARG001
    """16 accumulators ``init[ioff+q] + sum popcount(x[row words] ^ w[...16k+q])``.

    Rows: ``kh`` rows of ``seg`` words, row ``r`` starting at ``x[base + r*rowstep]``; the
    weights of the 16 channels are interleaved: word ``k`` of channel ``q`` at
    ``w[woff + 16*k + q]``.
    """
    ints = (base, rowstep, kh, seg, woff, ioff)
    if not (_is_vec(x, types.uint64) and _is_vec(w, types.uint64) and _is_vec(init, types.int64)
            and all(isinstance(t, types.Integer) for t in ints)):
        return None
    sig = types.UniTuple(types.int64, BLOCK_CH)(x, base, rowstep, kh, seg, w, woff, init, ioff)

    def codegen(context, builder, signature, args):
        sa = signature.args
        xp = _data(context, builder, sa[0], args[0])
        wp = _data(context, builder, sa[5], args[5])
        ip = _data(context, builder, sa[7], args[7])
        base_, rowstep_, kh_, seg_, woff_, ioff_ = _ints(context, builder, sa, args,
                                                          (1, 2, 3, 4, 6, 8))
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V4I64, [_V4I64]),
                                               "llvm.ctpop.v4i64")
        nv = BLOCK_CH // 4
        accs = []
        for j in range(nv):
            v0 = _vload(builder, ip, builder.add(ioff_, ir.Constant(_I64, 4 * j)), _V4I64, 8)
            accs.append(cgutils.alloca_once_value(builder, v0))
        step = ir.Constant(_I64, BLOCK_CH)
        with cgutils.for_range(builder, kh_) as ky:
            o = builder.add(base_, builder.mul(ky.index, rowstep_))
            wrow = builder.add(woff_, builder.mul(builder.mul(ky.index, seg_), step))
            with cgutils.for_range(builder, seg_) as it:
                xb = _splat(builder, builder.load(builder.gep(xp, [builder.add(o, it.index)])),
                            _V4I64)
                wk = builder.add(wrow, builder.mul(it.index, step))
                for j in range(nv):
                    wv = _vload(builder, wp, builder.add(wk, ir.Constant(_I64, 4 * j)), _V4I64, 8)
                    c = builder.call(ctpop, [builder.xor(xb, wv)])
                    builder.store(builder.add(builder.load(accs[j]), c), accs[j])
        vals = []
        for j in range(nv):
            a = builder.load(accs[j])
            vals += [builder.extract_element(a, ir.Constant(_I32, e)) for e in range(4)]
        return context.make_tuple(builder, signature.return_type, vals)

    return sig, codegen


@intrinsic
def _signbits16(typingctx, acc):  # noqa: ARG001
    """Bit q set where accumulator q is negative (one ``vmovmskpd`` per 4 lanes)."""
    if not (isinstance(acc, types.UniTuple) and acc.count == BLOCK_CH
            and acc.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        bits = ir.Constant(_I64, 0)
        for j in range(BLOCK_CH // 4):
            v = ir.Constant(_V4I64, ir.Undefined)
            for e in range(4):
                v = builder.insert_element(v, builder.extract_value(args[0], 4 * j + e),
                                           ir.Constant(_I32, e))
            neg = builder.icmp_signed("<", v, ir.Constant(_V4I64, [0] * 4))
            nib = builder.zext(builder.bitcast(neg, ir.IntType(4)), _I64)  # vmovmskpd
            bits = builder.or_(bits, builder.shl(nib, ir.Constant(_I64, 4 * j)))
        return bits

    return types.uint64(acc), codegen


@intrinsic
def _affine_store16(typingctx, acc, out, ooff, nbits, m1, a1, m2, a2, c0):  # noqa: ARG001
    """``out[ooff+q] = (float32(nbits - 2*acc[q]) * m1[c] + a1[c]) * m2[c] + a2[c]``, c = c0+q.

    All 16 channels are written (the caller handles a partial last block).
    """
    ints = (ooff, nbits, c0)
    if not (isinstance(acc, types.UniTuple) and acc.count == BLOCK_CH
            and acc.dtype == types.int64 and _is_vec(out, types.float32)
            and all(_is_vec(t, types.float32) for t in (m1, a1, m2, a2))
            and all(isinstance(t, types.Integer) for t in ints)):
        return None
    sig = types.none(acc, out, ooff, nbits, m1, a1, m2, a2, c0)

    def codegen(context, builder, signature, args):
        sa = signature.args
        op = _data(context, builder, sa[1], args[1])
        ooff_, nbits_, c0_ = _ints(context, builder, sa, args, (2, 3, 8))
        par = [_data(context, builder, sa[i], args[i]) for i in (4, 5, 6, 7)]
        v8i64 = ir.VectorType(_I64, 8)
        kvec = _splat(builder, nbits_, v8i64)
        one = ir.Constant(v8i64, [1] * 8)
        for j in range(BLOCK_CH // 8):
            p = ir.Constant(v8i64, ir.Undefined)
            for e in range(8):
                p = builder.insert_element(p, builder.extract_value(args[0], 8 * j + e),
                                           ir.Constant(_I32, e))
            # |K - 2p| <= K < 2**31 (checked by bconv_call): exact through int32
            d32 = builder.trunc(builder.sub(kvec, builder.shl(p, one)),
                                ir.VectorType(_I32, 8))
            d = builder.sitofp(d32, _V8F32)
            off = builder.add(c0_, ir.Constant(_I64, 8 * j))
            m1v, a1v, m2v, a2v = (_vload(builder, q, off, _V8F32, 4) for q in par)
            r = builder.fadd(builder.fmul(builder.fadd(builder.fmul(d, m1v), a1v), m2v), a2v)
            dst = builder.gep(op, [builder.add(ooff_, ir.Constant(_I64, 8 * j))])
            builder.store(r, builder.bitcast(dst, _V8F32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _fconv_typed(x, bases, w, bias, alpha, beta, ints) -> bool:
    return (_is_vec(x, types.float32) and _is_vec(bases, types.int64)
            and _is_vec(w, types.float32) and _is_vec(bias, types.float32)
            and _is_vec(alpha, types.float32) and _is_vec(beta, types.float32)
            and all(isinstance(t, types.Integer) for t in ints))


def _fconv_epilogue(context, builder, sa, args):
    """The float conv of 4 pixels x 16 channels (FMA) and ``(acc + bias) * alpha + beta``.

    Returns ``v[p][h]``: the ``<8 x float>`` results of pixel ``p``, channels ``8h..8h+7``.
    """
    xp = _data(context, builder, sa[0], args[0])
    bp = _data(context, builder, sa[1], args[1])
    wp = _data(context, builder, sa[6], args[6])
    boff_, rowstep_, kh_, seg_, woff_, poff_ = _ints(context, builder, sa, args,
                                                      (2, 3, 4, 5, 7, 11))
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V8F32, [_V8F32] * 3), "llvm.fma.v8f32")
    pbase = [builder.load(builder.gep(bp, [builder.add(boff_, ir.Constant(_I64, p))]))
             for p in range(FPIX)]
    zero = ir.Constant(_V8F32, [0.0] * 8)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(FPIX)]
    step = ir.Constant(_I64, BLOCK_CH)
    with cgutils.for_range(builder, kh_) as ky:
        roff = builder.mul(ky.index, rowstep_)
        rows = [builder.add(b, roff) for b in pbase]
        wrow = builder.add(woff_, builder.mul(builder.mul(ky.index, seg_), step))
        with cgutils.for_range(builder, seg_) as it:
            wk = builder.add(wrow, builder.mul(it.index, step))
            wv = [_vload(builder, wp, builder.add(wk, ir.Constant(_I64, 8 * h)), _V8F32, 4)
                  for h in range(2)]
            for p in range(FPIX):
                xv = builder.load(builder.gep(xp, [builder.add(rows[p], it.index)]))
                xb = _splat(builder, xv, _V8F32)
                for h in range(2):
                    a = accs[p][h]
                    builder.store(builder.call(fma, [xb, wv[h], builder.load(a)]), a)
    vecs = []
    for i in (8, 9, 10):
        ptr = _data(context, builder, sa[i], args[i])
        vecs.append([_vload(builder, ptr, builder.add(poff_, ir.Constant(_I64, 8 * h)),
                            _V8F32, 4) for h in range(2)])
    vb, va, vbeta = vecs
    out = []
    for p in range(FPIX):
        row = []
        for h in range(2):
            y = builder.fadd(builder.load(accs[p][h]), vb[h])
            row.append(builder.fadd(builder.fmul(y, va[h]), vbeta[h]))
        out.append(row)
    return out


@intrinsic
def _fconv_bits4(typingctx, x, bases, boff, rowstep, kh, seg, w, woff, bias, alpha, beta,  # noqa: ARG001
                 poff):
    """Sign bits of a float conv for 4 pixels x 16 channels (16-bit mask per pixel).

    Pixel ``p`` reads ``kh`` rows of ``seg`` floats at ``x[bases[boff+p] + r*rowstep]``; the
    16 channels' weights are interleaved (``w[woff + 16*k + q]``). The epilogue is PyTorch's
    ``y = acc + bias; v = y*alpha + beta`` (separate roundings) and the bit is ``not v >= 0``.
    """
    if not _fconv_typed(x, bases, w, bias, alpha, beta, (boff, rowstep, kh, seg, woff, poff)):
        return None
    sig = types.UniTuple(types.uint64, FPIX)(x, bases, boff, rowstep, kh, seg, w, woff, bias,
                                             alpha, beta, poff)

    def codegen(context, builder, signature, args):
        vals = _fconv_epilogue(context, builder, signature.args, args)
        zero = ir.Constant(_V8F32, [0.0] * 8)
        out = [_concat_masks(builder, [builder.fcmp_unordered("<", v, zero) for v in row])
               for row in vals]
        return context.make_tuple(builder, signature.return_type, out)

    return sig, codegen


@intrinsic
def _fconv_store4(typingctx, x, bases, boff, rowstep, kh, seg, w, woff, bias, alpha, beta,  # noqa: ARG001
                  poff, dst):
    """As :func:`_fconv_bits4`, but stores the 4 x 16 float results to ``dst[16*p + q]``."""
    if not (_fconv_typed(x, bases, w, bias, alpha, beta, (boff, rowstep, kh, seg, woff, poff))
            and _is_vec(dst, types.float32)):
        return None
    sig = types.none(x, bases, boff, rowstep, kh, seg, w, woff, bias, alpha, beta, poff, dst)

    def codegen(context, builder, signature, args):
        vals = _fconv_epilogue(context, builder, signature.args, args)
        dp = _data(context, builder, signature.args[12], args[12])
        for p, row in enumerate(vals):
            for h, v in enumerate(row):
                ptr = builder.gep(dp, [ir.Constant(_I64, BLOCK_CH * p + 8 * h)])
                builder.store(v, builder.bitcast(ptr, _V8F32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------- XNOR-popcount GEMM


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
    """Accumulator start values and per-block output masks for ``(popcount > thr) xor flip``.

    A channel's accumulator starts at ``-(thr+1)``, so it ends negative exactly when
    ``popcount <= thr``; the bit is then ``sign xor (not flip)``. Padding channels start very
    negative with flip 0 and so always give bit 0.
    """
    co = int(thr.shape[0])
    cb = -(-co // BLOCK_CH)
    init = np.full(cb * BLOCK_CH, -(1 << 62), np.int64)
    init[:co] = -(thr.astype(np.int64) + 1)
    keep = np.ones(cb * BLOCK_CH, np.uint64)
    keep[:co] = 1 - (flip.astype(np.uint64) & np.uint64(1))
    shifts = np.arange(BLOCK_CH, dtype=np.uint64)
    xmask = np.bitwise_or.reduce(keep.reshape(cb, BLOCK_CH) << shifts, axis=1)
    return init, np.ascontiguousarray(xmask, dtype=np.uint64)


@njit(cache=True)
def _bconv_tiles(x, w, ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, init, xmask, use_bits, nbits,
                 m1, a1, m2, a2, co, out_b, out_f, t_lo, t_hi):
    m_total = out_b.shape[0] if use_bits else out_f.shape[0]
    hw = ho * wo
    rowstep = wp * wd
    kk = kh * seg * BLOCK_CH
    out_flat = out_f.reshape(-1)
    scratch = np.empty(BLOCK_CH, np.float32)
    bases = np.empty(TILE_PIX, np.int64)
    for tile in range(t_lo, t_hi):
        t0 = tile * TILE_PIX
        t1 = min(t0 + TILE_PIX, m_total)
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
            if use_bits:
                xm = xmask[cb]
                wi = c0 >> 6
                sft = np.uint64(c0 & 63)
                for m in range(t0, t1):
                    acc = _xpc16(x, bases[m - t0], rowstep, kh, seg, w, cb * kk, init, c0)
                    out_b[m, wi] |= (_signbits16(acc) ^ xm) << sft
            else:
                nc = min(BLOCK_CH, co - c0)
                for m in range(t0, t1):
                    acc = _xpc16(x, bases[m - t0], rowstep, kh, seg, w, cb * kk, init, c0)
                    if nc == BLOCK_CH:
                        _affine_store16(acc, out_flat, m * co + c0, nbits, m1, a1, m2, a2, c0)
                    else:  # last, partial block: through a 16-float scratch row
                        _affine_store16(acc, scratch, 0, nbits, m1, a1, m2, a2, c0)
                        for q in range(nc):
                            out_f[m, c0 + q] = scratch[q]


@njit(parallel=True, cache=True)
def _bconv_par(x, w, ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, init, xmask, use_bits, nbits,
               m1, a1, m2, a2, co, out_b, out_f, ntiles):
    for t in prange(ntiles):
        _bconv_tiles(x, w, ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, init, xmask, use_bits,
                     nbits, m1, a1, m2, a2, co, out_b, out_f, t, t + 1)


@njit(cache=True)
def _bconv_ser(x, w, ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, init, xmask, use_bits, nbits,
               m1, a1, m2, a2, co, out_b, out_f, ntiles):
    _bconv_tiles(x, w, ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, init, xmask, use_bits, nbits,
                 m1, a1, m2, a2, co, out_b, out_f, 0, ntiles)


_EMPTY_U64 = np.zeros((1, 1), np.uint64)
_EMPTY_F32 = np.zeros((1, 1), np.float32)
_F1 = np.zeros(1, np.float32)
_U1 = np.zeros(1, np.uint64)


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
) -> Callable[[], None]:
    """Validate an XNOR-popcount convolution of ``xp`` (N, Hp, Wp, Wd) into ``out``.

    ``wb`` holds the weights blocked by :func:`block_weights`: (ceil(Co/16), KH, KW*Wd, 16).
    With ``xmask`` (and ``init`` from :func:`threshold_init`) ``out`` is packed bits
    (N, Ho, Wo, words(Co)); with ``affine`` = (m1, a1, m2, a2) and a zero ``init`` it is
    float32 (N, Ho, Wo, Co) = ((K - 2*popcount) * m1 + a1) * m2 + a2 with K = ``nbits``.
    Returns the kernel call, bound to these arrays.
    """
    _need(xp.dtype == np.uint64 and xp.ndim == 4 and xp.flags.c_contiguous, "xp uint64 4-D")
    _need(wb.dtype == np.uint64 and wb.ndim == 4 and wb.flags.c_contiguous, "w uint64 4-D")
    n, hp, wp, wd = (int(s) for s in xp.shape)
    ncb, kh, seg, blk = (int(s) for s in wb.shape)
    sh, sw = (int(s) for s in stride)
    co = int(co)
    _need(out.ndim == 4 and out.flags.c_contiguous and int(out.shape[0]) == n, "out 4-D (N, ...)")
    ho, wo = int(out.shape[1]), int(out.shape[2])
    _need(blk == BLOCK_CH and ncb == -(-co // BLOCK_CH), "weight blocks match Co")
    _need(wd >= 1 and seg % wd == 0, "weight row length is a multiple of the input words")
    kw = seg // wd
    _need(min(co, kh, kw, sh, sw, ho, wo) >= 1 and n >= 0, "positive sizes")
    _need((ho - 1) * sh + kh <= hp and (wo - 1) * sw + kw <= wp, "window inside padded input")
    _need(0 <= nbits <= kh * kw * wd * 64 and nbits < 2**31, "bit count fits the words")
    _need(init.dtype == np.int64 and init.shape == (ncb * BLOCK_CH,)
          and init.flags.c_contiguous, "init int64 (blocks*16,)")
    m_total = n * ho * wo
    ntiles = -(-m_total // TILE_PIX)
    flat = xp.reshape(-1)
    wflat = wb.reshape(-1)
    if xmask is not None:
        _need(affine is None, "threshold mode takes no affine arrays")
        _need(xmask.dtype == np.uint64 and xmask.shape == (ncb,), "xmask uint64 (blocks,)")
        _need(out.dtype == np.uint64 and int(out.shape[3]) == words(co), "out bits (.., words)")
        args = (flat, wflat, ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, init, xmask, True, nbits,
                _F1, _F1, _F1, _F1, co, out.reshape(m_total, -1), _EMPTY_F32, ntiles)
    else:
        _need(affine is not None and len(affine) == 4, "float mode needs the affine arrays")
        for a in affine:
            _need(a.dtype == np.float32 and a.shape == (co,), "affine float32 (Co,)")
        _need(out.dtype == np.float32 and int(out.shape[3]) == co, "out float (.., Co)")
        blocked = tuple(block_channels(a, 0.0) for a in affine)  # whole blocks are read
        args = (flat, wflat, ncb, kh, seg, wd, hp, wp, ho, wo, sh, sw, init, _U1, False, nbits,
                *blocked, co, _EMPTY_U64, out.reshape(m_total, co), ntiles)
    if not m_total:
        return _noop
    work = m_total * ncb * kh * seg * 4.0  # ns: 16 XOR-popcounts of one word
    fn = _bconv_par if use_parallel(work, threads) else _bconv_ser
    return functools.partial(fn, *args)


def _noop() -> None:
    return None


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
) -> np.ndarray:
    """XNOR-popcount convolution of the padded packed input ``xp`` (N, Hp, Wp, Wd).

    ``wb`` holds the weights blocked by :func:`block_weights`: (ceil(Co/16), KH, KW*Wd, 16).
    With ``thr``/``flip`` the result is packed bits (N, Ho, Wo, words(Co)), bit =
    (popcount > thr) xor flip. With ``affine`` = (m1, a1, m2, a2) it is float32
    (N, Ho, Wo, Co) = ((K - 2*popcount) * m1 + a1) * m2 + a2 with K = ``nbits``.
    """
    _need(xp.ndim == 4, "xp 4-D")
    co = int(co)
    ho, wo = (int(s) for s in out_hw)
    _need(ho >= 1 and wo >= 1 and co >= 1, "positive sizes")
    shape = (int(xp.shape[0]), ho, wo)
    if thr is not None:
        _need(flip is not None and affine is None, "threshold mode needs thr and flip only")
        _need(thr.dtype == np.int32 and thr.shape == (co,), "thr int32 (Co,)")
        _need(flip.dtype == np.uint8 and flip.shape == (co,), "flip uint8 (Co,)")
        init, xmask = threshold_init(thr, flip)
        out = np.empty((*shape, words(co)), np.uint64)
        bconv_call(xp, wb, co, stride, nbits, out, init, xmask=xmask, threads=threads)()
        return out
    _need(affine is not None and flip is None, "float mode needs the affine arrays")
    out = np.empty((*shape, co), np.float32)
    init = np.zeros(-(-co // BLOCK_CH) * BLOCK_CH, np.int64)
    bconv_call(xp, wb, co, stride, nbits, out, init, affine=affine, threads=threads)()
    return out


# --------------------------------------------------------------------------- dense bit im2col


@njit(cache=True)
def _im2col_bits_rows(x, padw, kh, kw, sh, sw, ph, pw, cin, ho, wo, out, r_lo, r_hi):
    n, h, w, wd = x.shape
    kp = out.shape[1]
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for t in range(r_lo, r_hi):
        b = t // ho
        oy = t - b * ho
        for ox in range(wo):
            o = (t * wo + ox) * kp
            for j in range(kp):
                of[o + j] = 0
            pos = 0
            for ky in range(kh):
                yy = oy * sh - ph + ky
                for kx in range(kw):
                    xx = ox * sw - pw + kx
                    inside = 0 <= yy < h and 0 <= xx < w
                    src = ((b * h + yy) * w + xx) * wd
                    i0 = pos >> 6
                    s = pos & 63
                    if s == 0:  # the tap starts on a word boundary: plain copy (or OR)
                        for k in range(wd):
                            v = xf[src + k] if inside else padw[k]
                            of[o + i0 + k] |= v
                    else:
                        sl = np.uint64(s)
                        sr = np.uint64(64 - s)
                        for k in range(wd):
                            v = xf[src + k] if inside else padw[k]
                            i = i0 + k
                            of[o + i] |= v << sl
                            if i + 1 < kp:
                                of[o + i + 1] |= v >> sr
                    pos += cin


@njit(parallel=True, cache=True)
def _im2col_bits_par(x, padw, kh, kw, sh, sw, ph, pw, cin, ho, wo, out, nchunks):
    rows = x.shape[0] * ho
    for c in prange(nchunks):
        _im2col_bits_rows(x, padw, kh, kw, sh, sw, ph, pw, cin, ho, wo, out,
                          c * rows // nchunks, (c + 1) * rows // nchunks)


@njit(cache=True)
def _im2col_bits_ser(x, padw, kh, kw, sh, sw, ph, pw, cin, ho, wo, out, nchunks):  # noqa: ARG001
    _im2col_bits_rows(x, padw, kh, kw, sh, sw, ph, pw, cin, ho, wo, out, 0, x.shape[0] * ho)


def im2col_bits_call(x: np.ndarray, cin: int, k: tuple[int, int], s: tuple[int, int],
                     p: tuple[int, int], pad_words: np.ndarray, out: np.ndarray,
                     threads: int | None = None) -> Callable[[], None]:
    """Validate a dense bit im2col: every window of packed ``x`` (N, H, W, words(cin)) as one
    row of ``out`` (N*Ho*Wo, words(KH*KW*cin)), the ``cin`` bits of each tap placed right
    after the previous tap's (order ky, kx, channel); taps outside ``x`` read ``pad_words``.
    """
    _need(x.dtype == np.uint64 and x.ndim == 4 and x.flags.c_contiguous, "bits 4-D")
    n, h, w, wd = (int(v) for v in x.shape)
    cin = int(cin)
    _need(cin >= 1 and wd == words(cin), "input words match the channels")
    kh, kw = (int(v) for v in k)
    sh, sw = (int(v) for v in s)
    ph, pw = (int(v) for v in p)
    _need(min(kh, kw, sh, sw) >= 1 and min(ph, pw) >= 0, "positive window")
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    _need(ho >= 1 and wo >= 1, "window fits the padded input")
    kp = words(kh * kw * cin)
    _need(out.dtype == np.uint64 and out.shape == (n * ho * wo, kp) and out.flags.c_contiguous,
          "out (N*Ho*Wo, words(KH*KW*Cin))")
    _need(pad_words.dtype == np.uint64 and pad_words.shape == (wd,), "pad words (Wd,)")
    if not n:
        return _noop
    work = n * ho * wo * (kh * kw * wd * 2 + kp) * 0.3
    par = use_parallel(work, threads)
    fn = _im2col_bits_par if par else _im2col_bits_ser
    return functools.partial(fn, x, pad_words, kh, kw, sh, sw, ph, pw, cin, ho, wo, out,
                             _chunks(n * ho) if par else 1)


def dense_bits(w: np.ndarray, cin: int) -> np.ndarray:
    """Packed weights (Co, KH, KW*words(cin)) -> dense rows (Co, 1, words(KH*KW*cin)).

    The same bit order as :func:`im2col_bits_call` (the weights are one "pixel" whose window
    covers all KH x KW taps).
    """
    co, kh, seg = w.shape
    wd = words(cin)
    _need(seg % wd == 0, "weight rows are whole pixels")
    kw = seg // wd
    src = np.ascontiguousarray(w.reshape(co, 1, kh * kw, wd))
    out = np.empty((co, words(kh * kw * cin)), np.uint64)
    _im2col_bits_rows(src, np.zeros(wd, np.uint64), 1, kh * kw, 1, 1, 0, 0, cin, 1, 1, out, 0, co)
    return out.reshape(co, 1, -1)


# --------------------------------------------------------------------------- padding


@njit(cache=True)
def _pad_rows(x, ph, pw, out, r_lo, r_hi):
    h = x.shape[1]
    w = x.shape[2]
    c = x.shape[3]
    for t in range(r_lo, r_hi):
        b = t // h
        y = t - b * h
        for xx in range(w):
            for k in range(c):
                out[b, y + ph, xx + pw, k] = x[b, y, xx, k]


@njit(parallel=True, cache=True)
def _pad_par(x, ph, pw, out, nchunks):
    rows = x.shape[0] * x.shape[1]
    for c in prange(nchunks):
        _pad_rows(x, ph, pw, out, c * rows // nchunks, (c + 1) * rows // nchunks)


@njit(cache=True)
def _pad_ser(x, ph, pw, out, nchunks):  # noqa: ARG001
    _pad_rows(x, ph, pw, out, 0, x.shape[0] * x.shape[1])


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
    _need(x.ndim == 4 and x.flags.c_contiguous and out.flags.c_contiguous, "4-D contiguous")
    _need(x.dtype == out.dtype, "same dtype")
    ph, pw = (int(p) for p in pad)
    n, h, w, c = (int(v) for v in x.shape)
    _need(ph >= 0 and pw >= 0, "non-negative padding")
    _need(out.shape == (n, h + 2 * ph, w + 2 * pw, c), "padded output shape")
    if not n:
        return _noop
    par = use_parallel(n * h * w * c * 0.5, threads)
    fn = _pad_par if par else _pad_ser
    return functools.partial(fn, x, ph, pw, out, _chunks(n * h) if par else 1)


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
    pad_fill(out, (ph, pw), pad_words)
    pad_call(x, (ph, pw), out)()
    return out


# --------------------------------------------------------------------------- fused float conv


@njit(cache=True)
def _fconv_tiles(x, w, ncb, kh, seg, c, hp, wp, ho, wo, sh, sw, bias, alpha, beta, vmask, use_bits,
                 co, out_b, out_f, t_lo, t_hi):
    m_total = out_b.shape[0] if use_bits else out_f.shape[0]
    hw = ho * wo
    rowstep = wp * c
    kk = kh * seg * BLOCK_CH
    bases = np.empty(TILE_PIX, np.int64)
    vals = np.empty(FPIX * BLOCK_CH, np.float32)
    for tile in range(t_lo, t_hi):
        t0 = tile * TILE_PIX
        t1 = min(t0 + TILE_PIX, m_total)
        npx = t1 - t0
        for m in range(t0, t1):
            n = m // hw
            r = m - n * hw
            oy = r // wo
            bases[m - t0] = ((n * hp + oy * sh) * wp + (r - oy * wo) * sw) * c
            if use_bits:
                for j in range(out_b.shape[1]):
                    out_b[m, j] = 0
        for i in range(npx, TILE_PIX):
            bases[i] = bases[npx - 1]
        for cb in range(ncb):
            c0 = cb * BLOCK_CH
            if use_bits:
                vm = vmask[cb]
                wi = c0 >> 6
                sft = np.uint64(c0 & 63)
                for g in range(0, npx, FPIX):
                    r4 = _fconv_bits4(x, bases, g, rowstep, kh, seg, w, cb * kk, bias, alpha,
                                      beta, c0)
                    for p in range(min(FPIX, npx - g)):
                        out_b[t0 + g + p, wi] |= (r4[p] & vm) << sft
            else:
                nc = min(BLOCK_CH, co - c0)
                for g in range(0, npx, FPIX):
                    _fconv_store4(x, bases, g, rowstep, kh, seg, w, cb * kk, bias, alpha, beta,
                                  c0, vals)
                    for p in range(min(FPIX, npx - g)):
                        for q in range(nc):
                            out_f[t0 + g + p, c0 + q] = vals[p * BLOCK_CH + q]


@njit(parallel=True, cache=True)
def _fconv_par(x, w, ncb, kh, seg, c, hp, wp, ho, wo, sh, sw, bias, alpha, beta, vmask, use_bits,
               co, out_b, out_f, ntiles):
    for t in prange(ntiles):
        _fconv_tiles(x, w, ncb, kh, seg, c, hp, wp, ho, wo, sh, sw, bias, alpha, beta, vmask,
                     use_bits, co, out_b, out_f, t, t + 1)


@njit(cache=True)
def _fconv_ser(x, w, ncb, kh, seg, c, hp, wp, ho, wo, sh, sw, bias, alpha, beta, vmask, use_bits,
               co, out_b, out_f, ntiles):
    _fconv_tiles(x, w, ncb, kh, seg, c, hp, wp, ho, wo, sh, sw, bias, alpha, beta, vmask,
                 use_bits, co, out_b, out_f, 0, ntiles)


def block_float_weights(w: np.ndarray, co: int) -> np.ndarray:
    """(KH*KW*Cin, Co) float weights -> (ceil(Co/16), KH*KW*Cin, 16), zero-padded channels."""
    taps = int(w.shape[0])
    cb = -(-co // BLOCK_CH)
    out = np.zeros((taps, cb * BLOCK_CH), np.float32)
    out[:, :co] = w
    return np.ascontiguousarray(out.reshape(taps, cb, BLOCK_CH).transpose(1, 0, 2))


def block_channels(v: np.ndarray, fill: float) -> np.ndarray:
    """A per-channel float32 vector padded to whole 16-channel blocks."""
    co = int(v.shape[0])
    out = np.full(-(-co // BLOCK_CH) * BLOCK_CH, fill, np.float32)
    out[:co] = v
    return out


def channel_masks(co: int) -> np.ndarray:
    """Per 16-channel block, the mask of channels that exist."""
    cb = -(-co // BLOCK_CH)
    m = np.full(cb, (1 << BLOCK_CH) - 1, np.uint64)
    if co % BLOCK_CH:
        m[-1] = (1 << (co % BLOCK_CH)) - 1
    return m


def fconv_call(xp: np.ndarray, wf: np.ndarray, co: int, k: tuple[int, int],
               stride: tuple[int, int], epilogue: tuple[np.ndarray, ...], out: np.ndarray,
               threads: int | None = None) -> Callable[[], None]:
    """Validate a float conv of padded NHWC ``xp`` with its bias and affine epilogue.

    ``wf`` is (ceil(Co/16), KH*KW*C, 16) from :func:`block_float_weights`; ``epilogue`` is
    (bias, alpha, beta) padded by :func:`block_channels` and the block masks of
    :func:`channel_masks`. ``v = (conv + bias) * alpha + beta``; a uint64 ``out``
    (N, Ho, Wo, words(Co)) gets the sign bits ``not v >= 0``, a float32 ``out``
    (N, Ho, Wo, Co) gets ``v``.
    """
    _need(xp.dtype == np.float32 and xp.ndim == 4 and xp.flags.c_contiguous, "xp float32 4-D")
    _need(wf.dtype == np.float32 and wf.ndim == 3 and wf.flags.c_contiguous, "w float32 3-D")
    n, hp, wp, c = (int(s) for s in xp.shape)
    kh, kw = (int(s) for s in k)
    sh, sw = (int(s) for s in stride)
    co = int(co)
    ncb = -(-co // BLOCK_CH)
    _need(min(kh, kw, sh, sw, co, c) >= 1, "positive sizes")
    _need(wf.shape == (ncb, kh * kw * c, BLOCK_CH), "weight blocks (Co/16, KH*KW*C, 16)")
    _need(out.ndim == 4 and out.flags.c_contiguous and int(out.shape[0]) == n, "out 4-D")
    ho, wo = int(out.shape[1]), int(out.shape[2])
    use_bits = out.dtype == np.uint64
    _need(use_bits or out.dtype == np.float32, "out bits or float32")
    _need(int(out.shape[3]) == (words(co) if use_bits else co) and ho >= 1 and wo >= 1,
          "out (N, Ho, Wo, words(Co) or Co)")
    _need((ho - 1) * sh + kh <= hp and (wo - 1) * sw + kw <= wp, "window inside padded input")
    bias, alpha, beta, vmask = epilogue
    for a in (bias, alpha, beta):
        _need(a.dtype == np.float32 and a.shape == (ncb * BLOCK_CH,), "epilogue (blocks*16,)")
    _need(vmask.dtype == np.uint64 and vmask.shape == (ncb,), "masks (blocks,)")
    m_total = n * ho * wo
    if not m_total:
        return _noop
    out2 = out.reshape(m_total, -1)
    out_b, out_f = (out2, _EMPTY_F32) if use_bits else (_EMPTY_U64, out2)
    work = m_total * ncb * kh * kw * c * 0.42  # ns: 2 FMA vectors per tap
    fn = _fconv_par if use_parallel(work, threads) else _fconv_ser
    return functools.partial(fn, xp.reshape(-1), wf.reshape(-1), ncb, kh, kw * c, c, hp, wp, ho,
                             wo, sh, sw, bias, alpha, beta, vmask, use_bits, co, out_b, out_f,
                             -(-m_total // TILE_PIX))


fconv_pack_call = fconv_call  # the packing variant (``out`` uint64)


# --------------------------------------------------------------------------- packing


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


@njit(parallel=True, cache=True)
def _affine_pack_par(y, alpha, beta, use_affine, out, nchunks):
    rows = y.shape[0]
    for c in prange(nchunks):
        _affine_pack_rows(y, alpha, beta, use_affine, out, c * rows // nchunks,
                          (c + 1) * rows // nchunks)


@njit(cache=True)
def _affine_pack_ser(y, alpha, beta, use_affine, out, nchunks):  # noqa: ARG001
    _affine_pack_rows(y, alpha, beta, use_affine, out, 0, y.shape[0])


def affine_pack_call(y: np.ndarray, out: np.ndarray, alpha: np.ndarray | None = None,
                     beta: np.ndarray | None = None,
                     threads: int | None = None) -> Callable[[], None]:
    """Validate packing the sign bits of ``y * alpha + beta`` (or of ``y``) into ``out``."""
    _need(y.dtype == np.float32 and y.ndim >= 1 and y.flags.c_contiguous, "float32 input")
    c = int(y.shape[-1])
    _need(c >= 1, "at least one channel")
    rows = int(y.size) // c
    _need(out.dtype == np.uint64 and out.flags.c_contiguous
          and out.shape == y.shape[:-1] + (words(c),), "out (..., words(C))")
    use = alpha is not None
    if use:
        _need(beta is not None and alpha.shape == (c,) and beta.shape == (c,), "affine (C,)")
        _need(alpha.dtype == np.float32 and beta.dtype == np.float32, "affine float32")
    a = alpha if use else _F1
    b = beta if use else _F1
    if not rows:
        return _noop
    par = use_parallel(rows * c * 0.6, threads)
    fn = _affine_pack_par if par else _affine_pack_ser
    return functools.partial(fn, y.reshape(rows, c), a, b, use, out.reshape(rows, -1),
                             _chunks(rows) if par else 1)


def run_affine_pack(y: np.ndarray, alpha: np.ndarray | None = None,
                    beta: np.ndarray | None = None) -> np.ndarray:
    """Sign bits of ``y * alpha + beta`` (or of ``y``) over the last axis, packed to words.

    Bit 1 means the value is negative or NaN (so sign(x) = -1), matching ``where(x >= 0, 1, -1)``.
    """
    _need(y.dtype == np.float32 and y.ndim >= 1, "float32 input")
    c = int(y.shape[-1])
    _need(c >= 1, "at least one channel")
    y = np.ascontiguousarray(y)
    out = np.empty(y.shape[:-1] + (words(c),), np.uint64)
    affine_pack_call(y, out, alpha, beta)()
    return out


# --------------------------------------------------------------------------- pooling


def pool_out_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """Output length of a pooling window, with PyTorch's ceil-mode rule."""
    num = size + 2 * p - k
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@njit(cache=True)
def _maxpool_bits_rows(x, kh, kw, sh, sw, ph, pw, out, r_lo, r_hi):
    n, h, w, wd = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    for t in range(r_lo, r_hi):
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


@njit(cache=True)
def _maxpool_float_rows(x, kh, kw, sh, sw, ph, pw, out, r_lo, r_hi):
    n, h, w, c = x.shape
    ho = out.shape[1]
    wo = out.shape[2]
    for t in range(r_lo, r_hi):
        b = t // ho
        oy = t - b * ho
        y0 = oy * sh - ph
        for ox in range(wo):
            x0 = ox * sw - pw
            o = out[b, oy, ox]
            o[:] = -np.inf
            for yy in range(max(y0, 0), min(y0 + kh, h)):
                for xx in range(max(x0, 0), min(x0 + kw, w)):
                    row = x[b, yy, xx]
                    for k in range(c):  # per channel: the same sequence of comparisons
                        v = row[k]
                        if v > o[k] or np.isnan(v):
                            o[k] = v


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


@njit(parallel=True, cache=True)
def _bitpool_par(kind, x, kh, kw, sh, sw, ph, pw, include_pad, out, nchunks):  # noqa: ARG001
    rows = x.shape[0] * out.shape[1]
    for c in prange(nchunks):
        _maxpool_bits_rows(x, kh, kw, sh, sw, ph, pw, out, c * rows // nchunks,
                           (c + 1) * rows // nchunks)


@njit(cache=True)
def _bitpool_ser(kind, x, kh, kw, sh, sw, ph, pw, include_pad, out, nchunks):  # noqa: ARG001
    _maxpool_bits_rows(x, kh, kw, sh, sw, ph, pw, out, 0, x.shape[0] * out.shape[1])


@njit(parallel=True, cache=True)
def _fpool_par(kind, x, kh, kw, sh, sw, ph, pw, include_pad, out, nchunks):
    rows = x.shape[0] * out.shape[1]
    for c in prange(nchunks):
        lo = c * rows // nchunks
        hi = (c + 1) * rows // nchunks
        if kind == 1:
            _maxpool_float_rows(x, kh, kw, sh, sw, ph, pw, out, lo, hi)
        else:
            _avgpool_rows(x, kh, kw, sh, sw, ph, pw, include_pad, out, lo, hi)


@njit(cache=True)
def _fpool_ser(kind, x, kh, kw, sh, sw, ph, pw, include_pad, out, nchunks):  # noqa: ARG001
    rows = x.shape[0] * out.shape[1]
    if kind == 1:
        _maxpool_float_rows(x, kh, kw, sh, sw, ph, pw, out, 0, rows)
    else:
        _avgpool_rows(x, kh, kw, sh, sw, ph, pw, include_pad, out, 0, rows)


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


_POOL_KIND = {"maxpool_bits": (0, np.uint64), "maxpool": (1, np.float32),
              "avgpool": (2, np.float32)}


def pool_call(kind: str, x: np.ndarray, k: tuple[int, int], s: tuple[int, int],
              p: tuple[int, int], ceil_mode: bool, out: np.ndarray,
              count_include_pad: bool = True, threads: int | None = None) -> Callable[[], None]:
    """Validate a max-pool of bits (AND), a float max-pool or an average pool into ``out``."""
    code, dtype = _POOL_KIND[kind]
    _need(x.dtype == dtype, f"{np.dtype(dtype)} input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    _need(out.dtype == dtype and out.flags.c_contiguous
          and out.shape == (x.shape[0], ho, wo, x.shape[3]), "pool output shape")
    n = int(x.shape[0])
    if not n:
        return _noop
    work = n * ho * wo * int(x.shape[3]) * k[0] * k[1] * (0.1 if code == 0 else 0.5)
    par = use_parallel(work, threads)
    if code == 0:
        fn = _bitpool_par if par else _bitpool_ser
    else:
        fn = _fpool_par if par else _fpool_ser
    return functools.partial(fn, code, x, int(k[0]), int(k[1]), int(s[0]), int(s[1]), int(p[0]),
                             int(p[1]), bool(count_include_pad), out,
                             _chunks(n * ho) if par else 1)


def run_maxpool_bits(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                     ceil_mode: bool) -> np.ndarray:
    """Max-pool of packed ±1 activations: with bit 1 = -1, max is the AND of the bits."""
    _need(x.dtype == np.uint64, "bits input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.uint64)
    pool_call("maxpool_bits", x, k, s, p, ceil_mode, out)()
    return out


def run_maxpool_float(x: np.ndarray, k: tuple[int, int], s: tuple[int, int],
                      p: tuple[int, int], ceil_mode: bool) -> np.ndarray:
    """Float max-pool over NHWC with -inf padding (PyTorch semantics, NaN propagates)."""
    _need(x.dtype == np.float32, "float32 input")
    ho, wo = _check_pool(x, k, s, p, ceil_mode)
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    pool_call("maxpool", x, k, s, p, ceil_mode, out)()
    return out


def run_avgpool(x: np.ndarray, k: tuple[int, int], s: tuple[int, int], p: tuple[int, int],
                ceil_mode: bool, count_include_pad: bool) -> np.ndarray:
    """Float average pool over NHWC, summing in PyTorch's CPU order (row-major, float32)."""
    _need(x.dtype == np.float32, "float32 input")
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


@njit(parallel=True, cache=True)
def _adaptive_avgpool_par(x, out, nchunks):
    rows = x.shape[0] * out.shape[1]
    for c in prange(nchunks):
        _adaptive_avgpool_rows(x, out, c * rows // nchunks, (c + 1) * rows // nchunks)


@njit(cache=True)
def _adaptive_avgpool_ser(x, out, nchunks):  # noqa: ARG001
    _adaptive_avgpool_rows(x, out, 0, x.shape[0] * out.shape[1])


def adaptive_avgpool_call(x: np.ndarray, out: np.ndarray,
                          threads: int | None = None) -> Callable[[], None]:
    """Validate an adaptive average pool of NHWC ``x`` into ``out`` (N, Ho, Wo, C)."""
    _need(x.dtype == np.float32 and x.ndim == 4 and x.flags.c_contiguous, "float32 4-D")
    _need(out.dtype == np.float32 and out.ndim == 4 and out.flags.c_contiguous, "float32 out")
    n, h, w, c = (int(v) for v in x.shape)
    ho, wo = int(out.shape[1]), int(out.shape[2])
    _need(ho >= 1 and wo >= 1 and h >= 1 and w >= 1, "positive sizes")
    _need(out.shape == (n, ho, wo, c), "output shape")
    if not n:
        return _noop
    par = use_parallel(n * h * w * c * 0.5, threads)
    fn = _adaptive_avgpool_par if par else _adaptive_avgpool_ser
    return functools.partial(fn, x, out, _chunks(n * ho) if par else 1)


def run_adaptive_avgpool(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Adaptive average pool over NHWC (PyTorch's bin edges floor(i*H/o), ceil((i+1)*H/o))."""
    _need(x.dtype == np.float32 and x.ndim == 4 and x.flags.c_contiguous, "float32 4-D")
    ho, wo = (int(v) for v in out_hw)
    _need(ho >= 1 and wo >= 1 and x.shape[1] >= 1 and x.shape[2] >= 1, "positive sizes")
    out = np.empty((x.shape[0], ho, wo, x.shape[3]), np.float32)
    adaptive_avgpool_call(x, out)()
    return out


# --------------------------------------------------------------------------- float conv (im2col)


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
