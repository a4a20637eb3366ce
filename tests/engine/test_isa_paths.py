"""Every x86 instruction-set path the machine can execute, exact: the kernel and whole-model
tests of the engine rerun in a fresh process with numba compiling for an older CPU than the
host, so a CI machine with AVX-512 VPOPCNTDQ still checks the AVX2 path (carry-save and byte
counts) and the AVX-512BW path without VPOPCNTDQ that most users' CPUs take. A path the host
cannot execute is skipped, naming the features it lacks; aarch64 runs under qemu in
``test_aarch64.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnnprune.engine.kernels.intrinsics import _host_features, target_arch

ROOT = Path(__file__).resolve().parents[2]
_BASE = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sse,+sse2,"
         "+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")
# instruction set (as intrinsics.instruction_set names it) -> numba's CPU name and features
PATHS = {
    "avx2": ("haswell", _BASE),
    "avx512bw": ("skylake-avx512", _BASE + ",+avx512bw,+avx512cd,+avx512dq,+avx512f,+avx512vl"),
}
TESTS = ("tests/engine/test_kernels.py", "tests/engine/test_chain.py")


@pytest.mark.slow
@pytest.mark.parametrize("isa", sorted(PATHS))
def test_the_engine_is_exact_compiled_for_an_older_instruction_set(isa: str) -> None:
    cpu, features = PATHS[isa]
    lacks = sorted({f[1:] for f in features.split(",")} - _host_features())
    if target_arch() != "x86_64" or lacks:
        pytest.skip(f"this CPU cannot run the {isa} path (lacks {', '.join(lacks) or 'x86-64'})")
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "PYTHONPATH": str(ROOT / "src")}
    env.pop("BNNPRUNE_COUNTING", None)
    probe = subprocess.run(
        [sys.executable, "-c", "from bnnprune.engine.kernels.intrinsics import instruction_set, "
         "counting_scheme; print(instruction_set(), counting_scheme())"],
        env=env, capture_output=True, text=True, timeout=300, check=True)
    assert probe.stdout.split() == [isa, "csa"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider",
                          *TESTS], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    # 0: every test ran and passed (no tests collected would be 5)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
