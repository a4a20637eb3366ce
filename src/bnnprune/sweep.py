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

The records' format lives in :mod:`bnnprune.records`; the statistics and verdicts the pages
print, computed from the records alone, in :mod:`bnnprune.evidence`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bnnprune.atomic import atomic_write_bytes
from bnnprune.config import SCRATCH_ROW, ConfigError, SweepConfig
from bnnprune.data import load_from_config, normalize
from bnnprune.evidence import (
    aggregate,
    check_primaries,
    convergence,
    design_results,
    plateau_verdict,
)
from bnnprune.flips import FlipTracker
from bnnprune.killpoint import kill_point
from bnnprune.lock import claim
from bnnprune.metrics import count_bops
from bnnprune.models import build_from_config
from bnnprune.phases import (
    history_of,
    measure,
    prune_rounds,
    retrain_config,
    tracker_of,
    train_phase,
)
from bnnprune.prune import (
    PlanOptions,
    Sensitivity,
    compute_sensitivity,
    get_policy,
    prune_once,
)
from bnnprune.prune.methods import Method
from bnnprune.prune.premise import premise_curve
from bnnprune.prune.resolve import plan_options, resolve_sweep, sweep_methods
from bnnprune.records import (
    RECORD_VERSION,
    DatasetRecord,
    MachineRecord,
    normalized,
    save_record,
)
from bnnprune.stats import spearman
from bnnprune.train import evaluate, load_model, resolve_device

__all__ = ["Cell", "cell_status", "compute_cell", "run_sweep", "sweep_cells"]

Log = Callable[[str], None]
THRESHOLDS = (0, 1, 2, 4)  # flip thresholds whose p_l and paper-policy BOPs every baseline reports
CLAIMS = ".claims"  # under the sweep folder: one claim per cell, while a process computes it
CLAIM_POLL_SECONDS = 0.5  # how often a process waiting for a cell claimed elsewhere retries


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    # baseline | prune | scratch | budget | premise | control (uniform widths at the BOPs the
    # seed's paper-policy cell reached, fine-tuned for as many epochs as it retrained)
    kind: str
    seed: int
    # prune/control: the method; scratch: None for uniform widths, else a method whose
    # policy sizes the layers (its criterion is moot: the network is re-initialised)
    method: Method | None = None
    reduction: float | None = None  # target BOPs reduction (None: the policy's own)
    # how a prune cell retrains: fine-tuning the surviving weights, or every round from a
    # fresh initialisation on the baseline's own schedule (sweep.paper_scratch)
    retrain: str = "finetune"

    @property
    def name(self) -> str:
        suffix = "" if self.reduction is None else f"-{round(100 * self.reduction)}"
        if self.retrain == "scratch":
            suffix += "-scratch"
        if self.kind == "prune":
            assert self.method is not None
            return f"{self.method.spec}{suffix}"
        if self.kind == "scratch":
            return f"scratch{suffix}" if self.method is None else \
                f"scratch-{self.method.policy}{suffix}"
        if self.kind == "control":
            assert self.method is not None
            return f"{self.method.spec}-paper-control"
        return {"baseline": "baseline", "budget": "unpruned-budget", "premise": "premise"}[
            self.kind]

    @property
    def folder(self) -> str:
        return f"seed{self.seed}/{self.name}"

    @property
    def title(self) -> str:
        red = "own" if self.reduction is None else f"-{self.reduction:.0%}"
        if self.kind == "prune":
            assert self.method is not None
            how = SCRATCH_ROW if self.retrain == "scratch" else ""
            return f"seed {self.seed} {self.method.spec}{how} ({red})"
        if self.kind == "scratch":
            widths = "uniform" if self.method is None else self.method.policy
            return f"seed {self.seed} {widths} widths from scratch ({red})"
        if self.kind == "control":
            return f"seed {self.seed} {self.method} at the paper policy's BOPs"
        return f"seed {self.seed} {self.kind}"


def _seed_cfg(cfg: SweepConfig, seed: int) -> SweepConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


# prune settings no sweep cell reads: each cell names its own method and BOPs reduction
UNKEYED_PRUNE = ("policy", "criterion", "target", "compare", "speed")


def _cell_key(cfg: SweepConfig, cell: Cell) -> Any:
    """What a finished cell depends on: everything but the sweep's own lists and the
    ``bnnprune run`` method settings it does not read (:data:`UNKEYED_PRUNE`)."""
    prune = {k: v for k, v in dataclasses.asdict(cfg.prune).items() if k not in UNKEYED_PRUNE}
    key = {
        "cell": [cell.kind, cell.seed, cell.method.spec if cell.method else None, cell.reduction],
        "model": cfg.model.key(),
        "data": cfg.data.key(),
        "train": dataclasses.asdict(cfg.train),
        "prune": prune,
    }
    if cell.kind == "premise":
        key["flips"] = [cfg.sweep.flip_percents, cfg.sweep.flip_choices]
    if cell.retrain != "finetune":  # fine-tuned cells keep the keys they were recorded with
        key["retrain"] = cell.retrain
    return normalized(key)


def _retrain_cfg(cfg: SweepConfig, cell: Cell) -> SweepConfig:
    """The settings a cell retrains with: ``prune.*`` as configured when fine-tuning; from
    scratch, every round trains a fresh initialisation for the baseline's own epochs and
    learning rate (so a round costs what the baseline cost)."""
    if cell.retrain == "finetune":
        return cfg
    p = dataclasses.replace(cfg.prune, from_scratch=True, retrain_epochs=cfg.train.epochs,
                            retrain_lr=cfg.train.lr)
    return dataclasses.replace(cfg, prune=p)


def _record_path(cfg: SweepConfig, out: Path, folder: str) -> Path:
    """Where the record of the cell in ``folder`` (``seed0/target+wff-30``) lives: under
    ``sweep.records`` (small JSON files meant to be committed, so a fresh clone resumes) or
    else in the run folder."""
    if cfg.sweep.records:
        return Path(cfg.sweep.records) / f"{folder}.json"
    return out / folder / "result.json"


def _finished(cfg: SweepConfig, out: Path, cell: Cell) -> dict[str, Any] | None:
    path = _record_path(cfg, out, cell.folder)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged record is recomputed (phases underneath are reused)
    if rec.get("key") != _cell_key(cfg, cell):
        raise ConfigError(
            f"{path} holds a sweep cell run with other settings; "
            "use a new output folder (-o) or records folder, or delete it"
        )
    return rec


_DATA: dict[str, Any] = {}


def _dataset(cfg: SweepConfig) -> Any:
    """The sweep's data, loaded once per process (the same subset for every seed)."""
    key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_from_config(cfg.data, 0)
    return _DATA[key]


def _write(cfg: SweepConfig, out: Path, cell: Cell, rec: dict[str, Any],
           seconds: float) -> dict[str, Any]:
    device = resolve_device(cfg.train.device)
    rec = {**rec, "version": RECORD_VERSION, "key": _cell_key(cfg, cell), "kind": cell.kind,
           "seed": cell.seed, "method_key": cell.method.spec if cell.method else None,
           "target_reduction": cell.reduction, "folder": cell.folder,
           "seconds": seconds, "machine": dataclasses.asdict(MachineRecord.here(device))}
    save_record(_record_path(cfg, out, cell.folder), rec)
    kill_point(f"sweep:recorded:{cell.folder}")
    return rec


def gated_out(cfg: SweepConfig, baseline: dict[str, Any] | None) -> bool:
    """True when the sweep gates on the plateau criterion and this finished baseline record
    fails it: the seed's other cells are not computed (a failed baseline is not used)."""
    s = cfg.sweep
    if not s.plateau_gate or baseline is None or not baseline.get("convergence"):
        return False
    verdict = plateau_verdict(baseline["convergence"], s.plateau_max_rise_pp,
                              s.plateau_max_flatness)
    return verdict is not None and not verdict["passed"]


def _wff_magnitude_correlation(model: torch.nn.Module, counts: dict[str, Any]) -> dict[str, Any]:
    """Per binary layer: Spearman rank correlation of flip count with |latent w| (weights)
    and of mean WFF with mean |w| (channels)."""
    out: dict[str, Any] = {}
    for name, c in counts.items():
        w = model.get_submodule(name).weight.detach().abs().cpu()
        c = c.cpu().double()
        out[name] = {"weights": spearman(c.flatten(), w.flatten().double()),
                     "channels": spearman(c.flatten(1).mean(1), w.flatten(1).mean(1).double())}
    return out


def _threshold_table(model: torch.nn.Module, flips: dict[str, Any], shape: tuple[int, ...],
                     opts: PlanOptions) -> dict[str, Any]:
    """p_l per layer and the paper policy's planned BOPs reduction at each flip threshold."""
    table = {}
    for t in THRESHOLDS:
        sens = compute_sensitivity(flips, model, threshold=t)
        plan = get_policy("paper").plan(model, shape, sens, options=opts)
        table[str(t)] = {"p": dict(sens.p), "paper_reduction": plan.reduction}
    return table


def _interval_table(model: torch.nn.Module, flips: dict[str, Any], shape: tuple[int, ...],
                    threshold: int, opts: PlanOptions) -> dict[str, Any]:
    """p_l per layer and the paper policy's planned BOPs reduction when the interval is only
    the last k epochs of the recorded one (k = 1 .. its length)."""
    tracker = FlipTracker(model)
    tracker.load_state_dict(flips)
    table = {}
    for k in range(1, len(tracker.epoch_counts) + 1):
        counts, steps = tracker.last_epochs_counts(k)
        sens = compute_sensitivity(counts, model, steps=steps, threshold=threshold)
        plan = get_policy("paper").plan(model, shape, sens, options=opts)
        table[str(k)] = {"p": dict(sens.p), "paper_reduction": plan.reduction, "steps": steps}
    return table


def _allocations(model: torch.nn.Module, sens: Any, shape: tuple[int, ...],
                 reductions: list[float], opts: PlanOptions) -> dict[str, Any]:
    """Channels the target (flip-proportional) and uniform allocations keep per layer at
    each reduction, and in how many layers they differ: an allocation question has an
    answer only where they do."""
    out = {}
    for r in reductions:
        plans = {pol: get_policy(pol).plan(model, shape, sens, r, options=opts).keep
                 for pol in ("target", "uniform")}
        differ = sum(plans["target"][n] != plans["uniform"][n] for n in plans["target"])
        out[str(r)] = {**plans, "layers_differing": differ}
    return out


@contextlib.contextmanager
def _claimed(out: Path, cell: Cell) -> Iterator[None]:
    """Hold ``cell``'s claim for the block, waiting while another process holds it."""
    item = out / CLAIMS / cell.folder
    while True:
        with claim(item, f"bnnprune sweep cell {cell.folder}") as held:
            if held is not None:
                yield
                return
        time.sleep(CLAIM_POLL_SECONDS)


def _ensure_baseline(cfg: SweepConfig, out: Path, seed: int,
                     claimed: bool) -> tuple[torch.nn.Module, Any]:
    """The seed's trained baseline (trained again, deterministically, when a fresh clone
    has its committed record but not its checkpoint). Unless the caller holds the baseline
    cell's claim (``claimed``), a baseline still to train is trained under that claim."""
    ds = _dataset(cfg)
    scfg = _seed_cfg(cfg, seed)
    folder = out / f"seed{seed}" / "baseline"
    model = build_from_config(cfg.model, ds, seed)
    wait = not claimed and not (folder / "model.pt").is_file()
    with _claimed(out, Cell("baseline", seed)) if wait else contextlib.nullcontext():
        res = train_phase("baseline", model, ds, scfg.train, folder, scfg, lambda s: None, False)
    return model, res


def run_cell(cfg: SweepConfig, out: Path, cell: Cell) -> dict[str, Any] | None:
    """Compute one cell under its claim (its baseline is trained first when missing); None
    when another process holds the claim (try again later). A cell that another process
    finished before the claim was taken is read back, marked ``"reused": True``."""
    with claim(out / CLAIMS / cell.folder, f"bnnprune sweep cell {cell.folder}") as held:
        if held is None:
            return None
        old = _finished(cfg, out, cell)
        baseline_ready = (out / f"seed{cell.seed}" / "baseline" / "model.pt").is_file()
        if old is not None and (cell.kind != "baseline" or baseline_ready):
            return {**old, "reused": True}
        return _compute_cell(cfg, out, cell)


@dataclass(frozen=True)
class _CellRun:
    """One cell being computed (its caller holds the claim): its settings, start time and
    the seed's baseline (model, training phase, flip data) every kind of cell starts from."""

    cfg: SweepConfig
    out: Path
    cell: Cell
    t0: float
    ds: Any
    base: torch.nn.Module
    phase: Any  # the baseline's TrainResult, or its checkpoint when the phase was reused
    flips: dict[str, Any] | None
    sens: Sensitivity | None

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    @property
    def scfg(self) -> SweepConfig:
        return _seed_cfg(self.cfg, self.cell.seed)

    @property
    def seed_dir(self) -> Path:
        return self.out / f"seed{self.cell.seed}"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ds.input_shape)

    def write(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Record ``rec`` as this cell's result, timed from the cell's start."""
        return _write(self.cfg, self.out, self.cell, rec, time.perf_counter() - self.t0)


def _quiet(msg: str) -> None:
    """Per-epoch logs of a cell's phases are in each metrics.jsonl, not on the console."""


def _baseline_cell(run: _CellRun) -> dict[str, Any]:
    """The unpruned baseline: accuracy and costs, convergence, and the flip statistics
    (p_l, thresholds, interval lengths, WFF-magnitude correlation, allocations)."""
    cfg, ds, base, sens, flips = run.cfg, run.ds, run.base, run.sens, run.flips
    p = cfg.prune
    if (old := _finished(cfg, run.out, run.cell)) is not None:
        _check_rebuilt(base, ds, run.device, old)
        return old  # the committed record stands; the checkpoint was only rebuilt
    rec = measure("baseline (unpruned)", base, ds, run.device, epochs=cfg.train.epochs).to_dict()
    rec["dataset"] = dataclasses.asdict(DatasetRecord.of(ds))
    rec["convergence"] = convergence(history_of(run.phase), cfg.train.track_last)
    # the training time itself (also when this record is rebuilt from a finished phase)
    rec["train_seconds"] = sum(h.get("seconds") or 0.0 for h in history_of(run.phase))
    if sens is not None:
        assert flips is not None
        rec["sensitivity"] = sens.to_dict()
        rec["thresholds"] = _threshold_table(base, flips, run.shape, plan_options(p))
        rec["intervals"] = _interval_table(base, flips, run.shape, p.threshold, plan_options(p))
        rec["correlation"] = _wff_magnitude_correlation(base, flips["counts"])
        rec["allocations"] = _allocations(base, sens, run.shape, cfg.sweep.reductions,
                                          plan_options(p))
    return run.write(rec)


def _premise_cell(run: _CellRun) -> dict[str, Any]:
    """The premise check: accuracy after flipping the signs of chosen weights, untrained."""
    cfg, ds, base, sens, cell = run.cfg, run.ds, run.base, run.sens, run.cell
    if sens is None or run.flips is None:
        raise ConfigError("the premise check needs flip data: set train.track_last >= 1")

    def acc(m: torch.nn.Module) -> float:
        return evaluate(m, ds.test_x, ds.test_y, ds.mean, ds.std, device=run.device)[1]

    fractions = [x / 100 for x in cfg.sweep.flip_percents]
    curves = premise_curve(base, run.flips["counts"], fractions, acc,
                           cfg.sweep.flip_choices, seed=cell.seed)
    flipped = sum(sens.insensitive.values()) / sum(sens.numel.values())
    baseline = _finished(cfg, run.out, Cell("baseline", cell.seed))
    unflipped = baseline["test_acc"] if baseline else acc(base)
    rec = {"percents": list(cfg.sweep.flip_percents), "curves": curves,
           "unflipped_acc": unflipped, "flipped_in_window": flipped}
    return run.write(rec)


def _budget_cell(run: _CellRun) -> dict[str, Any]:
    """The unpruned baseline trained for as many more epochs as a pruned model retrains."""
    cfg, ds, scfg = run.cfg, run.ds, run.scfg
    p = cfg.prune
    tcfg = retrain_config(scfg, p.retrain_epochs, track=False)
    model = copy.deepcopy(run.base)
    train_phase("unpruned-budget", model, ds, tcfg, run.seed_dir / "unpruned-budget", scfg,
                _quiet, False)
    rec = measure(f"unpruned +{p.retrain_epochs} epochs", model, ds, run.device,
                  epochs=cfg.train.epochs + p.retrain_epochs).to_dict()
    return run.write(rec)


def _scratch_cell(run: _CellRun) -> dict[str, Any]:
    """A policy's widths (uniform by default) trained from a fresh initialisation for the
    baseline's epochs plus the retraining epochs."""
    cfg, ds, scfg, cell = run.cfg, run.ds, run.scfg, run.cell
    p = cfg.prune
    policy = cell.method.policy if cell.method else "uniform"
    plan, model = prune_once(run.base, Method(policy, "magnitude"), run.shape,
                             sensitivity=run.sens, target=cell.reduction,
                             options=plan_options(p), seed=cell.seed, from_scratch=True)
    total = cfg.train.epochs + p.retrain_epochs
    t_scratch = dataclasses.replace(scfg.train, epochs=total, track_last=0)
    train_phase(cell.name, model, ds, t_scratch, run.seed_dir / cell.name, scfg, _quiet, False,
                plan.to_dict())
    rec = measure(f"{policy} widths from scratch ({total} epochs)", model, ds, run.device,
                  plan=plan.to_dict(), epochs=total).to_dict()
    rec["bops_reduction"] = plan.reduction
    return run.write(rec)


def _prune_cell(run: _CellRun) -> dict[str, Any]:
    """A method at a BOPs reduction (or the paper policy at its own), pruned from the
    baseline and retrained: fine-tuned, or every round from scratch (``cell.retrain``)."""
    cfg, cell = run.cfg, run.cell
    assert cell.method is not None
    m = cell.method
    scfg = _retrain_cfg(run.scfg, cell)
    p = scfg.prune
    seed_dir = run.seed_dir
    rounds = prune_rounds(
        m, run.base, run.sens, run.ds, scfg, cell.reduction,
        lambda r: seed_dir / (cell.name if r == 1 else f"{cell.name}-round{r}"),
        _quiet, False, cell.seed)
    final = rounds.records[-1]
    rec = final.to_dict()
    rec["label"] = m.spec
    rec["bops_reduction"] = 1 - final.bops / count_bops(run.base, run.shape)
    rec["rounds"] = [r.to_dict() for r in rounds.records]
    rec["stop"] = rounds.stop
    if cell.retrain != "finetune":
        rec["retrain"] = cell.retrain
    rec["epochs"] = cfg.train.epochs + len(rounds.records) * p.retrain_epochs
    n = len(rounds.records)
    rec["model_folder"] = f"seed{cell.seed}/{cell.name if n == 1 else f'{cell.name}-round{n}'}"
    return run.write(rec)


def _paper_cell(cfg: SweepConfig, seed: int) -> Cell:
    """The seed's fine-tuned paper-policy cell that its control is matched to."""
    paper = next(m for m in sweep_methods(cfg.sweep) if m.policy.iterates)
    return Cell("prune", seed, paper, None)


def _control_cell(run: _CellRun) -> dict[str, Any]:
    """Uniform widths pruned to the BOPs reduction the seed's paper-policy cell reached,
    by the paper method's criterion, fine-tuned for as many epochs as the paper policy
    retrained in all its rounds: the policy's iteration against one uniform cut of the
    same size and cost. The paper cell is computed first when it is not finished."""
    cfg, out, cell = run.cfg, run.out, run.cell
    paper_cell = _paper_cell(cfg, cell.seed)
    paper = _finished(cfg, out, paper_cell)
    if paper is None:
        with _claimed(out, paper_cell):
            paper = _finished(cfg, out, paper_cell) or _compute_cell(cfg, out, paper_cell)
    assert cell.method is not None
    rounds = len(paper["rounds"])
    scfg = dataclasses.replace(run.scfg, prune=dataclasses.replace(
        cfg.prune, retrain_epochs=rounds * cfg.prune.retrain_epochs))
    seed_dir = run.seed_dir
    res = prune_rounds(cell.method, run.base, run.sens, run.ds, scfg, paper["bops_reduction"],
                       lambda r: seed_dir / cell.name, _quiet, False, cell.seed)
    final = res.records[-1]
    rec = final.to_dict()
    rec["label"] = f"{cell.method.spec} at the paper policy's BOPs"
    rec["bops_reduction"] = 1 - final.bops / count_bops(run.base, run.shape)
    rec["matched_reduction"] = paper["bops_reduction"]
    rec["model_folder"] = f"seed{cell.seed}/{cell.name}"
    return run.write(rec)


# how each kind of cell is computed (the kinds :class:`Cell` names)
CELL_KINDS: dict[str, Callable[[_CellRun], dict[str, Any]]] = {
    "baseline": _baseline_cell,
    "premise": _premise_cell,
    "budget": _budget_cell,
    "scratch": _scratch_cell,
    "prune": _prune_cell,
    "control": _control_cell,
}


def _compute_cell(cfg: SweepConfig, out: Path, cell: Cell) -> dict[str, Any]:
    """Compute one cell by its kind (:data:`CELL_KINDS`); the caller holds its claim."""
    t0 = time.perf_counter()
    ds = _dataset(cfg)
    base, res = _ensure_baseline(cfg, out, cell.seed, claimed=cell.kind == "baseline")
    tracker = tracker_of(res, base)  # from the phase just trained or reused: no second read
    flips = tracker.state_dict() if tracker is not None else None
    sens = compute_sensitivity(flips, base, threshold=cfg.prune.threshold) if flips else None
    return CELL_KINDS[cell.kind](_CellRun(cfg, out, cell, t0, ds, base, res, flips, sens))


def _check_rebuilt(model: torch.nn.Module, ds: Any, device: torch.device,
                   old: dict[str, Any]) -> None:
    """Warn when a baseline trained again for its committed record (a fresh clone) does not
    reproduce that record's test accuracy: its cells would pair with another model (another
    machine or library version gives other float sums)."""
    _, acc = evaluate(model, ds.test_x, ds.test_y, ds.mean, ds.std, device=device)
    if acc != old["test_acc"]:
        warnings.warn(
            f"seed {old['seed']}: the baseline trained again reaches {acc:.2%} test accuracy, "
            f"its committed record says {old['test_acc']:.2%} (recorded on "
            f"{(old.get('machine') or {}).get('cpu', '?')}); cells computed now prune the "
            "new model", stacklevel=2)


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
        late += [Cell("control", seed, Method("uniform", _paper_cell(cfg, seed).method
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
        rec = _finished(cfg, out, cell)
        todo = cell.kind == "baseline" and rec is not None and any(
            _finished(cfg, out, d) is None
            for d in [*deps[cell.seed], *(c for c in late if c.seed == cell.seed)]) and not (
            out / f"seed{cell.seed}" / "baseline" / "model.pt").is_file()
        if rec is not None and not todo:
            finish(cell, rec, True)
        else:  # a baseline with pending cells but no checkpoint is trained again first
            pending[ex.submit(run_cell, cfg, out, cell)] = cell

    try:
        for b in baselines:
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

    ds = _dataset(cfg)
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
        save_record(_record_path(cfg, out, rec["folder"]),
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
    ds = _dataset(cfg)
    log(f"data: {ds.name}, {len(ds.train_x)} train / {len(ds.test_x)} test images; "
        f"{jobs} job(s) x {max(1, (os.cpu_count() or 1) // jobs)} thread(s)")
    if compute:
        records = _train_cells(cfg, out, jobs, log, progress)
        kill_point("sweep:cells-done")
        timed = _speed(cfg, out, records, log, progress) if cfg.sweep.speed else 0
        pending = 0
    else:
        cells = sweep_cells(cfg)
        found = [_finished(cfg, out, c) for c in cells]
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
    return [(c, _finished(cfg, Path(out_dir), c) is not None) for c in sweep_cells(cfg)]


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
    if cell.kind != "baseline" and gated_out(cfg, _finished(cfg, out, Cell("baseline", cell.seed))):
        raise ConfigError(f"cell {index} {cell.title}: seed {cell.seed}'s baseline fails the "
                          "plateau criterion (sweep.plateau_gate), so its cells are not computed")
    rec = _finished(cfg, out, cell)
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
