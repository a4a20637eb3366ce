"""The XNOR-popcount GEMM's innermost loops as compiled for a CPU, without running them.

    .venv/bin/python benchmarks/gemm_loops.py [--cpu icelake-server] [--features +avx512f,...]
        [--scheme popcount|csa]

Compiles one variant of the GEMM row function (``bconv._bconv_tiles`` or
``_bconv_tiles_csa``) for the named CPU (numba's ``NUMBA_CPU_NAME`` and
``NUMBA_CPU_FEATURES``; by default an AVX-512 VPOPCNTDQ machine) and prints each innermost
loop that counts bits: its instruction count and opcode mix, and a digest of all of them.
Run at two commits, equal digests mean the same inner loops: how a change to the AVX2 path
is checked not to touch the VPOPCNTQ path on a machine that cannot run it. Instruction
mixes, not timings.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import subprocess
import sys
import tempfile

AVX512_VPOPCNT = ("+64bit,+avx,+avx2,+avx512bw,+avx512cd,+avx512dq,+avx512f,+avx512vl,"
                  "+avx512vpopcntdq,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,"
                  "+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")
COUNTING = re.compile(r"popcnt|vpshufb|vpternlog")


def inner_loops(asm: str) -> list[collections.Counter]:
    """Opcode counts of every innermost loop (a backward jump enclosing no other) that
    counts bits."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines)
              if (m := re.match(r"^(\.?\w+):", line.strip()))}
    loops = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             if (m := re.match(r"\s+j\w+\s+(\.\w+)", line)) and labels.get(m.group(1), i) < i]
    out = []
    for s, e in loops:
        if any(o != (s, e) and s <= o[0] and o[1] <= e for o in loops):
            continue
        ops = [x.split()[0] for x in lines[s:e + 1]
               if x.startswith("\t") and not x.strip().startswith(".")]
        if sum(bool(COUNTING.search(o)) for o in ops) >= 4:
            out.append(collections.Counter(ops))
    return out


def compile_asm(scheme: str) -> str:
    """The row function's assembly for a small 3x3 conv (numba's CPU from the environment)."""
    import numba
    import numpy as np

    from bnnprune.engine import kernels as K
    from bnnprune.engine.kernels import bconv

    co, wd = 192, 3
    init, xmask = K.threshold_init(np.zeros(co, np.int32), np.zeros(co, np.uint8))
    conv = (np.zeros((1, 10, 10, wd), np.uint64),
            K.block_weights(np.zeros((co, 3, 3 * wd), np.uint64)), co, (1, 1), 9 * 64 * wd,
            np.empty((1, 8, 8, wd), np.uint64), init)
    try:
        call = K.bconv_call(*conv, xmask=xmask, threads=1, scheme=scheme)
    except TypeError:  # a commit from before the counting schemes: per-word popcount only
        call = K.bconv_call(*conv, xmask=xmask, threads=1)
    fn = bconv._bconv_tiles_csa if scheme == "csa" else bconv._bconv_tiles
    args = call.args[2:] + (0, 1)
    sig = tuple(numba.typeof(a) for a in args)
    fn.compile(sig)
    return fn.inspect_asm(sig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", default="icelake-server")
    ap.add_argument("--features", default=AVX512_VPOPCNT)
    ap.add_argument("--scheme", choices=("popcount", "csa"), default="popcount")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.child:  # numba reads its target CPU at import: compile in a fresh process
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CPU_NAME": args.cpu, "NUMBA_CPU_FEATURES": args.features,
                   "NUMBA_CACHE_DIR": cache}
            sys.exit(subprocess.call([sys.executable, __file__, "--child", "--scheme",
                                      args.scheme], env=env))
    loops = inner_loops(compile_asm(args.scheme))
    mixes = sorted(tuple(sorted(c.items())) for c in loops)
    digest = hashlib.sha256(repr(mixes).encode()).hexdigest()[:16]
    print(f"{args.scheme} GEMM for {os.environ['NUMBA_CPU_NAME']}: {len(loops)} counting "
          f"loops, digest {digest}")
    for c in loops:
        print(f"  {sum(c.values()):>4} instructions: "
              + ", ".join(f"{op} {n}" for op, n in c.most_common(8)))


if __name__ == "__main__":
    main()
