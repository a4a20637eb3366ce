"""What every kernel family shares: word counts, precondition checks, the serial/parallel split.

Every row-parallel kernel is one *row function* ``f(*args, r_lo, r_hi)`` (njit) that does
rows ``r_lo .. r_hi`` of its output. :func:`twins` compiles two drivers from it: ``par``
(``parallel=True``, a ``prange`` over chunks of rows) and ``ser`` (one call on the calling
thread, no thread-pool round trip). :func:`use_parallel` picks one from the amount of work, so
small layers at batch 1 do not pay a parallel region.

numba's on-disk cache drops a compiled function only when its own source file changes, but the
engine's functions inline the LLVM IR of :mod:`.intrinsics` and the helpers here: importing
this module stamps every cached function of ``bnnprune.engine`` with a hash of all kernel
sources too (:func:`_stamp_engine_caches`), so editing any of them recompiles them all. The
IR also follows ``BNNPRUNE_BYTE_COUNTS`` (:data:`BYTE_ENV`), which numba's cache key does not
see: when it is set, the engine's cache lives in a subfolder of its own per value.
"""

from __future__ import annotations

import hashlib
import math
import os
import types as pytypes
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from bnnprune.engine.errors import EngineError

_KERNELS = Path(__file__).resolve().parent
# forces the GEMM's byte counts (:func:`~.intrinsics.byte_min_words`): "off", or their
# minimum window in words; read at import
BYTE_ENV = "BNNPRUNE_BYTE_COUNTS"


def forced_byte_counts() -> str:
    """:data:`BYTE_ENV` as set, stripped and in lower case ("" when unset): the one reading of
    it, for the byte-count choice and for the cache folder it selects."""
    return os.environ.get(BYTE_ENV, "").strip().lower()

KERNELS_HASH = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(_KERNELS.glob("*.py")))
                              ).hexdigest()


def _stamp_engine_caches() -> None:
    """Put :data:`KERNELS_HASH` into the source stamp of every numba-cached function defined
    under ``bnnprune/engine`` (a locator class ahead of each of numba's file-backed ones),
    and with :data:`BYTE_ENV` set keep its cache in a subfolder named after the value.
    Without numba's locator classes (other versions) caching stays as numba does it."""
    try:
        from numba.core import caching
        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
        names = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
        bases = [getattr(caching, n, None) or getattr(caching, "_" + n) for n in names]
    except (ImportError, AttributeError):
        return
    engine = _KERNELS.parent

    def stamped(base: type) -> type:
        class Locator(base):  # type: ignore[misc, valid-type]
            @classmethod
            def from_function(cls, py_func, py_file):  # noqa: ANN001, ANN206
                try:
                    inside = Path(py_file).resolve().is_relative_to(engine)
                except (OSError, TypeError, ValueError):
                    inside = False
                return super().from_function(py_func, py_file) if inside else None

            def get_source_stamp(self):  # noqa: ANN202
                return super().get_source_stamp(), KERNELS_HASH

            def get_cache_path(self):  # noqa: ANN202
                path = super().get_cache_path()
                forced = forced_byte_counts()
                if forced.isalnum():
                    path = os.path.join(path, f"byte_counts_{forced}")
                return path

        Locator.__name__ = Locator.__qualname__ = f"BnnpruneEngine{base.__name__.lstrip('_')}"
        return Locator

    if not any(getattr(c, "__name__", "").startswith("BnnpruneEngine")
               for c in impl._locator_classes):
        impl._locator_classes = [stamped(b) for b in bases] + list(impl._locator_classes)


_stamp_engine_caches()

BLOCK_CH = 16  # output channels per register block (2 x <8 x i64> or 2 x <8 x float>)
# output channels per vector: the step of every kernel's work in the output channels (a half
# block; the carry-save GEMM's unit, :data:`~.intrinsics.CSA_LANES`), as conv_work counts it
UNIT_CH = BLOCK_CH // 2
TILE_PIX = 32  # output pixels that reuse one weight block while it sits in L1
FPIX = 4  # pixels per register block of the float conv

# Work (roughly: nanoseconds of one core) below which a kernel runs on the calling thread.
# A parallel region costs a thread hand-off and a barrier (~5 us on an idle machine, far
# more when the cores are shared), which the smallest layers at batch 1 cannot win back.
PAR_MIN_WORK = 20_000

# Cost of building one tap word of a dense bit patch matrix (its padding copy included), in
# units of one XNOR-popcount word of one 16-channel block of the direct GEMM (both per output
# pixel): ``PATCH_WORD_COST + PATCH_RUN_COST / run``, ``run`` the output positions per builder
# run (:func:`patch_run`; each run pays a fixed setup, so small maps cost more per word). A
# patch matrix pays off only when the GEMM words it saves over all output blocks cost more.
# Fitted by ``benchmarks/bench_patch_cost.py --threads 1`` (batch 64, the 3x3 and 5x5 binary
# convs of ``small`` and ``nin``, unpruned and pruned, AVX-512 x86) gave 0.24 + 29 / run, and
# every layer's choice agreed with its measured dense/direct time. The builder has since got
# faster (registers, masked tails; fit 0.16-0.21 + 16-20 / run), but with those constants two
# layers near break-even (nin's pruned 5x5 and 3x3) pick the patch matrix and measure 2-4%
# slower than direct: the dense GEMM reads its words a plane apart, which the model does not
# price. The older constants still choose every layer right, so they stay.
PATCH_WORD_COST = 0.24
PATCH_RUN_COST = 29.0

EMPTY_U64 = np.zeros((1, 1), np.uint64)
EMPTY_F32 = np.zeros((1, 1), np.float32)
F1 = np.zeros(1, np.float32)
U1 = np.zeros(1, np.uint64)


ALIGN = 64  # bytes: one cache line, one <8 x i64> vector


def aligned_empty(shape: tuple[int, ...], dtype: object) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an :data:`ALIGN`-byte
    boundary. numpy aligns to 16 bytes: its arrays start 0, 16, 32 or 48 bytes into a cache
    line, which varies from run to run, and from the last three every 64-byte weight vector
    the GEMM loads straddles two lines."""
    dt = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dt.itemsize
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes].view(dt).reshape(shape)


def aligned_zeros(shape: tuple[int, ...], dtype: object) -> np.ndarray:
    """:func:`aligned_empty`, zeroed."""
    out = aligned_empty(shape, dtype)
    out.fill(0)
    return out


def aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` starting on an :data:`ALIGN`-byte boundary."""
    out = aligned_empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def words(channels: int) -> int:
    """Number of 64-bit words holding ``channels`` bits."""
    return (int(channels) + 63) // 64


def need(cond: bool, what: str) -> None:
    """Raise :class:`EngineError` unless a kernel precondition holds."""
    if not cond:
        raise EngineError(f"kernel precondition failed: {what}")


def noop() -> None:
    """The bound call of a kernel with nothing to do (an empty batch)."""
    return None


def block_channels(v: np.ndarray, fill: float) -> np.ndarray:
    """A per-channel float32 vector padded to whole 16-channel blocks."""
    co = int(v.shape[0])
    out = np.full(-(-co // BLOCK_CH) * BLOCK_CH, fill, np.float32)
    out[:co] = v
    return out


@njit(inline="always")
def pixel_start(t0, ho, wo):
    """The image, output row and column of output pixel ``t0`` (N, Ho, Wo order): the
    cursor :func:`pixel_bases` starts from and advances."""
    hw = ho * wo
    n = t0 // hw
    r = t0 - n * hw
    oy = r // wo
    return n, oy, r - oy * wo


@njit(inline="always")
def pixel_bases(bases, cur, npx, ho, wo, hp, wp, sh, sw, c):
    """Flat offsets in a padded (N, Hp, Wp, C) input of the windows of the ``npx`` output
    pixels from the cursor ``cur`` = (image, row, column) of :func:`pixel_start` into
    ``bases``; the rest of ``bases`` repeats the last. Returns the cursor of the next pixel,
    so consecutive tiles pay no division.

    One run per output row (no per-pixel branch): the tile prologue of the conv kernels.
    """
    n, oy, ox = cur
    step = sw * c
    i = 0
    while i < npx:
        run = min(wo - ox, npx - i)
        b = ((n * hp + oy * sh) * wp + ox * sw) * c
        # unsigned indices: a signed one makes numba wrap negatives, which LLVM vectorizes
        # into a scatter (slow; it was most of a 1x1 conv's time)
        for j in range(np.uint64(i), np.uint64(i + run)):
            bases[j] = b
            b += step
        i += run
        ox += run
        if ox == wo:
            ox = 0
            oy += 1
            if oy == ho:
                oy = 0
                n += 1
    last = bases[npx - 1]
    for j in range(np.uint64(npx), np.uint64(bases.shape[0])):
        bases[j] = last
    return n, oy, ox


def patch_run(out_hw: tuple[int, int], kw: int, stride: tuple[int, int]) -> int:
    """Output positions per run of the (serial) patch builder: at stride 1 a whole image, its
    rows at the padded width's pitch (``kw - 1`` wrapped positions per row); otherwise one
    output row."""
    ho, wo = (int(v) for v in out_hw)
    if tuple(stride) == (1, 1):
        return (ho - 1) * (wo + int(kw) - 1) + wo
    return wo


def _bconv_paths(kh: int, kw: int, cin: int, blocks: float, run: int) -> tuple[float, float]:
    """Work per output pixel of a binary conv with ``blocks`` output blocks, run direct
    (``kh*kw*words(cin)`` words per block) and on a dense patch matrix (``words(kh*kw*cin)``
    words per block, plus the build: ``PATCH_WORD_COST + PATCH_RUN_COST / run`` per tap
    word)."""
    taps = kh * kw * words(cin)
    build = PATCH_WORD_COST + PATCH_RUN_COST / max(int(run), 1)
    return taps * blocks, words(kh * kw * cin) * blocks + build * taps


def use_patch_matrix(kh: int, kw: int, cin: int, cout: int, run: int) -> bool:
    """Whether a ``kh x kw`` binary conv should run on a dense bit patch matrix: when the GEMM
    words it saves over all (whole) 16-channel output blocks cost more than building it
    (``run``: :func:`patch_run` of the layer)."""
    direct, dense = _bconv_paths(kh, kw, cin, -(-int(cout) // BLOCK_CH), run)
    return kh * kw > 1 and dense < direct


def conv_work(kind: str, kh: int, kw: int, cin: int, cout: int, run: int) -> float:
    """Work of one output pixel of a ``bconv`` or ``fconv`` op on the path the engine takes,
    counted in the units its kernels pay for: a binary conv pays XNOR-popcount words (per
    tap, or dense patch rows plus the cost of building them, ``run`` as in
    :func:`use_patch_matrix`) times 8-channel half blocks; a float conv pays taps x input
    channels x 8-channel vectors. Both counting schemes of the binary GEMM
    (:func:`~.intrinsics.counting_scheme`) step at the same counts: 64-bit input words and
    :data:`UNIT_CH`-channel output vectors (per-word popcount's half blocks, the carry-save
    passes' units).

    The two units are not comparable; what counts is where the work steps with the channel
    counts (the planner's ``round_to="auto"`` keeps only counts where it does).
    """
    halves = -(-int(cout) // UNIT_CH) / 2
    if kind == "fconv":
        return kh * kw * cin * halves
    direct, dense = _bconv_paths(kh, kw, cin, halves, run)
    return dense if use_patch_matrix(kh, kw, cin, cout, run) else direct


def use_parallel(work: float, threads: int | None) -> bool:
    """Whether a kernel with ``work`` (~ns on one core) should use the numba thread pool."""
    t = numba.get_num_threads() if threads is None else int(threads)
    return t > 1 and work >= PAR_MIN_WORK


def chunks(rows: int) -> int:
    """Chunks of rows for a parallel driver: a few per thread, for load balance."""
    return max(1, min(rows, 4 * numba.get_num_threads()))


def _par(nrows, nchunks, *args):
    for c in prange(nchunks):
        ROWS(*args, c * nrows // nchunks, (c + 1) * nrows // nchunks)  # noqa: F821


def _ser(nrows, nchunks, *args):  # noqa: ARG001
    ROWS(*args, 0, nrows)  # noqa: F821


def twins(rows: Callable) -> tuple[Callable, Callable]:
    """The ``(par, ser)`` drivers of the njit row function ``rows(*args, r_lo, r_hi)``.

    Both are called as ``driver(nrows, nchunks, *args)``; ``par`` gives chunk ``c`` the rows
    ``c*nrows//nchunks .. (c+1)*nrows//nchunks`` in a ``prange``, ``ser`` does all rows in one
    call. They are compiled from the two templates above with ``rows`` bound as the global
    ``ROWS``, named after ``rows`` and attributed to its source file, so numba's on-disk
    cache gives each its own entry and drops it when that file changes.
    """
    src = rows.py_func
    out = []
    for template, suffix, parallel in ((_par, "par", True), (_ser, "ser", False)):
        name = f"{src.__name__}_{suffix}"
        code = template.__code__.replace(co_filename=src.__code__.co_filename, co_name=name,
                                         co_firstlineno=src.__code__.co_firstlineno)
        glb = {"ROWS": rows, "prange": prange, "__name__": src.__module__}
        fn = pytypes.FunctionType(code, glb, name)
        fn.__module__ = src.__module__
        fn.__qualname__ = name
        out.append(njit(parallel=parallel, cache=True)(fn))
    return out[0], out[1]
