"""How each kind of sweep cell is computed (:data:`CELL_KINDS`): the baseline with its
flip statistics, the premise check, the equal-budget baseline, widths trained from scratch,
a pruned and retrained method, and the paper policy's uniform control.

:func:`compute_record` trains (or reuses) the seed's baseline, runs the cell's kind and writes its
record; the caller holds the cell's claim (:mod:`bnnprune.cells`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bnnprune.cells import (
    Cell,
    finished,
    hold_claim,
    paper_cell,
    retrain_cfg,
    seed_cfg,
    sweep_dataset,
    write_cell,
)
from bnnprune.config import ConfigError, SweepConfig
from bnnprune.evidence import convergence
from bnnprune.flips import FlipTracker
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
from bnnprune.prune import PlanOptions, Sensitivity, compute_sensitivity, get_policy, prune_once
from bnnprune.prune.methods import Method
from bnnprune.prune.premise import premise_curve
from bnnprune.prune.resolve import plan_options
from bnnprune.records import DatasetRecord
from bnnprune.stats import spearman
from bnnprune.train import evaluate

__all__ = ["CELL_KINDS", "THRESHOLDS", "compute_record"]

THRESHOLDS = (0, 1, 2, 4)  # flip thresholds whose p_l and paper-policy BOPs every baseline reports


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
    tracker = FlipTracker.from_state(model, flips)
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


def _ensure_baseline(cfg: SweepConfig, out: Path, seed: int,
                     claimed: bool) -> tuple[torch.nn.Module, Any]:
    """The seed's trained baseline (trained again, deterministically, when a fresh clone
    has its committed record but not its checkpoint). Unless the caller holds the baseline
    cell's claim (``claimed``), a baseline still to train is trained under that claim."""
    ds = sweep_dataset(cfg)
    scfg = seed_cfg(cfg, seed)
    folder = out / f"seed{seed}" / "baseline"
    model = build_from_config(cfg.model, ds, seed)
    wait = not claimed and not (folder / "model.pt").is_file()
    with hold_claim(out, Cell("baseline", seed)) if wait else contextlib.nullcontext():
        res = train_phase("baseline", model, ds, scfg.train, folder, scfg, lambda s: None, False)
    return model, res


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
        return seed_cfg(self.cfg, self.cell.seed)

    @property
    def seed_dir(self) -> Path:
        return self.out / f"seed{self.cell.seed}"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.ds.input_shape)

    def write(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Record ``rec`` as this cell's result, timed from the cell's start."""
        return write_cell(self.cfg, self.out, self.cell, rec, time.perf_counter() - self.t0)


def _quiet(msg: str) -> None:
    """Per-epoch logs of a cell's phases are in each metrics.jsonl, not on the console."""


def _baseline_cell(run: _CellRun) -> dict[str, Any]:
    """The unpruned baseline: accuracy and costs, convergence, and the flip statistics
    (p_l, thresholds, interval lengths, WFF-magnitude correlation, allocations)."""
    cfg, ds, base, sens, flips = run.cfg, run.ds, run.base, run.sens, run.flips
    p = cfg.prune
    if (old := finished(cfg, run.out, run.cell)) is not None:
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
    baseline = finished(cfg, run.out, Cell("baseline", cell.seed))
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
    scfg = retrain_cfg(run.scfg, cell)
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


def _control_cell(run: _CellRun) -> dict[str, Any]:
    """Uniform widths pruned to the BOPs reduction the seed's paper-policy cell reached,
    by the paper method's criterion, fine-tuned for as many epochs as the paper policy
    retrained in all its rounds: the policy's iteration against one uniform cut of the
    same size and cost. The paper cell is computed first when it is not finished."""
    cfg, out, cell = run.cfg, run.out, run.cell
    paper_prune = paper_cell(cfg, cell.seed)
    paper = finished(cfg, out, paper_prune)
    if paper is None:
        with hold_claim(out, paper_prune):
            paper = finished(cfg, out, paper_prune) or compute_record(cfg, out, paper_prune)
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


def compute_record(cfg: SweepConfig, out: Path, cell: Cell) -> dict[str, Any]:
    """Compute one cell by its kind (:data:`CELL_KINDS`); the caller holds its claim."""
    t0 = time.perf_counter()
    ds = sweep_dataset(cfg)
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
