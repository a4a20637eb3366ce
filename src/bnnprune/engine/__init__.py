"""Bit-packed XNOR-popcount inference engine: compile, run, save/load ``.bnn``, benchmark.

Loading and running a ``.bnn`` file (:func:`load`, :class:`Program`) needs numpy and numba
only, not torch: :func:`compile_model`, :func:`as_program` and the benchmark helpers, which
need torch, are imported on first use (PEP 562), so ``bnnprune.engine.load(path)(x)`` runs
where torch is not installed (e.g. the aarch64 check under qemu, tests/engine/test_aarch64.py).

The output targets (C, ONNX, QONNX, FPGA estimate) live in :mod:`bnnprune.deploy`."""

from __future__ import annotations

from importlib import import_module

from bnnprune.engine.errors import BnnFormatError, EngineError
from bnnprune.engine.fileformat import load, save
from bnnprune.engine.pack import pack_signs, unpack_signs
from bnnprune.engine.program import Program

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from bnnprune.engine.bench import benchmark, format_benchmark, machine_info
    from bnnprune.engine.compile import as_program, compile_model

# the names whose modules import torch -> their home module
_TORCH_API = {
    "as_program": "bnnprune.engine.compile",
    "benchmark": "bnnprune.engine.bench",
    "compile_model": "bnnprune.engine.compile",
    "format_benchmark": "bnnprune.engine.bench",
    "machine_info": "bnnprune.engine.bench",
}

__all__ = [
    "BnnFormatError",
    "EngineError",
    "Program",
    "as_program",
    "benchmark",
    "compile_model",
    "format_benchmark",
    "load",
    "machine_info",
    "pack_signs",
    "save",
    "unpack_signs",
]


def __getattr__(name: str) -> Any:
    """Import a torch-dependent public name from its home module on first use."""
    if name not in _TORCH_API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_TORCH_API[name]), name)
    globals()[name] = value
    return value
