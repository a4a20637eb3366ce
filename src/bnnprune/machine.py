"""What machine a measurement ran on: the CPU's name and the library/thread settings, read
in one place for every benchmark, cost model and result record."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

__all__ = ["ISA_FLAGS", "cpu_flags", "cpu_name", "isa_flags", "isa_label", "machine_info"]

# the instruction-set extensions the packed engine's speed depends on: popcount (scalar,
# and per 64-bit lane with AVX-512 VPOPCNTDQ), 256/512-bit vectors, bit scatter, float FMA
ISA_FLAGS = ("popcnt", "avx2", "bmi2", "fma", "avx512f", "avx512_vpopcntdq")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _proc_flags() -> set[str] | None:
    """Every CPU flag /proc/cpuinfo lists (``flags`` on x86, ``Features`` on Arm); None
    where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("flags", "features"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def isa_flags() -> dict[str, bool]:
    """Which of :data:`ISA_FLAGS` the CPU has; empty where /proc/cpuinfo is not readable,
    so an unknown CPU never claims a flag."""
    have = _proc_flags()
    return {} if have is None else {f: f in have for f in ISA_FLAGS}


def isa_label(flags: dict[str, bool]) -> str:
    """``isa_flags()`` in words: ``avx2 popcnt ...; no avx512f, no avx512_vpopcntdq``."""
    if not flags:
        return "instruction-set flags unknown"
    have = [f for f, on in flags.items() if on]
    lack = [f"no {f}" for f, on in flags.items() if not on]
    return "; ".join(x for x in (" ".join(have), ", ".join(lack)) if x)


# the vector and bit-count flags that decide the engine's kernels (x86 and Arm names)
_SIMD_FLAG = re.compile(r"^(avx.*|sse4.*|popcnt|bmi\d|fma|f16c|asimd.*|neon|sve.*)$")


def cpu_flags() -> list[str]:
    """All of the CPU's vector and bit-count flags, sorted; empty where /proc/cpuinfo
    cannot be read."""
    return sorted(f for f in _proc_flags() or () if _SIMD_FLAG.match(f))


def machine_info() -> dict[str, Any]:
    """CPU model, instruction-set and vector flags, core and thread counts, and library
    versions."""
    import numba
    import numpy as np
    import torch

    return {"cpu": cpu_name(), "isa": isa_flags(), "cpu_flags": cpu_flags(),
            "logical_cores": os.cpu_count(),
            "openblas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
            "numba": numba.__version__,
            "numpy": np.__version__, "torch": torch.__version__,
            "python": platform.python_version()}
