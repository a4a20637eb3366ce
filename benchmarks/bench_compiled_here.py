"""Kernels compiled in the timing process against the same kernels loaded from numba's cache.

    .venv/bin/python benchmarks/bench_compiled_here.py [--processes 3] [--repeats 40]

Runs ``--processes`` fresh Python processes one after another on one empty numba cache
folder: the first compiles the engine's kernels, the others load them from that cache. Each
times every op of NIN (width 1, random BN statistics) pruned to 0.40 of its BOPs (uniform
plan, default rounding) inside whole runs at batch 1 on one thread and prints the binary and
full-precision convs' medians, its ``kernels_compiled_here`` and the CPU flags. Run it on a
quiet machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys
sys.path.insert(0, {bench!r})
import numba, torch
numba.set_num_threads(1); torch.set_num_threads(1)
from bnnprune import engine
from bnnprune.engine.bench import op_times
from bnnprune.engine.latency import kernels_compiled_here
from bnnprune.machine import cpu_flags
from bnnprune.models import build_model
from bnnprune.prune.policies import AUTO
from bench_engine import input_shape, pruned_copy, randomize_bn
torch.manual_seed(0)
model = randomize_bn(build_model("nin"))
p = engine.compile_model(pruned_copy(model, input_shape("nin"), 0.6, AUTO), input_shape("nin"))
rows = op_times(p, 1, {repeats})
print("compiled here:", kernels_compiled_here(), "| cpu flags:", " ".join(cpu_flags()))
print("  " + "  ".join(f"{{r['op']}} {{r['median_s'] * 1e3:.3f}}" for r in rows
                       if r["kind"] in ("bconv", "fconv")) + " (ms)")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    code = CHILD.format(bench=str(Path(__file__).parent), repeats=args.repeats)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for i in range(args.processes):
            print(f"process {i + 1}:", flush=True)
            subprocess.run([sys.executable, "-c", code], env=env, check=True)


if __name__ == "__main__":
    main()
