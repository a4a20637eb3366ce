"""Engine speed and C footprint of a run's models: what ``bnnprune run`` shows next to its
accuracy table, so the first result says whether the pruned network is faster.

Every model is compiled to the packed engine. :func:`engine_records` checks the engine's
top-1 predictions against PyTorch's on test images and computes the C export's flash and
RAM (:func:`bnnprune.deploy.cexport.c_footprint`; nothing is written).
:func:`time_programs` times all programs, the baseline first, interleaved in one run at
batch 1 and 64 (:func:`bnnprune.engine.bench.interleaved_latencies`, the timer of ``bnnprune
bench`` and the sweep), so every ratio to the baseline comes from the same machine load.
The records are deterministic; the timings are wall-clock and vary with machine and load.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import numba
import numpy as np
import torch
from torch import nn

from bnnprune.deploy.cexport import c_footprint
from bnnprune.engine import EngineError, Program, compile_model
from bnnprune.engine.bench import batch_repeats, interleaved_latencies, program_bops
from bnnprune.machine import cpu_name, isa_flags

__all__ = ["BATCHES", "CHECK_IMAGES", "REPEATS", "EngineRecord", "agreement", "engine_records",
           "measure_models", "time_programs"]

BATCHES = (1, 64)  # single-image latency and a batch that fills the vector lanes
REPEATS = 20  # timed runs at batch 1; larger batches take bench.batch_repeats of it
CHECK_IMAGES = 512  # test images on which the engine's predictions are compared with PyTorch


@dataclass
class EngineRecord:
    """One model on the engine: its binary MACs, the C export's bytes, agreement with PyTorch.

    ``flash_bytes`` / ``ram_bytes`` are None (and ``c_export`` says why) when the C export
    cannot express one of the program's ops."""

    label: str
    bops: int
    agreement: float  # share of the checked images where the engine's top-1 equals PyTorch's
    flash_bytes: int | None
    ram_bytes: int | None
    c_export: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def agreement(model: nn.Module, program: Program, x: np.ndarray) -> float:
    """Share of the images ``x`` (normalized, float32) on which the program's top-1 class
    equals that of ``model`` (on the CPU, in eval mode) in PyTorch."""
    ref = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((program(x).argmax(1) == ref).mean())


def engine_records(models: list[tuple[str, nn.Module]], shape: tuple[int, int, int],
                   x: np.ndarray) -> tuple[list[EngineRecord], list[Program]]:
    """Compile every ``(label, model)``; its record and its program, in the given order.

    Raises :class:`EngineError` when a model does not compile to the engine."""
    records, programs = [], []
    for label, model in models:
        cpu = copy.deepcopy(model).cpu().eval()  # the caller's model stays where and as it is
        program = compile_model(cpu, shape)
        try:
            fp, why = c_footprint(program), None
        except EngineError as e:
            fp, why = None, str(e)
        records.append(EngineRecord(
            label, program_bops(program), agreement(cpu, program, x),
            fp.flash_bytes if fp else None, fp.ram_bytes if fp else None, why))
        programs.append(program)
    return records, programs


def time_programs(labels: list[str], programs: list[Program],
                  batches: tuple[int, ...] = BATCHES, repeats: int = REPEATS) -> dict[str, Any]:
    """Median latency of every program at each batch size, all interleaved in one run, and
    its ratio to the first program's (the baseline). JSON-ready; names the CPU and its
    instruction-set flags, since the figures hold for this machine only."""
    if repeats < 1 or not batches or min(batches) < 1:
        raise EngineError("repeats and batch sizes must be >= 1")
    rows: list[dict[str, Any]] = [{"label": label, "latency_s": {}, "latency_ratio": {}}
                                  for label in labels]
    for batch in batches:
        medians = interleaved_latencies(programs, batch, batch_repeats(repeats, batch))
        for row, m in zip(rows, medians, strict=True):
            row["latency_s"][str(batch)] = m
            row["latency_ratio"][str(batch)] = m / medians[0]
    return {"cpu": cpu_name(), "isa": isa_flags(), "threads": numba.get_num_threads(),
            "repeats": {str(b): batch_repeats(repeats, b) for b in batches}, "models": rows}


def measure_models(models: list[tuple[str, nn.Module]], shape: tuple[int, int, int],
                   x: np.ndarray, repeats: int = REPEATS) -> tuple[dict[str, Any], dict[str, Any]]:
    """``engine`` (records of every model, deterministic) and ``speed`` (their interleaved
    latencies, with ``cpu_seconds``: the process CPU time all of this took) of ``models``,
    the baseline first."""
    t0 = time.process_time()
    records, programs = engine_records(models, shape, x)
    speed = time_programs([r.label for r in records], programs, repeats=repeats)
    speed["cpu_seconds"] = time.process_time() - t0
    engine = {"images_checked": len(x), "models": [r.to_dict() for r in records]}
    return engine, speed
