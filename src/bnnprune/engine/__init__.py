"""Bit-packed XNOR-popcount inference engine: compile, run, save/load ``.bnn``, benchmark.

The output targets (C, ONNX, QONNX, FPGA estimate) live in :mod:`bnnprune.deploy`."""

from bnnprune.engine.bench import benchmark, format_benchmark, machine_info
from bnnprune.engine.compile import as_program, compile_model
from bnnprune.engine.errors import BnnFormatError, EngineError
from bnnprune.engine.fileformat import load, save
from bnnprune.engine.pack import pack_signs, unpack_signs
from bnnprune.engine.program import Program

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
