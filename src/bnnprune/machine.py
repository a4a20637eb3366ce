"""What machine a measurement ran on: the CPU's name and the library/thread settings, read
in one place for every benchmark, cost model and result record."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["ISA_FLAGS", "cpu_name", "isa_flags", "isa_label", "machine_info"]

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


def isa_flags() -> dict[str, bool]:
    """Which of :data:`ISA_FLAGS` the CPU has, from /proc/cpuinfo's flags (Linux x86);
    empty where that is not readable, so an unknown CPU never claims a flag."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        if line.lower().startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return {f: f in have for f in ISA_FLAGS}
    return {}


def isa_label(flags: dict[str, bool]) -> str:
    """``isa_flags()`` in words: ``avx2 popcnt ...; no avx512f, no avx512_vpopcntdq``."""
    if not flags:
        return "instruction-set flags unknown"
    have = [f for f, on in flags.items() if on]
    lack = [f"no {f}" for f, on in flags.items() if not on]
    return "; ".join(x for x in (" ".join(have), ", ".join(lack)) if x)


def machine_info() -> dict[str, Any]:
    """CPU model and instruction-set flags, core and thread counts, and library versions."""
    import numba
    import numpy as np
    import torch

    return {"cpu": cpu_name(), "isa": isa_flags(), "logical_cores": os.cpu_count(),
            "openblas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
            "numba": numba.__version__,
            "numpy": np.__version__, "torch": torch.__version__,
            "python": platform.python_version()}
