"""Measure ``PATCH_WORD_COST``: building one tap word of a dense bit patch matrix, in units of
one XNOR-popcount word of one 16-channel block of the direct GEMM (both per output pixel).

    .venv/bin/python benchmarks/bench_patch_cost.py [--threads 1] [--batch 64] [--repeats 15]
        [--quick]

For each 3x3 layer shape below (those of ``small`` unpruned and at -50% BOPs) it times, on
random bits and interleaved, the patch matrix build alone and the direct XNOR conv (padding
included), and prints both per pixel: ns per tap word built, ns per block-word of the direct
GEMM, their ratio, and the time of the whole dense conv (build + GEMM) over the direct one
(padding + GEMM) next to what :func:`use_patch_matrix` chooses. The constant in
``kernels/base.py`` is the median of that ratio.
``--quick`` checks the script at a tiny batch: its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import statistics

import numba
import numpy as np

from bnnprune.engine import kernels as K
from bnnprune.engine.bench import _interleaved
from bnnprune.engine.pack import tail_mask

# (H = W, Cin, Cout) of 3x3, stride 1, pad 1 binary convs
SHAPES = ((28, 32, 64), (28, 23, 45), (14, 64, 128), (14, 45, 90), (7, 128, 128), (7, 90, 90))


def _bits(rng: np.random.Generator, shape: tuple[int, ...], cin: int) -> np.ndarray:
    raw = rng.integers(0, 2**63, size=shape, dtype=np.int64).view(np.uint64)
    return raw & np.tile(tail_mask(cin), shape[-1] // K.words(cin))


def measure(hw: int, cin: int, cout: int, batch: int, repeats: int) -> dict[str, float]:
    """Best times of the patch build and of the direct conv for one layer shape."""
    rng = np.random.default_rng(0)
    wd = K.words(cin)
    x = _bits(rng, (batch, hw, hw, wd), cin)
    w = _bits(rng, (cout, 3, 3 * wd), cin)
    pad = np.zeros(wd, np.uint64)
    cols = np.zeros(K.patch_planes_shape(batch, hw + 2, hw + 2, cin, (3, 3), (1, 1)), np.uint64)
    xp = np.zeros((batch, hw + 2, hw + 2, wd), np.uint64)
    K.pad_fill(xp, (1, 1), pad)
    padcall = K.pad_call(x, (1, 1), xp)
    patch = K.im2col_bits_call(xp, cin, (3, 3), (1, 1), cols)
    thr = np.full(cout, 9 * cin // 2, np.int32)
    init, xmask = K.threshold_init(thr, np.zeros(cout, np.uint8))
    out = np.empty((batch, hw, hw, K.words(cout)), np.uint64)
    conv = K.bconv_call(xp, K.block_weights(w), cout, (1, 1), 9 * cin, out, init, xmask=xmask)

    dconv = K.bconv_patch_call(cols, K.block_weights(K.dense_bits(w, cin)), cout, 9 * cin, out,
                               init, xmask=xmask)

    def build() -> None:  # the padding copy included, as the constant is defined
        padcall()
        patch()

    def direct() -> None:
        padcall()
        conv()

    def dense() -> None:
        build()
        dconv()

    s_build, s_direct, s_dense = _interleaved([build, direct, dense], repeats)
    pix = batch * hw * hw
    blocks = -(-cout // K.BLOCK_CH)
    ns_tap = min(s_build) / (pix * 9 * wd) * 1e9
    ns_block = min(s_direct) / (pix * 9 * wd * blocks) * 1e9
    return {"ns_per_tap_word": ns_tap, "ns_per_block_word": ns_block, "ratio": ns_tap / ns_block,
            "dense_over_direct": min(s_dense) / min(s_direct),
            "use_patch_matrix": K.use_patch_matrix(3, 3, cin, cout)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="batch 2, 2 repeats")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    batch, repeats = (2, 2) if args.quick else (args.batch, args.repeats)
    ratios = []
    for hw, cin, cout in SHAPES:
        r = measure(hw, cin, cout, batch, repeats)
        ratios.append(r["ratio"])
        print(f"{hw:>2}x{hw:<2} {cin:>3}->{cout:<3} build {r['ns_per_tap_word']:.3f} ns/tap word,"
              f" direct {r['ns_per_block_word']:.3f} ns/block-word, ratio {r['ratio']:.3f}; "
              f"dense/direct time {r['dense_over_direct']:.3f} (chosen: "
              f"{'dense' if r['use_patch_matrix'] else 'direct'})")
    print(f"median ratio (PATCH_WORD_COST): {statistics.median(ratios):.3f} "
          f"(in use: {K.PATCH_WORD_COST})")


if __name__ == "__main__":
    main()
