"""The evidence sweep, ``bnnprune sweep``: does flip frequency pick the right channels?

For every seed: train the baseline with flip tracking; then, from that baseline, prune with
every method at every BOPs reduction (the paper policy at its own reduction), retrain each for
the same number of epochs, and train the unpruned model for those epochs too (equal budget).
On each baseline, the premise check flips the signs of chosen weights without retraining
(:mod:`bnnprune.prune.premise`). Finally every pruned model is compiled to the packed engine
and timed against its unpruned baseline, one model after another with nothing else running.

Every cell writes its own folder (``seed0/target+wff-30/`` ...) with a ``result.json``; a
finished cell is never recomputed and an interrupted one resumes from its last epoch. Cells
run in ``jobs`` processes (each with ``cores / jobs`` threads); pruned cells of a seed start
as soon as its baseline is done. A cell is computed under its claim
(``.claims/seed0/target+wff-30``, :func:`bnnprune.lock.claim`): processes sharing a sweep
folder never compute one cell at the same time; one that finds a cell claimed computes
other cells meanwhile, then polls the claim and reads the record the holder wrote. Or a
batch system spreads them over machines: each worker computes one cell
(:func:`compute_cell`, ``bnnprune sweep --cell K``), see docs/scaling.md.

This module schedules the cells; what a cell is, its record file and its claim live in
:mod:`bnnprune.cells`, how each kind of cell is computed in :mod:`bnnprune.cellkinds`, the
records' format in :mod:`bnnprune.records`, and the statistics and verdicts the pages print,
computed from the records alone, in :mod:`bnnprune.evidence`.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from bnnprune.atomic import atomic_write_bytes
from bnnprune.cellkinds import compute_record
from bnnprune.cells import (
    CLAIM_POLL_SECONDS,
    CLAIMS,
    Cell,
    finished,
    paper_cell,
    record_path,
    sweep_dataset,
)
from bnnprune.config import ConfigError, SweepConfig
from bnnprune.data import normalize
from bnnprune.evidence import aggregate, check_primaries, design_results, plateau_verdict
from bnnprune.killpoint import kill_point
from bnnprune.lock import claim
from bnnprune.prune.methods import Method
from bnnprune.prune.resolve import resolve_sweep, sweep_methods
from bnnprune.records import RECORD_VERSION, DatasetRecord, save_record
from bnnprune.train import load_model

__all__ = ["Cell", "cell_status", "compute_cell", "run_sweep", "sweep_cells"]

Log = Callable[[str], None]


def gated_out(cfg: SweepConfig, baseline: dict[str, Any] | None) -> bool:
    """True when the sweep gates on the plateau criterion and this finished baseline record
    fails it: the seed's other cells are not computed (a failed baseline is not used)."""
    s = cfg.sweep
    if not s.plateau_gate or baseline is None or not baseline.get("convergence"):
        return False
    verdict = plateau_verdict(baseline["convergence"], s.plateau_max_rise_pp,
                              s.plateau_max_flatness)
    return verdict is not None and not verdict["passed"]


def run_cell(cfg: SweepConfig, out: Path, cell: Cell) -> dict[str, Any] | None:
    """Compute one cell under its claim (its baseline is trained first when missing); None
    when another process holds the claim (try again later). A cell that another process
    finished before the claim was taken is read back, marked ``"reused": True``."""
    with claim(out / CLAIMS / cell.folder, f"bnnprune sweep cell {cell.folder}") as held:
        if held is None:
            return None
        old = finished(cfg, out, cell)
        baseline_ready = (out / f"seed{cell.seed}" / "baseline" / "model.pt").is_file()
        if old is not None and (cell.kind != "baseline" or baseline_ready):
            return {**old, "reused": True}
        return compute_record(cfg, out, cell)


def _init_worker(threads: int, parent: int) -> None:
    """A cell worker: ``threads`` torch threads, and it dies with the sweep process (Linux),
    so a killed sweep never leaves workers computing (and writing) on their own."""
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call took effect
            os._exit(1)


def _cells(cfg: SweepConfig) -> tuple[list[Cell], dict[int, list[Cell]], list[Cell]]:
    """The baselines, each seed's cells (run once its baseline exists) and the cells run
    after all of those (the paper policy retrained from scratch: the costliest, and not
    needed by the factorial comparisons)."""
    s = cfg.sweep
    baselines = [Cell("baseline", seed) for seed in s.seeds]
    deps: dict[int, list[Cell]] = {}
    for seed in s.seeds:
        cells = [Cell("premise", seed)] if s.flip_percents and s.flip_choices else []
        for m in sweep_methods(s):
            if not m.policy.targets:  # the policy's own reduction
                cells.append(Cell("prune", seed, m, None))
            else:
                cells += [Cell("prune", seed, m, r) for r in s.reductions]
        if s.scratch:
            cells += [Cell("scratch", seed, None if a == "uniform" else Method(a, "magnitude"),
                           r) for a in s.scratch_policies for r in s.reductions]
        if cfg.prune.budget_baseline:
            cells.append(Cell("budget", seed))
        deps[seed] = cells
    late = [Cell("prune", seed, m, None, "scratch") for seed in s.seeds
            for m in sweep_methods(s) if m.policy.iterates and s.paper_scratch]
    if s.paper_control:
        late += [Cell("control", seed, Method("uniform", paper_cell(cfg, seed).method
                                              .criterion), None) for seed in s.seeds]
    return baselines, deps, late


class _Inline:
    """The executor for ``jobs=1``: run in this process, no spawn."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except Exception as e:  # handed to the caller through the future (Ctrl-C is not)
            f.set_exception(e)
        return f

    def shutdown(self, cancel_futures: bool = False) -> None:
        pass


def _priority(cell: Cell) -> tuple[int, int]:
    """The order cells are computed in once their baselines exist: the factorial prune
    cells of every seed first (the trial's questions need them), then uniform width from
    scratch, the paper policy, the premise check, the budget baseline, the paper policy
    retrained from scratch, and last the paper policy's uniform controls; seed by seed
    within each."""
    if cell.kind == "prune":
        rank = 5 if cell.retrain != "finetune" else 2 if cell.reduction is None else 0
    else:
        rank = {"scratch": 1, "premise": 3, "budget": 4, "control": 6}.get(cell.kind, 0)
    return rank, cell.seed


def _train_cells(cfg: SweepConfig, out: Path, jobs: int, log: Log,
                 progress: bool) -> list[dict[str, Any]]:
    baselines, deps, late = _cells(cfg)
    total = len(baselines) + sum(len(v) for v in deps.values()) + len(late)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    records: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="sweep cells", unit="cell", dynamic_ncols=True)
    if jobs == 1:
        ex: Any = _Inline()
    else:
        ex = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads, os.getpid()))
    pending: dict[Future, Cell] = {}
    deferred: list[Cell] = []  # claimed by another process: tried again when idle
    baselines_done: set[int] = set()
    failed: set[int] = set()  # seeds whose baseline failed the gating plateau criterion
    ready: list[Cell] = []  # cells whose baseline is finished, not yet queued

    def finish(cell: Cell, rec: dict[str, Any], reused: bool) -> None:
        nonlocal total
        rec = {**rec, "reused": reused or rec.get("reused", False)}
        records.append(rec)
        msg = f"[{len(records)}/{total}] {cell.title}: {_describe(rec)}" + (
            " (reused)" if rec["reused"] else "")
        if bar is not None:
            bar.update(1)
            bar.write(msg)
        else:
            log(msg)
        if cell.kind == "baseline":
            if gated_out(cfg, rec):
                failed.add(cell.seed)
                skipped = len(deps[cell.seed]) + sum(c.seed == cell.seed for c in late)
                total -= skipped
                log(f"seed {cell.seed}: the baseline fails the plateau criterion; its "
                    f"{skipped} other cells are not computed")
            else:
                ready.extend(deps[cell.seed])
            baselines_done.add(cell.seed)
            if len(baselines_done) == len(baselines):
                ready.extend(c for c in late if c.seed not in failed)

    def flush() -> None:
        """Queue the cells whose baselines are ready, most needed first (across seeds)."""
        todo = sorted(ready, key=_priority)
        ready.clear()
        for d in todo:
            submit(d)

    def submit(cell: Cell) -> None:
        rec = finished(cfg, out, cell)
        todo = cell.kind == "baseline" and rec is not None and any(
            finished(cfg, out, d) is None
            for d in [*deps[cell.seed], *(c for c in late if c.seed == cell.seed)]) and not (
            out / f"seed{cell.seed}" / "baseline" / "model.pt").is_file()
        if rec is not None and not todo:
            finish(cell, rec, True)
        else:  # a baseline with pending cells but no checkpoint is trained again first
            pending[ex.submit(run_cell, cfg, out, cell)] = cell

    try:
        # baselines never trained go first; those with a record whose checkpoint a fresh
        # machine lost are trained again last, just before their cells need them
        for b in sorted(baselines, key=lambda b: finished(cfg, out, b) is not None):
            submit(b)
        while pending or deferred or ready:
            flush()
            if not pending and not deferred:
                continue
            if not pending:  # only cells that other processes compute are left: poll them
                time.sleep(CLAIM_POLL_SECONDS)
                retry, deferred[:] = list(deferred), []
                for cell in retry:
                    submit(cell)
                continue
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in [f for f in pending if f in done]:  # in the order they were queued
                cell = pending.pop(f)
                rec = f.result()
                if rec is None:
                    deferred.append(cell)
                else:
                    finish(cell, rec, False)
    finally:
        ex.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()
    return records


def _describe(rec: dict[str, Any]) -> str:
    if rec["kind"] == "premise":
        return f"premise check on {len(rec['percents'])} fractions ({rec['seconds']:.0f}s)"
    red = rec.get("bops_reduction")
    red_s = f", BOPs -{red:.1%}" if red is not None else ""
    return f"test {rec['test_acc']:.2%}{red_s} ({rec['seconds']:.0f}s)"


# ---------------------------------------------------------------- speed


def _speed(cfg: SweepConfig, out: Path, records: list[dict[str, Any]], log: Log,
           progress: bool) -> int:
    """Compile every pruned model and its baseline; time them interleaved; check agreement."""
    from bnnprune.engine import compile_model
    from bnnprune.engine.bench import batch_repeats, compare_latency, op_times
    from bnnprune.speed import CHECK_IMAGES, agreement

    ds = sweep_dataset(cfg)
    shape = tuple(ds.input_shape)
    x_check = normalize(ds.test_x[:CHECK_IMAGES], ds.mean, ds.std).numpy()
    pruned = [r for r in records if r["kind"] == "prune"]
    todo = [r for r in pruned if not (r.get("speed") or {}).get("key") == r["key"]]
    if not todo:
        return 0
    log(f"speed: timing {len(todo)} pruned models on the packed engine (batch 1 and 64)")
    programs: dict[int, Any] = {}
    base_ops: dict[int, list[dict[str, Any]]] = {}
    it: Any = todo
    if progress:
        from tqdm import tqdm

        it = tqdm(todo, desc="engine speed", unit="model", dynamic_ncols=True)
    for rec in it:
        seed = rec["seed"]
        if seed not in programs:
            base, _ = load_model(out / f"seed{seed}" / "baseline" / "model.pt")
            programs[seed] = compile_model(base.cpu().eval(), shape)
            base_ops[seed] = op_times(programs[seed], 64, 10)
        folder = out / rec.get("model_folder", rec["folder"])
        model, _ = load_model(folder / "model.pt")
        model = model.cpu().eval()
        prog = compile_model(model, shape)
        agree = agreement(model, prog, x_check)
        speed = {"key": rec["key"], "engine_agreement": agree, "images_checked": len(x_check)}
        for label, batch in (("batch1", 1), ("batch64", 64)):
            reps = batch_repeats(cfg.sweep.speed_repeats, batch)
            speed[label] = compare_latency(prog, programs[seed], batch, reps)
        # where the time goes, op by op (batch 64): explains a latency ratio far from BOPs
        speed["ops_batch64"] = op_times(prog, 64, 10)
        speed["baseline_ops_batch64"] = base_ops[seed]
        rec["speed"] = speed
        save_record(record_path(cfg, out, rec["folder"]),
                     {k: v for k, v in rec.items() if k != "reused"})
    return len(todo)


def run_sweep(cfg: SweepConfig, out_dir: str | Path, jobs: int = 1, log: Log = lambda s: None,
              progress: bool = False, command: str | None = None,
              compute: bool = True) -> dict[str, Any]:
    """Run (or resume) the sweep; write ``results.json`` and return it.

    Everything the page shows comes from the cell records, so a finished sweep regenerates
    the same page from its records alone (the wall-clock history of invocations is kept in
    results.json only). With ``compute=False`` nothing trains: the finished records make
    the results and the cells still to do are counted in ``pending``.
    """
    resolve_sweep(cfg)
    check_primaries(cfg)
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    ds = sweep_dataset(cfg)
    log(f"data: {ds.name}, {len(ds.train_x)} train / {len(ds.test_x)} test images; "
        f"{jobs} job(s) x {max(1, (os.cpu_count() or 1) // jobs)} thread(s)")
    if compute:
        records = _train_cells(cfg, out, jobs, log, progress)
        kill_point("sweep:cells-done")
        timed = _speed(cfg, out, records, log, progress) if cfg.sweep.speed else 0
        pending = 0
    else:
        cells = sweep_cells(cfg)
        found = [finished(cfg, out, c) for c in cells]
        records = [{**r, "reused": True} for r in found if r is not None]
        failed = {r["seed"] for r in records if r["kind"] == "baseline" and gated_out(cfg, r)}
        pending = sum(rec is None and not (c.kind != "baseline" and c.seed in failed)
                      for c, rec in zip(cells, found))
        timed = 0
        log(f"report only: {len(records)} finished cells, {pending} still to compute")
    command = command or " ".join(["bnnprune", *sys.argv[1:]])
    wall = time.perf_counter() - t0
    invocations = [*_earlier_invocations(out / "results.json"),
                   {"started": started, "command": command, "wall_seconds": wall,
                    "cells_computed": sum(not r.get("reused") for r in records),
                    "models_timed": timed}]
    records.sort(key=lambda r: (r["seed"], r["folder"]))
    results = {
        "version": RECORD_VERSION,
        "config": cfg.to_dict(),
        "command": command,
        "dataset": dataclasses.asdict(DatasetRecord.of(ds)),
        "invocations": invocations,
        "pending": pending,
        "records": [{k: v for k, v in r.items() if k != "reused"} for r in records],
        **aggregate(records),
        **design_results(cfg, records),
    }
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    return results


def _earlier_invocations(path: Path) -> list[dict[str, Any]]:
    """The invocations recorded by an earlier results.json of this folder (resumed sweeps)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if isinstance(old, dict) and isinstance(old.get("invocations"), list):
        return old["invocations"]
    return []


# ---------------------------------------------------------------- one cell per worker

WORKER_POLL_SECONDS = 5.0  # how often a --cell worker looks again at a cell held elsewhere


def sweep_cells(cfg: SweepConfig) -> list[Cell]:
    """Every cell in a fixed order, the baselines first: the index ``--cell K`` takes, the
    same on every machine given the same config."""
    baselines, deps, late = _cells(cfg)
    return [*baselines, *(c for v in deps.values() for c in v), *late]


def cell_status(cfg: SweepConfig, out_dir: str | Path) -> list[tuple[Cell, bool]]:
    """Each cell of :func:`sweep_cells` with whether its record is finished."""
    return [(c, finished(cfg, Path(out_dir), c) is not None) for c in sweep_cells(cfg)]


def compute_cell(cfg: SweepConfig, out_dir: str | Path, index: int, log: Log = lambda s: None,
                 poll: float = WORKER_POLL_SECONDS) -> dict[str, Any]:
    """Compute cell ``index`` of :func:`sweep_cells` alone and return its record (a finished
    cell is returned as it stands): one job of a batch array whose workers share ``out_dir``.

    The seed's baseline is trained first when its checkpoint is missing. Workers claim the
    baseline folder while they make sure of it, and the cell's folder while they compute it
    (:func:`bnnprune.lock.claim`): a second worker waits, then reuses what the first wrote.
    """
    resolve_sweep(cfg)
    cells = sweep_cells(cfg)
    if not 0 <= index < len(cells):
        raise ConfigError(f"cell {index} does not exist: this sweep has {len(cells)} cells, "
                          f"0 to {len(cells) - 1} (see bnnprune sweep --list-cells)")
    cell, out = cells[index], Path(out_dir)
    if cell.kind != "baseline" and gated_out(cfg, finished(cfg, out, Cell("baseline", cell.seed))):
        raise ConfigError(f"cell {index} {cell.title}: seed {cell.seed}'s baseline fails the "
                          "plateau criterion (sweep.plateau_gate), so its cells are not computed")
    rec = finished(cfg, out, cell)
    if rec is None:
        t0 = time.perf_counter()
        told = False
        while (rec := run_cell(cfg, out, cell)) is None:  # another worker holds the cell
            if not told:
                log(f"cell {index} {cell.title}: computed by another worker; waiting for it")
                told = True
            time.sleep(poll)
        log(f"cell {index} {cell.title}: {_describe(rec)}, "
            f"{time.perf_counter() - t0:.0f}s with its baseline")
    else:
        log(f"cell {index} {cell.title}: already finished ({_describe(rec)})")
    return rec
