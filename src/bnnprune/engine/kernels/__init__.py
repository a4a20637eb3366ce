"""Numba kernels of the packed engine: XNOR-popcount convolution, bit pooling, float helpers.

Layout: activations are channels-last. Binary activations are packed per pixel into
``words(C)`` 64-bit words (bit ``j`` of word ``w`` is channel ``64*w + j``; bit 1 = -1,
bit 0 = +1; unused high bits of the last word are always 0). Kernels never check bounds
themselves: the ``*_call`` builders (and the ``run_*`` wrappers over them) check every shape
and index range first and raise :class:`EngineError`; they return a zero-argument callable,
so a validated call can be repeated on the same (preallocated) arrays without re-checking.

One module per kernel family: :mod:`.intrinsics` (the LLVM IR inner loops), :mod:`.bconv`
(XNOR-popcount GEMM), :mod:`.bitpatch` (dense bit patch matrix), :mod:`.fconv` (fused float
conv, im2col), :mod:`.pack` (sign packing), :mod:`.pool` (pooling), :mod:`.pad` (padding),
:mod:`.concat` (channel concatenation of bits), :mod:`.act` (float elementwise ops), :mod:`.chain`
(consecutive serial calls of a plan as one compiled call);
:mod:`.base` holds what they share, including :func:`~.base.twins`, which compiles the serial
and the ``prange`` driver of each row function, and :func:`use_parallel`, which picks one.
"""

from bnnprune.engine.kernels.act import add_call, affine_call, prelu_call
from bnnprune.engine.kernels.base import (
    BLOCK_CH,
    PAR_MIN_WORK,
    PATCH_RUN_COST,
    PATCH_WORD_COST,
    aligned,
    aligned_empty,
    aligned_zeros,
    block_channels,
    conv_work,
    patch_run,
    use_parallel,
    use_patch_matrix,
    words,
)
from bnnprune.engine.kernels.bconv import (
    bconv_call,
    bconv_patch_call,
    block_weights,
    run_bconv,
    threshold_init,
)
from bnnprune.engine.kernels.bitpatch import dense_bits, im2col_bits_call, patch_planes_shape
from bnnprune.engine.kernels.chain import Chain, chain_calls
from bnnprune.engine.kernels.concat import concat_bits_call
from bnnprune.engine.kernels.fconv import (
    block_float_weights,
    fconv_call,
    fconv_pack_call,
    run_im2col,
    sign_thresholds,
)
from bnnprune.engine.kernels.pack import affine_pack_call, run_affine_pack
from bnnprune.engine.kernels.pad import nchw_load_call, pad_call, pad_fill, run_pad_bits
from bnnprune.engine.kernels.pool import (
    adaptive_avgpool_call,
    pool_call,
    pool_out_size,
    run_adaptive_avgpool,
    run_avgpool,
    run_maxpool_bits,
    run_maxpool_float,
)

__all__ = [
    "BLOCK_CH",
    "Chain",
    "PAR_MIN_WORK",
    "PATCH_RUN_COST",
    "PATCH_WORD_COST",
    "adaptive_avgpool_call",
    "add_call",
    "affine_call",
    "aligned",
    "aligned_empty",
    "aligned_zeros",
    "affine_pack_call",
    "bconv_call",
    "bconv_patch_call",
    "chain_calls",
    "block_channels",
    "block_float_weights",
    "block_weights",
    "concat_bits_call",
    "conv_work",
    "dense_bits",
    "fconv_call",
    "fconv_pack_call",
    "im2col_bits_call",
    "nchw_load_call",
    "pad_call",
    "pad_fill",
    "patch_planes_shape",
    "patch_run",
    "pool_call",
    "pool_out_size",
    "prelu_call",
    "run_adaptive_avgpool",
    "run_affine_pack",
    "run_avgpool",
    "run_bconv",
    "run_im2col",
    "run_maxpool_bits",
    "run_maxpool_float",
    "run_pad_bits",
    "sign_thresholds",
    "threshold_init",
    "use_parallel",
    "use_patch_matrix",
    "words",
]
