"""What machine a measurement ran on: the CPU's name and the library/thread settings, read
in one place for every benchmark, cost model and result record."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_name", "machine_info"]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, core and thread counts, and library versions."""
    import numba
    import numpy as np
    import torch

    return {"cpu": cpu_name(), "logical_cores": os.cpu_count(),
            "openblas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
            "numba_threads": numba.get_num_threads(),
            "torch_threads": torch.get_num_threads(),
            "numba": numba.__version__,
            "numpy": np.__version__, "torch": torch.__version__,
            "python": platform.python_version()}
