"""What machine a measurement ran on: the CPU's name and the library/thread settings, read
in one place for every benchmark, cost model and result record."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "cpu_name", "machine_info"]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the vector and bit-count flags that decide the engine's kernels (x86 and Arm names)
_SIMD_FLAG = re.compile(r"^(avx.*|sse4.*|popcnt|bmi\d|fma|f16c|asimd.*|neon|sve.*)$")


def cpu_flags() -> list[str]:
    """The CPU's vector and bit-count flags from /proc/cpuinfo (``flags`` on x86,
    ``Features`` on Arm), sorted; empty where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if key in ("flags", "features"):
                return sorted(f for f in line.split(":", 1)[1].split() if _SIMD_FLAG.match(f))
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """CPU model and vector flags, core and thread counts, and library versions."""
    import numba
    import numpy as np
    import torch

    return {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(),
            "openblas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
            "numba": numba.__version__,
            "numpy": np.__version__, "torch": torch.__version__,
            "python": platform.python_version()}
