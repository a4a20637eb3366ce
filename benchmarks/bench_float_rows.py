"""Float-mode binary conv with and without its output in cache, by output channel count.

    .venv/bin/python benchmarks/bench_float_rows.py [--channels 96,104,112,120,128]
        [--repeats 11] [--quick]

Times ``kernels.bconv_call`` in float mode (a 1x1 conv, 120 input channels, 16x16 maps, batch
64: NIN's pruned ``bconv6``) on one thread, hot (the call repeated) and cold (a 40 MB write
between calls evicts the output, as the other ops of a run do), and prints both with the cold
time per output channel. Counts that are not whole 16-channel blocks go through the kernel's
row buffer (``docs/engine.md``); they should cost per channel what whole blocks cost.
``--quick`` checks the script at a tiny size: its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numba
import numpy as np

from bnnprune.engine import kernels as K
from bnnprune.engine.pack import tail_mask


def median_ms(fn: Callable[[], None], repeats: int, evict: np.ndarray | None) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if evict is not None:
            evict += 1.0
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", default="96,104,112,120,128")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--quick", action="store_true", help="batch 2, 2 repeats")
    args = ap.parse_args()
    numba.set_num_threads(1)
    batch, repeats = (2, 2) if args.quick else (64, args.repeats)
    evict = np.zeros((1 if args.quick else 10_000_000), np.float32)  # 40 MB
    rng = np.random.default_rng(0)
    cin, hw = 120, 16
    x = rng.integers(0, 2**63, (batch, hw, hw, K.words(cin))).astype(np.uint64) & tail_mask(cin)
    for co in (int(c) for c in args.channels.split(",")):
        w = rng.integers(0, 2**63, (co, 1, K.words(cin))).astype(np.uint64) & tail_mask(cin)
        affine = tuple(rng.standard_normal(co).astype(np.float32) for _ in range(4))
        out = np.empty((batch, hw, hw, co), np.float32)
        init = np.zeros(-(-co // K.BLOCK_CH) * K.BLOCK_CH, np.int64)
        call = K.bconv_call(x, K.block_weights(w), co, (1, 1), cin, out, init, affine=affine,
                            threads=1)
        hot, cold = median_ms(call, repeats, None), median_ms(call, repeats, evict)
        print(f"{co:>4} channels: hot {hot:.3f} ms, cold {cold:.3f} ms "
              f"({cold / co * 1e3:.1f} us per channel)")


if __name__ == "__main__":
    main()
