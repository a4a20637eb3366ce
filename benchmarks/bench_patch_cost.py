"""Measure ``PATCH_WORD_COST`` and ``PATCH_RUN_COST``: building one tap word of a dense bit patch
matrix, in units of one XNOR-popcount word of one 16-channel block of the direct GEMM (both per
output pixel), as ``PATCH_WORD_COST + PATCH_RUN_COST / run`` for builder runs of ``run``
output positions.

    .venv/bin/python benchmarks/bench_patch_cost.py [--threads 1] [--batch 64] [--repeats 15]
        [--quick]

For each layer shape below (the 3x3 and 5x5 binary convs of ``small`` and ``nin``, unpruned and
pruned) it times, on random bits and interleaved, the patch matrix build alone and the direct
XNOR conv (padding included), and prints both per pixel: ns per tap word built, ns per
block-word of the direct GEMM, their ratio, and the time of the whole dense conv (build + GEMM)
over the direct one (padding + GEMM) next to what :func:`use_patch_matrix` chooses. The two
constants in ``kernels/base.py`` are the least-squares fit of that ratio against ``1 / run``
(:func:`~bnnprune.engine.kernels.patch_run`).
``--quick`` checks the script at a tiny batch: its numbers mean nothing.
"""

from __future__ import annotations

import argparse

import numba
import numpy as np

from bnnprune.engine import kernels as K
from bnnprune.engine.pack import tail_mask
from bnnprune.engine.timing import interleaved

# (H = W, K, Cin, Cout) of KxK, stride 1, "same" padding binary convs: small's (28, 14, 7) and
# nin's (16: 5x5, 8: 3x3), unpruned and pruned
SHAPES = ((28, 3, 32, 64), (28, 3, 21, 48), (14, 3, 64, 128), (14, 3, 48, 88), (7, 3, 128, 128),
          (7, 3, 88, 88), (16, 5, 96, 192), (16, 5, 61, 120), (8, 3, 192, 192), (8, 3, 120, 120))


def _bits(rng: np.random.Generator, shape: tuple[int, ...], cin: int) -> np.ndarray:
    raw = rng.integers(0, 2**63, size=shape, dtype=np.int64).view(np.uint64)
    return raw & np.tile(tail_mask(cin), shape[-1] // K.words(cin))


def measure(hw: int, k: int, cin: int, cout: int, batch: int, repeats: int
            ) -> dict[str, float]:
    """Best times of the patch build and of the direct conv for one layer shape."""
    rng = np.random.default_rng(0)
    wd = K.words(cin)
    p, taps = k // 2, k * k
    x = _bits(rng, (batch, hw, hw, wd), cin)
    w = _bits(rng, (cout, k, k * wd), cin)
    pad = np.zeros(wd, np.uint64)
    cols = np.zeros(K.patch_planes_shape(batch, hw + 2 * p, hw + 2 * p, cin, (k, k), (1, 1)),
                    np.uint64)
    xp = np.zeros((batch, hw + 2 * p, hw + 2 * p, wd), np.uint64)
    K.pad_fill(xp, (p, p), pad)
    padcall = K.pad_call(x, (p, p), xp)
    patch = K.im2col_bits_call(xp, cin, (k, k), (1, 1), cols)
    thr = np.full(cout, taps * cin // 2, np.int32)
    init, xmask = K.threshold_init(thr, np.zeros(cout, np.uint8))
    out = np.empty((batch, hw, hw, K.words(cout)), np.uint64)
    conv = K.bconv_call(xp, K.block_weights(w), cout, (1, 1), taps * cin, out, init,
                        xmask=xmask)
    dconv = K.bconv_patch_call(cols, K.block_weights(K.dense_bits(w, cin)), cout, taps * cin,
                               out, init, xmask=xmask)

    def build() -> None:  # the padding copy included, as the constant is defined
        padcall()
        patch()

    def direct() -> None:
        padcall()
        conv()

    def dense() -> None:
        build()
        dconv()

    s_build, s_direct, s_dense = interleaved([build, direct, dense], repeats)
    pix = batch * hw * hw
    blocks = -(-cout // K.BLOCK_CH)
    ns_tap = min(s_build) / (pix * taps * wd) * 1e9
    ns_block = min(s_direct) / (pix * taps * wd * blocks) * 1e9
    run = K.patch_run((hw, hw), k, (1, 1))
    return {"ns_per_tap_word": ns_tap, "ns_per_block_word": ns_block, "ratio": ns_tap / ns_block,
            "run": run, "dense_over_direct": min(s_dense) / min(s_direct),
            "use_patch_matrix": K.use_patch_matrix(k, k, cin, cout, run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="batch 2, 2 repeats")
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    batch, repeats = (2, 2) if args.quick else (args.batch, args.repeats)
    ratios, inv_runs = [], []
    for hw, k, cin, cout in SHAPES:
        r = measure(hw, k, cin, cout, batch, repeats)
        ratios.append(r["ratio"])
        inv_runs.append(1 / r["run"])
        print(f"{hw:>2}x{hw:<2} {k}x{k} {cin:>3}->{cout:<3} run {r['run']:>4}: build "
              f"{r['ns_per_tap_word']:.3f} ns/tap word, direct {r['ns_per_block_word']:.3f} "
              f"ns/block-word, ratio {r['ratio']:.3f}; dense/direct time "
              f"{r['dense_over_direct']:.3f} (chosen: "
              f"{'dense' if r['use_patch_matrix'] else 'direct'})")
    slope, icpt = np.polyfit(inv_runs, ratios, 1)
    print(f"fit ratio = {icpt:.3f} + {slope:.1f} / run (in use: PATCH_WORD_COST = "
          f"{K.PATCH_WORD_COST}, PATCH_RUN_COST = {K.PATCH_RUN_COST})")


if __name__ == "__main__":
    main()
