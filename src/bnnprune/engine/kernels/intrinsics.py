"""LLVM IR intrinsics of the inner loops (``numba.extending.intrinsic`` over vector registers).

The XNOR-popcount GEMM keeps two ``<8 x i64>`` accumulators (:data:`XPC_LANES`) per 16-channel
block and pixel (2-4 pixels at once, sharing each weight vector load, :func:`xword_pix`): each
activation word is broadcast and XORed with the block's weight vectors, and
``llvm.ctpop.v8i64`` (``vpopcntq`` with AVX-512 VPOPCNTDQ; the ``vpshufb`` nibble lookup +
``vpsadbw`` on AVX2; ``cnt`` + ``uaddlp`` on aarch64 NEON) counts the bits, or on AVX2 and
NEON ``llvm.ctpop`` on bytes summed bytewise (:func:`byte_min_words`). On x86 without
VPOPCNTDQ the counting scheme ``csa`` (:func:`counting_scheme`) counts windows of at least
:data:`CSA_MIN_WORDS` words by carry-save accumulation instead (the Harley-Seal scheme,
:func:`_csa_passes`): the XOR results of :data:`CSA_GROUP` words summed bit-sliced by full
adders, one popcount per group; windows of :data:`SHORT_WORDS` count straight line, three
words at a time by one full adder (:func:`_short_window`).
A window's words are ``kstride`` apart (1 in a padded image, a plane apart in a patch matrix).
A call computes a whole 64-channel output word: in threshold mode (:func:`xpc_word`) the
accumulators start at ``-(thr+1)``, so the output bits are their sign bits; in float mode
(:func:`xpc_affine_word`) they start at 0 and the affine epilogue stores floats.
The fused float conv keeps ``<8 x float>`` FMA accumulators: :func:`fconv_word` packs the sign
bits of a 64-channel word, ``fconv_store4`` writes floats. :func:`xpc_chains` and
:func:`fma_chains` are the peak probes of :mod:`bnnprune.engine.bench`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from bnnprune.engine.errors import EngineError
from bnnprune.engine.kernels.base import BLOCK_CH, BYTE_ENV, FPIX, UNIT_CH, forced_byte_counts

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F32 = ir.FloatType()
# Lanes of the XOR-popcount vectors: <8 x i64> is one zmm register with AVX-512 (two ymm
# halves elsewhere); against <4 x i64> it halves the weight loads, accumulator inits and sign
# extractions per channel
XPC_LANES = 8
_VXPC = ir.VectorType(_I64, XPC_LANES)
_V8F32 = ir.VectorType(_F32, 8)


def _ctpop(builder):
    """``llvm.ctpop`` over the XOR-popcount vectors (``<XPC_LANES x i64>``)."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VXPC, [_VXPC]),
                                          f"llvm.ctpop.v{XPC_LANES}i64")


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


def _xpc_typed(x, w, init, ints) -> bool:
    return (_is_vec(x, types.uint64) and _is_vec(w, types.uint64) and _is_vec(init, types.int64)
            and all(isinstance(t, types.Integer) for t in ints))


def _fconv_typed(x, bases, w, bias, alpha, beta, ints) -> bool:
    return (_is_vec(x, types.float32) and _is_vec(bases, types.int64)
            and _is_vec(w, types.float32) and _is_vec(bias, types.float32)
            and _is_vec(alpha, types.float32) and _is_vec(beta, types.float32)
            and all(isinstance(t, types.Integer) for t in ints))


@contextlib.contextmanager
def _window(builder, bases, rowstep, kh, seg, woff, kstride=None):
    """The loop over a window's ``kh`` rows of ``seg`` words, as one loop over its ``kh*seg``
    words (no inner loop to wind up and down per row: rows of 3-15 words are common): yields
    per word the pixels' ``bases``, the word's offset from them (``r*rowstep + k``, or
    ``r*rowstep + k*kstride`` for words ``kstride`` apart) and the offset of its 16 weights
    (``woff + 16*(r*seg + k)``)."""
    zero, one, step = (ir.Constant(_I64, v) for v in (0, 1, BLOCK_CH))
    kstep = one if kstride is None else kstride
    roff = cgutils.alloca_once_value(builder, zero)
    col = cgutils.alloca_once_value(builder, zero)
    coff = cgutils.alloca_once_value(builder, zero)
    with cgutils.for_range(builder, builder.mul(kh, seg)) as it:
        r, k, ko = builder.load(roff), builder.load(col), builder.load(coff)
        yield bases, builder.add(r, ko), builder.add(woff, builder.mul(it.index, step))
        k1 = builder.add(k, one)
        wrap = builder.icmp_signed("==", k1, seg)
        builder.store(builder.select(wrap, zero, k1), col)
        builder.store(builder.select(wrap, zero, builder.add(ko, kstep)), coff)
        builder.store(builder.add(r, builder.select(wrap, rowstep, zero)), roff)


def _float_conv(builder, xp, wp, bp, boff, rowstep, kh, seg, woff, vofs, npix, par, poff,
                vids=None):
    """The float conv of ``npix`` pixels (``x[bases[boff+p] + r*rowstep + k]``) x the weight
    vectors at ``w[woff + 16*(r*seg + k) + vofs[h]]`` (FMA accumulators in registers) and
    PyTorch's epilogue ``y = acc + bias; v = y*alpha + beta`` (separate roundings), the
    parameters ``par`` = (bias, alpha, beta) of vector ``h`` at ``poff + 8*vids[h]`` (``vids``
    by default ``0, 1, ...``); with ``par=None`` no epilogue.

    Returns ``v[p][h]`` (or ``acc[p][h]``), ``<8 x float>``.
    """
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V8F32, [_V8F32] * 3), "llvm.fma.v8f32")
    pbase = [builder.load(builder.gep(bp, [builder.add(boff, ir.Constant(_I64, p))]))
             for p in range(npix)]
    zero = ir.Constant(_V8F32, [0.0] * 8)
    accs = [[cgutils.alloca_once_value(builder, zero) for _ in vofs] for _ in range(npix)]
    with _window(builder, pbase, rowstep, kh, seg, woff) as (rows, k, wk):
        wv = [_vload(builder, wp, builder.add(wk, o), _V8F32, 4) for o in vofs]
        for p, row in enumerate(rows):
            xb = _splat(builder, builder.load(builder.gep(xp, [builder.add(row, k)])), _V8F32)
            for h, wvec in enumerate(wv):
                a = accs[p][h]
                builder.store(builder.call(fma, [xb, wvec, builder.load(a)]), a)
    if par is None:
        return [[builder.load(accs[p][h]) for h in range(len(vofs))] for p in range(npix)]
    vids = range(len(vofs)) if vids is None else vids
    vb, va, vbeta = ([_vload(builder, q, builder.add(poff, ir.Constant(_I64, 8 * h)), _V8F32, 4)
                      for h in vids] for q in par)
    return [[builder.fadd(builder.fmul(builder.fadd(builder.load(accs[p][h]), vb[h]), va[h]),
                          vbeta[h]) for h in range(len(vofs))] for p in range(npix)]


def _fconv_epilogue(context, builder, sa, args, halves):
    """:func:`_float_conv` of ``FPIX`` pixels x ``8*halves`` channels of one 16-channel block,
    for the argument layout of :func:`fconv_store4`."""
    xp, bp, wp = (_data(context, builder, sa[i], args[i]) for i in (0, 1, 6))
    par = [_data(context, builder, sa[i], args[i]) for i in (8, 9, 10)]
    boff_, rowstep_, kh_, seg_, woff_, poff_ = _ints(context, builder, sa, args,
                                                      (2, 3, 4, 5, 7, 11))
    return _float_conv(builder, xp, wp, bp, boff_, rowstep_, kh_, seg_, woff_,
                       [ir.Constant(_I64, 8 * h) for h in range(halves)], FPIX, par, poff_)


def _fconv_store(halves: int):
    """The intrinsic storing the 4 pixels x ``8*halves`` float results to ``dst[16*p + q]``."""
    @intrinsic
    def fconv_store(typingctx, x, bases, boff, rowstep, kh, seg, w, woff, bias, alpha,  # noqa: ARG001
                    beta, poff, dst):
        if not (_fconv_typed(x, bases, w, bias, alpha, beta,
                             (boff, rowstep, kh, seg, woff, poff))
                and _is_vec(dst, types.float32)):
            return None
        sig = types.none(x, bases, boff, rowstep, kh, seg, w, woff, bias, alpha, beta, poff,
                         dst)

        def codegen(context, builder, signature, args):
            vals = _fconv_epilogue(context, builder, signature.args, args, halves)
            dp = _data(context, builder, signature.args[12], args[12])
            for p, row in enumerate(vals):
                for h, v in enumerate(row):
                    ptr = builder.gep(dp, [ir.Constant(_I64, BLOCK_CH * p + 8 * h)])
                    builder.store(v, builder.bitcast(ptr, _V8F32.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return fconv_store


fconv_store4 = _fconv_store(2)
fconv_store4.__doc__ = """A float conv for 4 pixels x 16 channels, results to ``dst[16*p + q]``.

Pixel ``p`` reads ``kh`` rows of ``seg`` floats at ``x[bases[boff+p] + r*rowstep]``; the
16 channels' weights are interleaved (``w[woff + 16*k + q]``). The epilogue is PyTorch's
``y = acc + bias; v = y*alpha + beta`` (separate roundings).
"""
fconv_store4h = _fconv_store(1)
fconv_store4h.__doc__ = """:func:`fconv_store4` for the first 8 channels of a block only."""


def _patch_words(builder, sp, op, offs, counts, dst, i, ty, into, mask=None):
    """:func:`patch_word_run`'s word(s) ``i`` (``ty``: i64, or ``<8 x i64>`` for eight, only
    the lanes of ``mask`` read and written when given): the contributions at ``offs`` shifted
    by ``counts``, ORed, with ``into`` ORed into the stored word(s), then stored."""
    if mask is None:
        def load(ptr):
            return builder.load(ptr, align=8)
    else:
        mload = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ty, [ty.as_pointer(), _I32, mask.type, ty]),
            "llvm.masked.load.v8i64.p0")

        def load(ptr):
            return builder.call(mload, [ptr, ir.Constant(_I32, 8), mask, ir.Constant(ty, None)])
    acc = None
    for o, (a, b) in zip(offs, counts, strict=True):
        x = load(builder.bitcast(builder.gep(sp, [builder.add(o, i)]), ty.as_pointer()))
        v = builder.lshr(builder.shl(x, a), b)
        acc = v if acc is None else builder.or_(acc, v)
    dp = builder.bitcast(builder.gep(op, [builder.add(dst, i)]), ty.as_pointer())
    if into:
        acc = builder.or_(acc, load(dp))
    if mask is None:
        builder.store(acc, dp, align=8)
    else:
        mstore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ty, ty.as_pointer(), _I32,
                                                            mask.type]),
            "llvm.masked.store.v8i64.p0")
        builder.call(mstore, [acc, dp, ir.Constant(_I32, 8), mask])


PATCH_GROUP = 4  # contributions of a patch word ORed in registers per pass over its plane


@intrinsic
def patch_word_run(typingctx, src, base, rel, shl, shr, c0, c1, out, dst, run):  # noqa: ARG001
    """``out[dst + i] = OR of (src[base + rel[c] + i] << shl[c]) >> shr[c]`` over the
    contributions ``c0 <= c < c1``, for the ``run`` consecutive words ``i`` of one patch
    word's plane (:func:`~bnnprune.engine.kernels.bitpatch.patch_schedule`).

    Up to :data:`PATCH_GROUP` contributions per pass, their offsets and shift counts held in
    registers: eight words at a time in ``<8 x i64>`` vectors, ORed there and stored once
    (a later pass ORs into the stored words), the last ``run % 8`` in one masked vector.
    Shift counts must lie in 0..63."""
    ints = (base, c0, c1, dst, run)
    if not (_is_vec(src, types.uint64) and _is_vec(rel, types.int64)
            and _is_vec(shl, types.uint64) and _is_vec(shr, types.uint64)
            and _is_vec(out, types.uint64) and all(isinstance(t, types.Integer) for t in ints)):
        return None
    sig = types.none(src, base, rel, shl, shr, c0, c1, out, dst, run)

    def codegen(context, builder, signature, args):
        sa = signature.args
        sp, rp, lp, hp, op = (_data(context, builder, sa[i], args[i]) for i in (0, 2, 3, 4, 7))
        base_, c0_, c1_, dst_, run_ = _ints(context, builder, sa, args, (1, 5, 6, 8, 9))
        vty = ir.VectorType(_I64, 8)
        zero, eight = ir.Constant(_I64, 0), ir.Constant(_I64, 8)
        whole = builder.and_(run_, ir.Constant(_I64, -8))
        # the last run % 8 words: a vector whose lanes past the run are neither read nor
        # written (masked loads and stores)
        tail = builder.icmp_signed("<", ir.Constant(vty, list(range(8))),
                                   _splat(builder, builder.sub(run_, whole), vty))
        group = ir.Constant(_I64, PATCH_GROUP)
        with cgutils.for_range_slice(builder, c0_, c1_, group) as (cs, _):
            later = builder.icmp_signed(">", cs, c0_)
            merge = builder.append_basic_block("pr_merge")
            cases = [builder.append_basic_block(f"pr_case{k}") for k in range(1, PATCH_GROUP + 1)]
            left = builder.sub(c1_, cs)
            sw = builder.switch(left, cases[-1])  # PATCH_GROUP or more left
            for k, bb in enumerate(cases[:-1], start=1):
                sw.add_case(ir.Constant(_I64, k), bb)
            for k, bb in enumerate(cases, start=1):
                builder.position_at_end(bb)
                idx = [builder.add(cs, ir.Constant(_I64, q)) for q in range(k)]
                offs = [builder.add(base_, builder.load(builder.gep(rp, [c]))) for c in idx]
                sh = [(builder.load(builder.gep(lp, [c])), builder.load(builder.gep(hp, [c])))
                      for c in idx]
                vsh = [(_splat(builder, a, vty), _splat(builder, b, vty)) for a, b in sh]
                with builder.if_else(later) as (then, otherwise):
                    for into, block in ((True, then), (False, otherwise)):
                        with block:
                            with cgutils.for_range_slice(builder, zero, whole, eight) as (i, _):
                                _patch_words(builder, sp, op, offs, vsh, dst_, i, vty, into)
                            with builder.if_then(builder.icmp_signed("<", whole, run_)):
                                _patch_words(builder, sp, op, offs, vsh, dst_, whole, vty,
                                             into, tail)
                builder.branch(merge)
            builder.position_at_end(merge)
        return context.get_dummy_value()

    return sig, codegen


FMA_CHAINS = 10  # independent <8 x float> accumulators: enough to hide the FMA latency


def _run_chains(builder, n, accs, step, add):
    """``n`` rounds of ``acc = step(acc)`` on every register chain ``accs``, then the sum of
    all their lanes (``add``: ``builder.add`` or ``builder.fadd``): the peak probes' loop."""
    with cgutils.for_range(builder, n):
        for a in accs:
            builder.store(step(builder.load(a)), a)
    total = builder.load(accs[0])
    for a in accs[1:]:
        total = add(total, builder.load(a))
    out = builder.extract_element(total, ir.Constant(_I32, 0))
    for e in range(1, total.type.count):
        out = add(out, builder.extract_element(total, ir.Constant(_I32, e)))
    return out


@intrinsic
def fma_chains(typingctx, reps, seed):  # noqa: ARG001
    """``reps`` rounds of ``acc = fma(acc, m, a)`` on :data:`FMA_CHAINS` independent
    ``<8 x float>`` accumulators kept in registers (the FMA peak probe); returns their sum."""
    if not (isinstance(reps, types.Integer) and seed == types.float32):
        return None
    sig = types.float32(reps, seed)

    def codegen(context, builder, signature, args):
        (n,) = _ints(context, builder, signature.args, args, (0,))
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V8F32, [_V8F32] * 3), "llvm.fma.v8f32")
        start = _splat(builder, args[1], _V8F32)
        mul = ir.Constant(_V8F32, [0.9999999] * 8)
        add = ir.Constant(_V8F32, [1e-7] * 8)
        accs = [cgutils.alloca_once_value(builder, start) for _ in range(FMA_CHAINS)]
        return _run_chains(builder, n, accs, lambda x: builder.call(fma, [x, mul, add]),
                           builder.fadd)

    return sig, codegen


XPC_CHAINS = 12  # independent XOR-popcount vector chains (the ctpop latency hidden)


@intrinsic
def xpc_chains(typingctx, reps, seed):  # noqa: ARG001
    """``reps`` rounds of ``acc += ctpop(acc ^ w)`` on :data:`XPC_CHAINS` independent
    ``<XPC_LANES x i64>`` chains kept in registers (the XOR+popcount peak probe): exactly the
    GEMM's XOR, popcount and accumulate per vector, without its operand loads, and nothing to
    hoist (each round reads the last); returns the sum of the final lanes."""
    if not (isinstance(reps, types.Integer) and isinstance(seed, types.Integer)):
        return None
    sig = types.int64(reps, seed)

    def codegen(context, builder, signature, args):
        n, s = _ints(context, builder, signature.args, args, (0, 1))
        vty, ctpop = _VXPC, _ctpop(builder)
        consts = [0x5DEECE66D, -0x2545F4914F6CDD1D, 0x9E3779B97F4A7C15 >> 1, 7]
        w = ir.Constant(vty, [consts[e % 4] + e // 4 for e in range(XPC_LANES)])
        start = _splat(builder, s, vty)
        accs = [cgutils.alloca_once_value(
            builder, builder.mul(start, ir.Constant(
                vty, [2 * i + 1] + [2 * e + 1 for e in range(1, XPC_LANES)])))
            for i in range(XPC_CHAINS)]
        return _run_chains(builder, n, accs,
                           lambda x: builder.add(x, builder.call(ctpop, [builder.xor(x, w)])),
                           builder.add)

    return sig, codegen


SCHEMES = ("popcount", "csa")  # counting schemes of the XOR-popcount GEMM
CSA_GROUP = 8  # words summed bit-sliced per popcount (Harley-Seal over 3 bit planes)
# Shorter windows count word by word: each carry-save pass ends with a popcount per bit plane
# and one for its partial group. Against the per-word count in bytes on AVX2 (Zen 3 EPYC,
# benchmarks/bench_counting.py) windows of 18 words ran 0.92-0.96x carry-save, 27 words
# 0.99-1.00x (against per-word 64-bit lanes, before the byte counts: 9 words 0.86x, 18 1.05x,
# 27 1.08x, 50 1.20x)
CSA_MIN_WORDS = 24
# channels per carry-save pass: <8 x i64> (two ymm registers); its 3 bit planes and
# accumulator stay in registers, and each broadcast activation word serves 8 channels (with
# 4 the broadcasts made the passes no faster than per-word counting). The cost model's
# output-channel step (base.conv_work) is this unit
CSA_LANES = UNIT_CH


SCHEME_ENV = "BNNPRUNE_COUNTING"  # forces a counting scheme (benchmarks compare them)


@functools.cache
def _host_features() -> frozenset[str]:
    from llvmlite import binding
    return frozenset(k for k, v in binding.get_host_cpu_features().items() if v)


@functools.cache
def target_arch() -> str:
    """The architecture numba compiles for, from its target triple (``x86_64``,
    ``aarch64``, ...): LLVM's host feature map can be empty (an aarch64 Python under
    qemu-user reads the x86 host's /proc/cpuinfo), the triple is not."""
    from llvmlite import binding
    return binding.get_process_triple().split("-")[0]


def is_aarch64(arch: str | None = None) -> bool:
    """Whether ``arch`` (default :func:`target_arch`) is 64-bit ARM, where NEON (Advanced
    SIMD) is part of the base ARMv8-A architecture: LLVM's ``generic`` AArch64 CPU has it,
    and ``llvm.ctpop`` on ``<N x i64>`` lowers to ``cnt`` + ``uaddlp``/``uadalp``."""
    return (target_arch() if arch is None else arch) in ("aarch64", "arm64")


def cpu_features() -> frozenset[str]:
    """The CPU features numba compiles for: ``NUMBA_CPU_FEATURES`` when set (``+avx2,...``),
    none with ``NUMBA_CPU_NAME=generic`` and no ``NUMBA_CPU_FEATURES`` (numba's own default
    there: the AVX2 kernels' x86 intrinsics must not be emitted for it), else the host's
    (LLVM's feature map)."""
    env = os.environ.get("NUMBA_CPU_FEATURES", "").strip()
    if env:
        return frozenset(f[1:] for f in env.split(",") if f.startswith("+"))
    if ("NUMBA_CPU_FEATURES" not in os.environ
            and os.environ.get("NUMBA_CPU_NAME", "").strip().lower() == "generic"):
        return frozenset()
    feats = _host_features()
    return feats | {"neon"} if is_aarch64() else feats


def counting_scheme(features: frozenset[str] | None = None) -> str:
    """The XOR-popcount GEMM's counting scheme for a CPU: ``popcount`` (one ``llvm.ctpop``
    per word) where per-word counting is short, else ``csa`` (carry-save accumulation,
    amortising a long per-word popcount over :data:`CSA_GROUP` words).

    - AVX-512 VPOPCNTDQ: ``popcount``, one ``vpopcntq`` per word;
    - aarch64 NEON: ``popcount``, counting in bytes (:func:`byte_min_words`): ``cnt`` + a
      bytewise ``add`` per 128 bits after the XOR. Counted under qemu-aarch64
      (``benchmarks/aarch64_instructions.py``: instructions under emulation, not cycles;
      no ARM hardware here), ``csa`` took at most 1% fewer instructions per inference than
      ``popcount`` on NIN (width 0.75) and ``small`` at batch 1, both counting in bytes
      (docs/engine.md): too small a difference to prefer a variant that compiles to about
      6x the code; both schemes are exact, checked under qemu;
    - otherwise (AVX2, AVX-512 without VPOPCNTDQ): ``csa``, per-word popcount being the
      nibble-table sequence of about nine instructions per 256 bits there.

    ``BNNPRUNE_COUNTING`` (one of :data:`SCHEMES`) overrides the choice for this machine."""
    if features is None:
        forced = os.environ.get(SCHEME_ENV, "").strip()
        if forced:
            if forced not in SCHEMES:
                raise EngineError(f"{SCHEME_ENV}={forced!r}: not one of {', '.join(SCHEMES)}")
            return forced
        features = cpu_features()
    return "popcount" if {"avx512vpopcntdq", "neon"} & features else "csa"


def instruction_set(features: frozenset[str] | None = None) -> str:
    """The vector instruction set the XOR-popcount GEMM compiles to on a CPU, as benchmarks
    name it: ``avx512-vpopcntdq``, ``avx512bw``, ``avx2``, ``neon`` or ``generic``."""
    feats = cpu_features() if features is None else features
    for name, feat in (("avx512-vpopcntdq", "avx512vpopcntdq"), ("avx512bw", "avx512bw"),
                       ("avx2", "avx2"), ("neon", "neon")):
        if feat in feats:
            return name
    return "generic"


def _csa(builder, c, a, b):
    """A full adder over bit vectors: ``(carry, sum)`` of ``a + b + c`` bit by bit."""
    if isinstance(b, ir.Constant):  # a zero word (a padded group): a half adder
        return builder.and_(a, c), builder.xor(a, c)
    u = builder.xor(a, b)
    return builder.or_(builder.and_(a, b), builder.and_(u, c)), builder.xor(u, c)


def _csa_tree(builder, planes, ds):
    """Harley-Seal: adds the ``len(ds) = 2**m`` words into the bit planes ``planes[0..m-1]``
    (allocas of weights 1, 2, ..., ``2**(m-1)``); returns the carry out, of weight ``2**m``."""
    if len(ds) == 1:
        return ds[0]
    half = len(ds) // 2
    m = half.bit_length() - 1  # the plane the two halves' carries meet in
    a = _csa_tree(builder, planes, ds[:half])
    b = _csa_tree(builder, planes, ds[half:])
    hi, lo = _csa(builder, builder.load(planes[m]), a, b)
    builder.store(lo, planes[m])
    return hi


def _csa_passes(builder, xp, bp, wp, ip, op, boff, kh, seg, offs, woff, bstep, ioff, count,
                npix, nunits):
    """The counts of :func:`xpc_word`'s ``min(count, npix)`` pixels x ``nunits`` units of
    :data:`CSA_LANES` channels by carry-save accumulation, one (pixel, unit) pass at a time
    with its bit planes in registers: ``init + popcount`` of unit ``u`` of pixel ``p`` to
    the slot ``op[16p + u]``. Word ``i`` of the window is at ``x[base + offs[i]]``, its
    weights at ``w[woff + (u // upb)*bstep + CSA_LANES*(u % upb) + 16*i]`` (``upb``: units
    per 16-channel block)."""
    vty = ir.VectorType(_I64, CSA_LANES)
    ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]),
                                           f"llvm.ctpop.v{CSA_LANES}i64")
    nbits = (CSA_GROUP - 1).bit_length()
    zero = ir.Constant(vty, [0] * CSA_LANES)
    planes = [cgutils.alloca_once(builder, vty) for _ in range(nbits)]
    acc = cgutils.alloca_once(builder, vty)
    n = builder.mul(kh, seg)
    groups = builder.udiv(n, ir.Constant(_I64, CSA_GROUP))
    n_grouped = builder.mul(groups, ir.Constant(_I64, CSA_GROUP))
    c16 = ir.Constant(_I64, BLOCK_CH)
    upb = BLOCK_CH // CSA_LANES
    npx = builder.select(builder.icmp_signed("<", count, ir.Constant(_I64, npix)), count,
                         ir.Constant(_I64, npix))
    with cgutils.for_range(builder, npx) as pl:
        xb = builder.gep(xp, [builder.load(builder.gep(bp, [builder.add(boff, pl.index)]))])
        with cgutils.for_range(builder, ir.Constant(_I64, nunits)) as ul:
            u = ul.index
            wu = builder.add(builder.add(woff, builder.mul(
                builder.udiv(u, ir.Constant(_I64, upb)), bstep)), builder.mul(
                builder.urem(u, ir.Constant(_I64, upb)), ir.Constant(_I64, CSA_LANES)))
            wb = builder.gep(wp, [wu])
            for pln in planes:
                builder.store(zero, pln)
            builder.store(_vload(builder, ip, builder.add(
                ioff, builder.mul(u, ir.Constant(_I64, CSA_LANES))), vty, 8), acc)

            def word(i):
                xv = builder.load(builder.gep(xb, [builder.load(builder.gep(offs, [i]))]))
                wv = _vload(builder, wb, builder.mul(i, c16), vty, 8)
                return builder.xor(_splat(builder, xv, vty), wv)

            def group(i0, size):
                """Words ``i0 ..`` of one group, its last ``CSA_GROUP - size`` zero."""
                ds = [word(builder.add(i0, ir.Constant(_I64, j))) for j in range(size)]
                hi = _csa_tree(builder, planes, ds + [zero] * (CSA_GROUP - size))
                c = builder.shl(builder.call(ctpop, [hi]),
                                ir.Constant(vty, [nbits] * CSA_LANES))
                builder.store(builder.add(builder.load(acc), c), acc)

            with cgutils.for_range(builder, groups) as gl:
                group(builder.mul(gl.index, ir.Constant(_I64, CSA_GROUP)), CSA_GROUP)
            # the last n % CSA_GROUP words: one group padded with zero words, a case per
            # count (LLVM drops the adders of the zeros), not a popcount per word
            done = builder.append_basic_block("csa_tail_done")
            tails = [builder.append_basic_block(f"csa_tail{t}") for t in range(1, CSA_GROUP)]
            sw = builder.switch(builder.sub(n, n_grouped), done)
            for t, bb in enumerate(tails, start=1):
                sw.add_case(ir.Constant(_I64, t), bb)
                builder.position_at_end(bb)
                group(n_grouped, t)
                builder.branch(done)
            builder.position_at_end(done)
            total = builder.load(acc)
            for lvl, pln in enumerate(planes):
                c = builder.shl(builder.call(ctpop, [builder.load(pln)]),
                                ir.Constant(vty, [lvl] * CSA_LANES))
                total = builder.add(total, c)
            slot = builder.add(builder.mul(pl.index, c16), u)
            builder.store(total, builder.gep(op, [slot]))


@intrinsic
def csa_chains(typingctx, reps, seed):  # noqa: ARG001
    """``reps`` rounds of the ``csa`` scheme's counting of :data:`CSA_GROUP` words (the
    carry-save probe): per round ``s ^ c_j`` for constants ``c_j`` are the group's XOR
    results, added into three bit planes and the popcount of the carry out into the
    accumulator; ``s`` advances by one per round, so nothing can be hoisted. The GEMM's
    :func:`_csa_passes` group without its operand loads, on one ``<CSA_LANES x i64>`` chain
    (its planes fill the registers); returns the count of all rounds' bits."""
    if not (isinstance(reps, types.Integer) and isinstance(seed, types.Integer)):
        return None
    sig = types.int64(reps, seed)

    def codegen(context, builder, signature, args):
        n, sd = _ints(context, builder, signature.args, args, (0, 1))
        vty = ir.VectorType(_I64, CSA_LANES)
        ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]),
                                               f"llvm.ctpop.v{CSA_LANES}i64")
        nbits = (CSA_GROUP - 1).bit_length()
        zero = ir.Constant(vty, [0] * CSA_LANES)
        planes = [cgutils.alloca_once_value(builder, zero) for _ in range(nbits)]
        acc = cgutils.alloca_once_value(builder, zero)
        s = cgutils.alloca_once_value(builder, builder.mul(
            _splat(builder, sd, vty), ir.Constant(vty, [2 * e + 1 for e in range(CSA_LANES)])))
        consts = [ir.Constant(vty, [(0x9E3779B97F4A7C15 * (8 * j + e + 1)) % 2**63
                                    for e in range(CSA_LANES)]) for j in range(CSA_GROUP)]
        one = ir.Constant(vty, [1] * CSA_LANES)
        with cgutils.for_range(builder, n):
            sv = builder.load(s)
            hi = _csa_tree(builder, planes, [builder.xor(sv, c) for c in consts])
            c = builder.shl(builder.call(ctpop, [hi]), ir.Constant(vty, [nbits] * CSA_LANES))
            builder.store(builder.add(builder.load(acc), c), acc)
            builder.store(builder.add(sv, one), s)
        total = builder.load(acc)
        for lvl, pln in enumerate(planes):
            total = builder.add(total, builder.shl(builder.call(ctpop, [builder.load(pln)]),
                                                   ir.Constant(vty, [lvl] * CSA_LANES)))
        out = builder.extract_element(total, ir.Constant(_I32, 0))
        for e in range(1, CSA_LANES):
            out = builder.add(out, builder.extract_element(total, ir.Constant(_I32, e)))
        return out

    return sig, codegen


WORD_BLOCKS = 64 // BLOCK_CH  # 16-channel blocks per 64-bit output word


def _word_cases() -> list[tuple[int, bool]]:
    """The (blocks, last block half) variants of :func:`xpc_word`, in switch order."""
    return [(nb, half) for nb in range(1, WORD_BLOCKS + 1) for half in (False, True)]


def xword_pix(nb: int) -> int:
    """Pixels per call of :func:`xpc_word` for ``nb`` 16-channel blocks: as many as share
    each weight vector load with at most 16 accumulators (``nb`` x 2 vectors per pixel), up
    to 4. With 24 (4 pixels of 3 blocks, 3 of 4) the short-window GEMMs ran slower."""
    return min(XWORD_MAX_PIX, 16 // (nb * (BLOCK_CH // XPC_LANES)))


XWORD_MAX_PIX = 4


# Without a vector popcount instruction (AVX2) the per-word GEMM counts in bytes: each XOR
# result's bytes counted by the nibble table (``llvm.ctpop`` on bytes: no ``vpsadbw`` per
# word), summed bytewise over up to BYTE_WORDS words (at most 8 per byte and word: 31 x 8 <
# 256), then one byte sum (:func:`_byte_sums`) into the 64-bit accumulators. With VPOPCNTDQ
# each word is one ``vpopcntq`` (nothing to save), so that path counts in 64-bit lanes as
# before. On aarch64 NEON the same loop is ``cnt`` + a bytewise ``add`` per 128 bits against
# ``cnt`` + two ``uaddlp`` + ``uadalp`` per word in 64-bit lanes.
BYTE_WORDS = 31
AVX2_BYTE_MIN_WORDS = 8  # byte_min_words on AVX2 (measured: its docstring)


def byte_sum_isa(features: frozenset[str] | None = None) -> str | None:
    """The byte sum the per-word GEMM's byte counts end in on a CPU, or None: ``avx2``
    (``vpsadbw``) on x86 with AVX2, ``neon`` (``uaddlp`` / ``uadalp``) on aarch64."""
    feats = cpu_features() if features is None else features
    return "neon" if "neon" in feats else "avx2" if "avx2" in feats else None


def byte_min_words(features: frozenset[str] | None = None) -> int | None:
    """The shortest window (in words) the per-word GEMM counts in bytes on a CPU, None for
    none (64-bit lanes throughout). By default:

    - AVX-512 VPOPCNTDQ: None (one ``vpopcntq`` per word, nothing to save);
    - AVX2: 8. NIN's 3-word 1x1 convs ran 0.95-0.96x in bytes (the per-word bookkeeping and
      the final ``vpsadbw`` not won back), its dense 38-word conv 1.13x (each conv alone at
      batch 1, three alternated runs, Zen 3 EPYC);
    - aarch64 NEON: 1 (every window). Counted under qemu-aarch64
      (``benchmarks/aarch64_instructions.py``: instructions under emulation, not cycles), every
      window in bytes took 0.913x the instructions per inference of 64-bit lanes on NIN
      (width 0.75) and 0.845x on ``small`` at batch 1 (3-word convs 0.95-0.98x, 9-29 words
      0.74-0.80x; NIN's 2-word conv 1.06x); with a minimum of 3 the popcount variant holds
      both loops and every window cost more (0.975x and 0.959x of lanes in all); see
      docs/engine.md, "Counting schemes per instruction set".

    Without ``features`` (the CPU numba compiles for) ``BNNPRUNE_BYTE_COUNTS`` overrides the
    choice: ``off``, or the minimum window in words (a CPU with a byte sum only)."""
    if features is None:
        forced = forced_byte_counts()
        if forced:
            return _forced_byte_min_words(forced)
        features = cpu_features()
    isa = byte_sum_isa(features)
    if isa is None or "avx512vpopcntdq" in features:
        return None
    return 1 if isa == "neon" else AVX2_BYTE_MIN_WORDS


def _forced_byte_min_words(forced: str) -> int | None:
    if forced == "off":
        return None
    if not forced.isdigit() or int(forced) < 1:
        raise EngineError(f"{BYTE_ENV}={forced!r}: 'off' or a window length in words >= 1")
    if byte_sum_isa() is None:
        raise EngineError(f"{BYTE_ENV}={forced!r}: the CPU numba compiles for has no byte sum "
                          "(AVX2 or NEON)")
    return int(forced)


def byte_counts(features: frozenset[str] | None = None) -> bool:
    """Whether the per-word GEMM counts in bytes (:data:`BYTE_WORDS`) on a CPU: AVX2
    without AVX-512 VPOPCNTDQ, and aarch64 NEON (:func:`byte_min_words`)."""
    return byte_min_words(features) is not None


# of the CPU numba compiles for (part of numba's cache key) and BNNPRUNE_BYTE_COUNTS (a
# cache folder of its own: base._stamp_engine_caches)
BYTE_MIN_WORDS = byte_min_words()
BYTE_COUNTS = BYTE_MIN_WORDS is not None


def _psadbw(builder, v):
    """The byte sums of each 8 bytes of ``v`` (``<8*XPC_LANES x i8>``) as ``<XPC_LANES x
    i64>``: ``vpsadbw`` against zero on each 32-byte half."""
    v32 = ir.VectorType(ir.IntType(8), 32)
    v4 = ir.VectorType(_I64, 4)
    psad = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v4, [v32, v32]),
                                          "llvm.x86.avx2.psad.bw")
    zero = ir.Constant(v32, [0] * 32)
    n = v.type.count // 32
    undef = ir.Constant(v.type, ir.Undefined)
    halves = [builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, 32),
                                                           list(range(32 * h, 32 * h + 32))))
              for h in range(n)]
    sums = [builder.call(psad, [h, zero]) for h in halves]
    return _concat(builder, sums)


def _concat(builder, parts):
    """Vectors of one type joined end to end (pairwise shuffles)."""
    while len(parts) > 1:
        width = 2 * parts[0].type.count
        cat = ir.Constant(ir.VectorType(_I32, width), list(range(width)))
        parts = [builder.shuffle_vector(parts[i], parts[i + 1], cat)
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _uaddlp(builder, v):
    """The byte sums of each 8 bytes of ``v`` (``<8*XPC_LANES x i8>``) as ``<XPC_LANES x
    i64>`` on aarch64 NEON: per 16 bytes the pairwise widening adds ``uaddlp`` .16b -> .8h
    -> .4s -> .2d (LLVM fuses the last with the caller's add into ``uadalp``)."""
    parts = []
    for q in range(v.type.count // 16):
        x = builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), ir.Constant(
            ir.VectorType(_I32, 16), list(range(16 * q, 16 * q + 16))))
        for bits, n in ((16, 8), (32, 4), (64, 2)):
            src = x.type
            dst = ir.VectorType(ir.IntType(bits), n)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(dst, [src]),
                f"llvm.aarch64.neon.uaddlp.v{n}i{bits}.v{2 * n}i{bits // 2}")
            x = builder.call(fn, [x])
        parts.append(x)
    return _concat(builder, parts)


def _byte_sums(builder, v):
    """The byte sums of each 8 bytes of ``v`` (``<8*XPC_LANES x i8>``) as ``<XPC_LANES x
    i64>``, by the target's byte sum (:func:`byte_sum_isa`): :func:`_uaddlp` on aarch64,
    else :func:`_psadbw`."""
    return _uaddlp(builder, v) if is_aarch64() else _psadbw(builder, v)


def _popcount_window(builder, xp, wp, bases, rowstep, kh, seg, woff, kstride, bstep, accs,
                     npix, nb, half, ctpop, in_bytes=False):
    """:func:`xpc_word`'s window counted word by word (scheme ``popcount``): each weight
    vector loaded once for all ``npix`` pixels, XORed with the broadcast activation word,
    ``ctpop`` added to the accumulator allocas ``accs[p, b, j]``; ``in_bytes``
    (:func:`byte_counts`): the bytes' counts summed bytewise, added every
    :data:`BYTE_WORDS` words and at the end."""
    lanes, vty = XPC_LANES, _VXPC
    nv = BLOCK_CH // lanes
    counted = [(p, b, j) for b in range(nb) for j in range(nv // 2 if half and b == nb - 1
                                                            else nv) for p in range(npix)]
    if in_bytes:
        v8 = ir.VectorType(ir.IntType(8), 8 * lanes)
        ctpop8 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8]),
                                                f"llvm.ctpop.v{8 * lanes}i8")
        zero8 = ir.Constant(v8, [0] * (8 * lanes))
        sums = {key: cgutils.alloca_once_value(builder, zero8) for key in counted}
        run = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))

        def flush():
            for key, a8 in sums.items():
                a = accs[key]
                builder.store(builder.add(builder.load(a), _byte_sums(builder, builder.load(a8))),
                              a)
                builder.store(zero8, a8)

    with _window(builder, bases, rowstep, kh, seg, woff, kstride) as (rows, k, wk):
        xbs = [_splat(builder, builder.load(builder.gep(xp, [builder.add(o, k)])), vty)
               for o in rows]
        for b in range(nb):
            wb = builder.add(wk, builder.mul(bstep, ir.Constant(_I64, b)))
            for j in range(nv // 2 if half and b == nb - 1 else nv):
                wv = _vload(builder, wp, builder.add(wb, ir.Constant(_I64, lanes * j)), vty, 8)
                for p in range(npix):
                    if in_bytes:
                        c8 = builder.call(ctpop8, [builder.bitcast(builder.xor(xbs[p], wv), v8)])
                        a8 = sums[p, b, j]
                        builder.store(builder.add(builder.load(a8), c8), a8)
                        continue
                    c = builder.call(ctpop, [builder.xor(xbs[p], wv)])
                    a = accs[p, b, j]
                    builder.store(builder.add(builder.load(a), c), a)
        if in_bytes:
            n1 = builder.add(builder.load(run), ir.Constant(_I64, 1))
            full = builder.icmp_signed("==", n1, ir.Constant(_I64, BYTE_WORDS))
            builder.store(builder.select(full, ir.Constant(_I64, 0), n1), run)
            with builder.if_then(full, likely=False):
                flush()
    if in_bytes:
        flush()


# Windows of these word counts (scheme ``csa``) count straight line, three words at a time by
# one full adder (:func:`_short_window`): the 1x1 convs over up to 448 channels (NIN's five
# of 3 words), `small`'s dense 5-word rows. Longer windows loop (per word in bytes, or
# carry-save). Measured per window length on AVX2: docs/engine.md, "Counting schemes per
# instruction set"; the windows AVX2 counts in 64-bit lanes in the popcount variant
SHORT_WORDS = range(1, AVX2_BYTE_MIN_WORDS)


def ymm_only(features: frozenset[str] | None = None) -> bool:
    """Whether a CPU (default: the one numba compiles for) is x86 with AVX2 and without
    AVX-512: the short windows' nibble tables (:func:`_nibble_counts`) and sign bits
    (:func:`_sign_word`) are written for its 256-bit registers; elsewhere LLVM's own lowering
    (``vpopcntq``, ``kmovq``, NEON) is kept."""
    feats = cpu_features() if features is None else features
    return "avx2" in feats and "avx512f" not in feats and not is_aarch64()


def _nibble_counts(builder, v, scale):
    """``scale`` times the bit count of each byte of ``v`` (``<64 x i8>``) on AVX2
    (:func:`ymm_only`): the nibble table (``vpshufb``) per 256 bits with its entries scaled,
    so a full adder's carry, counted twice, costs no extra byte add (LLVM's ``llvm.ctpop``
    on bytes is the same table, unscaled)."""
    v32 = ir.VectorType(ir.IntType(8), 32)
    pshufb = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v32, [v32, v32]),
                                            "llvm.x86.avx2.pshuf.b")
    table = ir.Constant(v32, [scale * bin(i % 16).count("1") for i in range(32)])
    low = ir.Constant(v32, [15] * 32)
    four = ir.Constant(ir.VectorType(ir.IntType(16), 16), [4] * 16)
    undef = ir.Constant(v.type, ir.Undefined)
    out = []
    for h in range(v.type.count // 32):
        x = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, 32),
                                                          list(range(32 * h, 32 * h + 32))))
        hi = builder.bitcast(builder.lshr(builder.bitcast(x, four.type), four), v32)
        out.append(builder.add(builder.call(pshufb, [table, builder.and_(x, low)]),
                               builder.call(pshufb, [table, builder.and_(hi, low)])))
    return _concat(builder, out)


def _short_window(builder, xp, wp, bases, offs, woff, bstep, npix, nb, half, ctpop, nwords,
                  emit, done=None):
    """:func:`xpc_word`'s window of ``nwords`` words (:data:`SHORT_WORDS`, scheme ``csa``),
    straight line (no loop, so no accumulator carried through one): per weight vector and
    pixel each three XOR results go through one full adder into a sum and a carry, counted
    as ``popcount(sum) + 2*popcount(carry)`` (two popcounts for three words), the last
    ``nwords % 3`` words one popcount each (windows of 1-2 words: no adder, the gain is the
    straight line and one byte sum). With :data:`BYTE_COUNTS` the counts are byte counts
    summed bytewise (at most 8 per word and byte: 56 for 7 words) and added into the
    count by one byte sum (:func:`_byte_sums`: ``vpsadbw`` per 256 bits on AVX2; the carry's
    doubled count from a doubled nibble table there, :func:`_nibble_counts`).
    Word ``i`` is at ``x[base + offs[i]]``, its weights at ``w[woff + 16*i]``. Each vector's
    count (``<XPC_LANES x i64>``) goes to ``emit(p, b, j, count)``, and ``done(p)`` is called
    after pixel ``p``'s last vector."""
    lanes, vty = XPC_LANES, _VXPC
    nv = BLOCK_CH // lanes
    if BYTE_COUNTS:
        v8 = ir.VectorType(ir.IntType(8), 8 * lanes)
        ctpop8 = cgutils.get_or_insert_function(builder.module, ir.FunctionType(v8, [v8]),
                                                f"llvm.ctpop.v{8 * lanes}i8")

        def count(v, twice=False):
            if ymm_only():
                return _nibble_counts(builder, builder.bitcast(v, v8), 2 if twice else 1)
            c = builder.call(ctpop8, [builder.bitcast(v, v8)])
            return builder.add(c, c) if twice else c
    else:
        one = ir.Constant(vty, [1] * lanes)

        def count(v, twice=False):
            c = builder.call(ctpop, [v])
            return builder.shl(c, one) if twice else c
    xbs = []
    for i in range(nwords):
        o = builder.load(builder.gep(offs, [ir.Constant(_I64, i)]))
        xbs.append([_splat(builder, builder.load(builder.gep(xp, [builder.add(base, o)])), vty)
                    for base in bases])
    # pixel by pixel, vector by vector: few XOR results are live at a time (16 ymm on AVX2)
    for p in range(npix):
        for b in range(nb):
            wb = builder.add(woff, builder.mul(bstep, ir.Constant(_I64, b)))
            for j in range(nv // 2 if half and b == nb - 1 else nv):
                ds = [builder.xor(xbs[i][p], _vload(builder, wp, builder.add(
                    wb, ir.Constant(_I64, BLOCK_CH * i + lanes * j)), vty, 8))
                      for i in range(nwords)]
                parts = []
                for t in range(0, nwords - 2, 3):
                    carry, total = _csa(builder, ds[t + 2], ds[t], ds[t + 1])
                    parts += [count(total), count(carry, twice=True)]
                parts += [count(d) for d in ds[nwords - nwords % 3:]]
                cnt = functools.reduce(builder.add, parts)
                if BYTE_COUNTS:
                    cnt = _byte_sums(builder, cnt)
                emit(p, b, j, cnt)
        if done is not None:
            done(p)


def _short_window_bits(context, builder, sa, args, op, xp, wp, bases, offs, woff, bstep,
                       init_vec, npix, nb, half, ctpop, nwords, ooff, ostride, count):
    """:func:`xpc_word`'s short window (:func:`_short_window`) with its threshold bits taken
    pixel by pixel (:func:`_sign_word` of ``init + count`` right after the pixel's last
    vector, then :func:`_store_bits`): no accumulators are kept for an epilogue after all
    pixels (2 pixels x 4 blocks x 2 vectors of ``<8 x i64>`` are 32 ymm, twice AVX2's
    registers). ``init_vec(b, j)`` loads block ``b``'s vector ``j`` of the accumulators'
    starts."""
    accs = {p: [] for p in range(npix)}

    def emit(p, b, j, cnt):
        accs[p].append(builder.add(init_vec(b, j), cnt))

    def done(p):
        if half:  # the last block's second vector: its (padding) channels' init
            accs[p].append(init_vec(nb - 1, 1))
        pp = ir.Constant(_I64, p)
        with builder.if_then(builder.icmp_signed("<", pp, count), likely=True):
            o = builder.add(ooff, builder.mul(pp, ostride))
            _store_bits(context, builder, sa, args, op, o, _sign_word(builder, accs[p]))

    _short_window(builder, xp, wp, bases, offs, woff, bstep, npix, nb, half, ctpop, nwords,
                  emit, done)


def _xpc_word_codegen(epilogue: Callable) -> Callable:
    """Codegen of a whole-word XOR-popcount (:func:`xpc_word`, :func:`xpc_affine_word`): a
    switch over :func:`_word_cases`, each a loop over :func:`xword_pix` pixels with all of
    their accumulators in registers, then for each pixel ``p < count``
    ``epilogue(context, builder, sa, args, out, o, accs, nb, half)`` (``out``: the output's
    data pointer, ``o`` = ``ooff + p*ostride``, ``accs[b][j]``: the loaded ``<8 x i64>``
    accumulators of block ``b``). The arguments start x, bases, boff, rowstep, kh, seg,
    kstride, w, woff, bstep, init, ioff and end out, ooff, ostride, count, nb, half, offs,
    csa: with ``csa`` true and a window of at least :data:`CSA_MIN_WORDS` words the counts
    come from :func:`_csa_passes` (``offs[i]``: word ``i``'s offset in the window), with
    ``csa`` true and a window of :data:`SHORT_WORDS` from :func:`_short_window`, else from
    one ``llvm.ctpop`` per word (:func:`_popcount_window`). The engine passes ``csa`` as a
    compile-time constant (:func:`~bnnprune.engine.kernels.bconv._variant`), so LLVM drops
    the scheme not taken."""
    def codegen(context, builder, signature, args):
        sa = signature.args
        end = len(sa) - 2
        xp, bp, wp, ip, op, offp = (_data(context, builder, sa[i], args[i])
                                    for i in (0, 1, 7, 10, end - 6, end))
        (boff_, rowstep_, kh_, seg_, kstride_, woff_, bstep_, ioff_, ooff_, ostride_, count_,
         nb_, half_, csa_) = _ints(context, builder, sa, args,
                                   (2, 3, 4, 5, 6, 8, 9, 11, end - 5, end - 4, end - 3,
                                    end - 2, end - 1, end + 1))
        csa_on = builder.icmp_signed("!=", csa_, ir.Constant(_I64, 0))
        n_ = builder.mul(kh_, seg_)
        use_csa = builder.and_(csa_on, builder.icmp_signed(">=", n_, ir.Constant(
            _I64, CSA_MIN_WORDS)))
        vunit = ir.VectorType(_I64, CSA_LANES)
        slots = cgutils.alloca_once(builder, vunit,
                                    size=ir.Constant(_I64, XWORD_MAX_PIX * BLOCK_CH))
        lanes, vty, ctpop = XPC_LANES, _VXPC, _ctpop(builder)
        nv = BLOCK_CH // lanes
        one = ir.Constant(_I64, 1)
        case_idx = builder.add(builder.shl(builder.sub(nb_, one), one), builder.and_(half_, one))
        merge = builder.append_basic_block("xw_merge")
        cases = _word_cases()
        blocks = [builder.append_basic_block(f"xw_case{i}") for i in range(len(cases))]
        sw = builder.switch(case_idx, blocks[-2])
        for i, b in enumerate(blocks):
            sw.add_case(ir.Constant(_I64, i), b)
        for (nb, half), bb in zip(cases, blocks, strict=True):
            builder.position_at_end(bb)
            npix = xword_pix(nb)
            bases = [builder.load(builder.gep(bp, [builder.add(boff_, ir.Constant(_I64, p))]))
                     for p in range(npix)]
            accs = {(p, b, j): cgutils.alloca_once(builder, vty)
                    for p in range(npix) for b in range(nb) for j in range(nv)}

            def init_vec(b, j):
                off = builder.add(ioff_, ir.Constant(_I64, BLOCK_CH * b + lanes * j))
                return _vload(builder, ip, off, vty, 8)

            def init_accs(accs=accs):
                for (_, b, j), a in accs.items():
                    builder.store(init_vec(b, j), a)
            nunits = (nb * BLOCK_CH - (BLOCK_CH // 2 if half else 0)) // CSA_LANES
            with builder.if_else(use_csa) as (then, otherwise):
                with then:
                    init_accs()
                    _csa_passes(builder, xp, bp, wp, ip, slots, boff_, kh_, seg_, offp, woff_,
                                bstep_, ioff_, count_, npix, nunits)
                    per = lanes // CSA_LANES
                    for (p, b, j), a in accs.items():
                        u = (BLOCK_CH * b + lanes * j) // CSA_LANES
                        if u + per > nunits:
                            continue  # a half block's second vector keeps its init
                        parts = [builder.load(builder.gep(slots, [ir.Constant(
                            _I64, BLOCK_CH * p + u + q)])) for q in range(per)]
                        while len(parts) > 1:
                            width = 2 * parts[0].type.count
                            cat = ir.Constant(ir.VectorType(_I32, width), list(range(width)))
                            parts = [builder.shuffle_vector(parts[i], parts[i + 1], cat)
                                     for i in range(0, len(parts), 2)]
                        builder.store(parts[0], a)
                with otherwise:
                    # the csa variant's short windows: a case per word count (the popcount
                    # variant, csa false, always takes the default)
                    counted = builder.append_basic_block("xw_counted")
                    per_word_bb = builder.append_basic_block("xw_per_word")
                    sw_n = builder.switch(builder.select(csa_on, n_, ir.Constant(_I64, 0)),
                                          per_word_bb)
                    for nw in SHORT_WORDS:
                        bbn = builder.append_basic_block(f"xw_short{nw}")
                        sw_n.add_case(ir.Constant(_I64, nw), bbn)
                        builder.position_at_end(bbn)
                        if epilogue is _bits_epilogue:
                            _short_window_bits(context, builder, sa, args, op, xp, wp, bases,
                                               offp, woff_, bstep_, init_vec, npix, nb, half,
                                               ctpop, nw, ooff_, ostride_, count_)
                            builder.branch(merge)
                            continue

                        def emit(p, b, j, cnt, accs=accs):
                            a = accs[p, b, j]
                            builder.store(builder.add(builder.load(a), cnt), a)
                        init_accs()
                        _short_window(builder, xp, wp, bases, offp, woff_, bstep_, npix, nb,
                                      half, ctpop, nw, emit)
                        builder.branch(counted)
                    builder.position_at_end(per_word_bb)
                    init_accs()
                    args_ = (builder, xp, wp, bases, rowstep_, kh_, seg_, woff_, kstride_,
                             bstep_, accs, npix, nb, half, ctpop)
                    if BYTE_COUNTS and BYTE_MIN_WORDS == 1:  # every window
                        _popcount_window(*args_, in_bytes=True)
                    elif BYTE_COUNTS:
                        long_ = builder.icmp_signed(">=", n_, ir.Constant(_I64, BYTE_MIN_WORDS))
                        with builder.if_else(long_) as (in_bytes, per_word):
                            with in_bytes:
                                _popcount_window(*args_, in_bytes=True)
                            with per_word:
                                _popcount_window(*args_)
                    else:
                        _popcount_window(*args_)
                    builder.branch(counted)
                    builder.position_at_end(counted)
            for p in range(npix):
                pp = ir.Constant(_I64, p)
                with builder.if_then(builder.icmp_signed("<", pp, count_), likely=True):
                    o = builder.add(ooff_, builder.mul(pp, ostride_))
                    vals = [[builder.load(accs[p, b, j]) for j in range(nv)] for b in range(nb)]
                    epilogue(context, builder, sa, args, op, o, vals, nb, half)
            builder.branch(merge)
        builder.position_at_end(merge)
        return context.get_dummy_value()

    return codegen


def _mask_word(builder, masks):
    """The ``<8 x i1>`` lane masks ``masks`` (at most 8) concatenated into one 64-bit word,
    mask ``h`` in bits ``8h..8h+7`` and 0 bits past the last: one mask (``kunpck`` + one
    ``kmovq`` with AVX-512), not each vector's moved and shifted in on its own."""
    lanes = masks[0].type.count
    masks = masks + [ir.Constant(ir.VectorType(ir.IntType(1), lanes), [0] * lanes)] * (
        64 // lanes - len(masks))
    while len(masks) > 1:
        width = 2 * masks[0].type.count
        order = ir.Constant(ir.VectorType(_I32, width), list(range(width)))
        masks = [builder.shuffle_vector(masks[i], masks[i + 1], order)
                 for i in range(0, len(masks), 2)]
    return builder.bitcast(masks[0], _I64)


def _sign_word(builder, vecs):
    """The sign bits of the ``<XPC_LANES x i64>`` vectors ``vecs`` (at most 8) as one 64-bit
    word, lane ``e`` of vector ``h`` in bit ``8h + e``, 0 bits past the last. On AVX2
    (:func:`ymm_only`) one ``vmovmskpd`` per 256 bits, the sign bits read straight from the
    64-bit lanes, shifted and ORed in general registers: LLVM lowers :func:`_mask_word` of
    sign compares there to ``vpcmpgtq`` per 256 bits and a chain of ``vpackssdw``,
    ``vpermq`` and ``vpacksswb`` (about 50 vector instructions per 64-bit word against 16).
    Elsewhere :func:`_mask_word` (``kunpck`` + ``kmovq`` with AVX-512)."""
    if not ymm_only():
        zero = ir.Constant(_VXPC, [0] * XPC_LANES)
        return _mask_word(builder, [builder.icmp_signed("<", v, zero) for v in vecs])
    v4f = ir.VectorType(ir.DoubleType(), 4)
    movmsk = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [v4f]),
                                            "llvm.x86.avx.movmsk.pd.256")
    undef = ir.Constant(_VXPC, ir.Undefined)
    word = None
    for h, v in enumerate(vecs):
        for q in range(XPC_LANES // 4):
            part = builder.shuffle_vector(v, undef, ir.Constant(
                ir.VectorType(_I32, 4), list(range(4 * q, 4 * q + 4))))
            m = builder.zext(builder.call(movmsk, [builder.bitcast(part, v4f)]), _I64)
            shift = XPC_LANES * h + 4 * q
            m = builder.shl(m, ir.Constant(_I64, shift)) if shift else m
            word = m if word is None else builder.or_(word, m)
    return word


def _bits_epilogue(context, builder, sa, args, op, o, accs, nb, half):  # noqa: ARG001
    """:func:`xpc_word`'s word: bit ``16b + q`` is the accumulator's sign xor bit ``16b + q``
    of ``xmask[moff]`` (:func:`_sign_word`, :func:`_store_bits`)."""
    _store_bits(context, builder, sa, args, op, o, _sign_word(builder, [a for row in accs
                                                                       for a in row]))


def _store_bits(context, builder, sa, args, op, o, word):
    """:func:`xpc_word`'s store of one pixel's sign bits ``word``: ``out[o] = word xor
    xmask[moff]``."""
    mp = _data(context, builder, sa[12], args[12])
    (moff_,) = _ints(context, builder, sa, args, (13,))
    xm = builder.load(builder.gep(mp, [moff_]))
    builder.store(builder.xor(word, xm), builder.gep(op, [o]))


def _affine_epilogue(context, builder, sa, args, op, o, accs, nb, half):
    """:func:`xpc_affine_word`'s floats: channel ``c = ioff + 16b + q`` (the channel the
    accumulator's ``init`` belongs to) is ``(float32(nbits - 2*acc) * m1[c] + a1[c]) * m2[c] +
    a2[c]`` at ``out[o + 16b + q]`` (a half last block stores its first 8 channels only)."""
    par = [_data(context, builder, sa[i], args[i]) for i in (13, 14, 15, 16)]
    ioff_, nbits_ = _ints(context, builder, sa, args, (11, 12))
    lanes = XPC_LANES
    kvec = _splat(builder, nbits_, _VXPC)
    one = ir.Constant(_VXPC, [1] * lanes)
    for b, row in enumerate(accs):
        for j, a in enumerate(row[:len(row) // 2] if half and b == nb - 1 else row):
            # |K - 2p| <= K < 2**31 (checked by the caller): exact through int32
            d32 = builder.trunc(builder.sub(kvec, builder.shl(a, one)),
                                ir.VectorType(_I32, lanes))
            d = builder.sitofp(d32, _V8F32)
            off = ir.Constant(_I64, BLOCK_CH * b + lanes * j)
            m1v, a1v, m2v, a2v = (_vload(builder, q, builder.add(ioff_, off), _V8F32, 4)
                                  for q in par)
            r = builder.fadd(builder.fmul(builder.fadd(builder.fmul(d, m1v), a1v), m2v), a2v)
            dst = builder.gep(op, [builder.add(o, off)])
            builder.store(r, builder.bitcast(dst, _V8F32.as_pointer()), align=4)


def _xpc_word_typed(x, bases, w, init, out, ints, offs, csa) -> bool:
    return (_xpc_typed(x, w, init, ints) and _is_vec(bases, types.int64)
            and isinstance(out, types.Array) and out.ndim == 1 and out.layout == "C"
            and _is_vec(offs, types.int64) and isinstance(csa, (types.Boolean, types.Integer)))


@intrinsic
def xpc_word(typingctx, x, bases, boff, rowstep, kh, seg, kstride, w, woff, bstep, init,  # noqa: ARG001
             ioff, xmask, moff, out, ooff, ostride, count, nb, half, offs, csa):
    """The threshold bits of one 64-channel output word for each of :func:`xword_pix`
    (``nb``) pixels.

    Pixel ``p`` reads ``kh`` rows of ``seg`` words ``kstride`` apart, row ``r`` starting at
    ``x[bases[boff+p] + r*rowstep]``. ``nb`` (1..4) 16-channel blocks, word ``k`` of block
    ``b``'s channel ``q`` at ``w[woff + b*bstep + 16*k + q]``, accumulators starting at
    ``init[ioff + 16b + q]``; with ``half`` the last block does its first 8 channels only. Bit
    ``16b + q`` of a pixel's word is ``(acc < 0) xor`` bit ``16b + q`` of ``xmask[moff]``
    (blocks past ``nb`` give 0 bits); the word of pixel ``p < count`` is stored to
    ``out[ooff + p*ostride]``. All blocks' accumulators stay in registers and each weight
    vector is loaded once for all pixels. ``offs`` and ``csa``: the counting scheme, as in
    :func:`_xpc_word_codegen`.
    """
    ints = (boff, rowstep, kh, seg, kstride, woff, bstep, ioff, moff, ooff, ostride, count, nb,
            half)
    if not (_xpc_word_typed(x, bases, w, init, out, ints, offs, csa)
            and _is_vec(xmask, types.uint64) and out.dtype == types.uint64):
        return None
    sig = types.none(x, bases, boff, rowstep, kh, seg, kstride, w, woff, bstep, init, ioff,
                     xmask, moff, out, ooff, ostride, count, nb, half, offs, csa)
    return sig, _xpc_word_codegen(_bits_epilogue)


@intrinsic
def xpc_affine_word(typingctx, x, bases, boff, rowstep, kh, seg, kstride, w, woff, bstep,  # noqa: ARG001
                    init, ioff, nbits, m1, a1, m2, a2, out, ooff, ostride, count, nb, half,
                    offs, csa):
    """:func:`xpc_word` with the float epilogue: for each pixel ``p < count``, the ``16*nb``
    channels (``8`` fewer with ``half``) ``ioff + 16b + q`` of one 64-channel word as
    ``((nbits - 2*acc) * m1 + a1) * m2 + a2`` (float32, separate roundings), stored at
    ``out[ooff + p*ostride + 16b + q]``.
    """
    ints = (boff, rowstep, kh, seg, kstride, woff, bstep, ioff, nbits, ooff, ostride, count, nb,
            half)
    if not (_xpc_word_typed(x, bases, w, init, out, ints, offs, csa)
            and out.dtype == types.float32
            and all(_is_vec(t, types.float32) for t in (m1, a1, m2, a2))):
        return None
    sig = types.none(x, bases, boff, rowstep, kh, seg, kstride, w, woff, bstep, init, ioff,
                     nbits, m1, a1, m2, a2, out, ooff, ostride, count, nb, half, offs, csa)
    return sig, _xpc_word_codegen(_affine_epilogue)


def vector_registers(features: frozenset[str] | None = None) -> int:
    """Vector registers of a CPU (default: the one numba compiles for): 32 with AVX-512
    (``ymm0..31`` too), 16 on AVX2."""
    feats = cpu_features() if features is None else features
    return 32 if "avx512f" in feats else 16


VREGS = vector_registers()  # of the CPU numba compiles for (part of numba's cache key)
FWORD_MAX_PIX = 8


def fword_shape(vregs: int = VREGS) -> tuple[int, int]:
    """(FMA accumulators, vectors per pass) of :func:`fconv_word` with ``vregs`` vector
    registers: 16 accumulators of up to 8 vectors (a whole word in one pass) with 32; with
    16 (AVX2), 10 accumulators of up to 4 vectors per pass, so a pass's accumulators, weight
    vectors and broadcast inputs fit the registers. 16 accumulators (2 pixels x 8 vectors)
    spilled to the stack in every tap there (``vmovups`` to and from ``rsp`` next to the
    FMAs), 12 (3 x 4) still did: NIN's 3->192 5x5 first conv ran at 33% of the FMA peak
    with 16, 38% with 12, 78-79% with 10 or 8 (8 slower on 100 channels), 74% with 9 in
    passes of 3 (the conv alone at batch 1, AMD EPYC Zen 3, one thread, one run)."""
    return (16, 8) if vregs >= 32 else (10, 4)


def fword_pix(nvec: int, vregs: int = VREGS) -> int:
    """Pixels per call of :func:`fconv_word` for ``nvec`` vectors of 8 channels: enough
    independent FMA chains to hide the FMA latency, few enough to stay in the registers
    (:func:`fword_shape`, the largest pass of :func:`fword_passes`)."""
    accs, per = fword_shape(vregs)
    passes = -(-nvec // per)
    return min(FWORD_MAX_PIX, accs // -(-nvec // passes))


def fword_passes(nvec: int, vregs: int = VREGS) -> list[list[int]]:
    """The vectors (0..``nvec``-1) of each pass of :func:`fconv_word` over the window: as few
    passes as :func:`fword_shape` allows, of equal size within one (7: 4 + 3)."""
    per = fword_shape(vregs)[1]
    passes = -(-nvec // per)
    size = -(-nvec // passes)
    return [list(range(v, min(v + size, nvec))) for v in range(0, nvec, size)]


def _fconv_word_codegen(thresholds: bool) -> Callable:
    """Codegen of :func:`fconv_word` (``thresholds``: :func:`fconv_word_thr`): a switch over
    ``nvec`` = 1..8, each case a loop over :func:`fword_pix` pixels x ``nvec`` ``<8 x float>``
    accumulators."""
    def codegen(context, builder, signature, args):
        sa = signature.args
        xp = _data(context, builder, sa[0], args[0])
        bp = _data(context, builder, sa[1], args[1])
        wp = _data(context, builder, sa[6], args[6])
        par = [_data(context, builder, sa[i], args[i]) for i in (9, 10, 11)]
        op = _data(context, builder, sa[14], args[14])
        (boff_, rowstep_, kh_, seg_, woff_, bstep_, poff_, nvec_, ooff_, ostride_, count_,
         wm_) = _ints(context, builder, sa, args, (2, 3, 4, 5, 7, 8, 12, 13, 15, 16, 17, 18))
        zero = ir.Constant(_V8F32, [0.0] * 8)
        merge = builder.append_basic_block("fw_merge")
        blocks = [builder.append_basic_block(f"fw_case{v}") for v in range(1, 9)]
        sw = builder.switch(nvec_, blocks[-1])
        for v, bb in enumerate(blocks, start=1):
            sw.add_case(ir.Constant(_I64, v), bb)
        for nv, bb in enumerate(blocks, start=1):
            builder.position_at_end(bb)
            npix = fword_pix(nv)
            words = [None] * npix
            for vids in fword_passes(nv):
                # vector h (channels 8h..8h+7 of the word) sits in block h // 2, half h % 2
                vofs = [builder.add(builder.mul(bstep_, ir.Constant(_I64, h // 2)),
                                    ir.Constant(_I64, 8 * (h % 2))) for h in vids]
                vals = _float_conv(builder, xp, wp, bp, boff_, rowstep_, kh_, seg_, woff_,
                                   vofs, npix, None if thresholds else par, poff_, vids)
                # the bit is "not v >= 0", or (thresholds) "not acc >= thr": NaN gives 1
                limit = ([_vload(builder, par[0], builder.add(poff_, ir.Constant(_I64, 8 * h)),
                                 _V8F32, 4) for h in vids] if thresholds else [zero] * nv)
                for p, row in enumerate(vals):
                    bits = _mask_word(builder, [builder.fcmp_unordered("<", v, limit[i])
                                                for i, v in enumerate(row)])
                    if vids[0]:  # a later pass: its vectors' bits further up the word
                        bits = builder.or_(words[p], builder.shl(
                            bits, ir.Constant(_I64, 8 * vids[0])))
                    words[p] = bits
            for p, word in enumerate(words):
                pp = ir.Constant(_I64, p)
                with builder.if_then(builder.icmp_signed("<", pp, count_), likely=True):
                    dst = builder.gep(op, [builder.add(ooff_, builder.mul(pp, ostride_))])
                    builder.store(builder.and_(word, wm_), dst)
            builder.branch(merge)
        builder.position_at_end(merge)
        return context.get_dummy_value()

    return codegen


def _fconv_word(thresholds: bool):
    """The intrinsic :func:`fconv_word` (``thresholds``: :func:`fconv_word_thr`)."""
    @intrinsic
    def fconv_word(typingctx, x, bases, boff, rowstep, kh, seg, w, woff, bstep, bias, alpha,  # noqa: ARG001
                   beta, poff, nvec, out, ooff, ostride, count, wm):
        ints = (boff, rowstep, kh, seg, woff, bstep, poff, nvec, ooff, ostride, count, wm)
        if not (_fconv_typed(x, bases, w, bias, alpha, beta, ints)
                and _is_vec(out, types.uint64)):
            return None
        sig = types.none(x, bases, boff, rowstep, kh, seg, w, woff, bstep, bias, alpha, beta,
                         poff, nvec, out, ooff, ostride, count, wm)
        return sig, _fconv_word_codegen(thresholds)

    return fconv_word


fconv_word = _fconv_word(thresholds=False)
fconv_word.__doc__ = """Sign bits of a float conv for :func:`fword_pix` (``nvec``) pixels x
the first ``8*nvec`` channels of one 64-channel output word (``nvec`` 1..8).

Pixel ``p`` reads as in :func:`fconv_store4` (``bases[boff+p]``); channel ``16b + q`` of the
word has its weights in block ``b`` at ``w[woff + b*bstep + 16*k + q]`` and its epilogue at
``bias[poff + 16b + q]`` (likewise alpha, beta). The word of pixel ``p`` (``p < count``),
ANDed with ``wm`` (the channels that exist), is stored to ``out[ooff + p*ostride]``: stores
here, as a tuple indexed by a loop variable would branch per pixel. The bit of channel c is
``not v >= 0`` (the sign of PyTorch's epilogue, NaN giving 1).
"""
fconv_word_thr = _fconv_word(thresholds=True)
fconv_word_thr.__doc__ = """:func:`fconv_word` with the epilogue folded into per-channel float
thresholds (:func:`~bnnprune.engine.kernels.fconv.sign_thresholds`), passed in place of
``bias``: the bit of channel c is ``not acc >= thr[poff + c]`` (NaN giving 1), one compare
per vector instead of PyTorch's three operations and the compare; ``alpha`` and ``beta``
are not read."""
