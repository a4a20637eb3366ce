"""The main job, ``bnnprune run``: train with flip tracking -> sensitivity -> plan -> surgery ->
retrain (repeat for the paper policy) -> compare against baselines at equal BOPs -> engine
speed and C footprint of the baseline and every pruned model (:mod:`bnnprune.speed`) -> report.

Every phase (:mod:`bnnprune.phases`) writes its own folder under the run folder and is
skipped when its ``model.pt`` already exists with the same settings, or resumed from its
``checkpoint.pt``: a crashed run continues where it stopped when started again with the
same command.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from bnnprune.atomic import atomic_write_bytes
from bnnprune.config import RunConfig, TrainConfig
from bnnprune.data import Dataset, load_from_config, normalize
from bnnprune.engine import EngineError
from bnnprune.killpoint import kill_point
from bnnprune.models import build_from_config
from bnnprune.phases import (
    measure,
    prune_rounds,
    retrain_config,
    tracker_of,
    train_phase,
)
from bnnprune.prune import Sensitivity, compute_sensitivity, prune_once
from bnnprune.prune.resolve import resolve_run
from bnnprune.records import RECORD_VERSION, DatasetRecord, MachineRecord
from bnnprune.speed import CHECK_IMAGES, measure_models
from bnnprune.train import dist

__all__ = ["run_pipeline"]

Log = Callable[[str], None]


def run_pipeline(
    cfg: RunConfig, out_dir: str | Path, log: Log = lambda s: None, progress: bool = False,
    on_baseline: Callable[[Any, Path], None] | None = None,
    tensorboard: str | Path | None = None,
) -> dict[str, Any]:
    """Run the whole job; write results.json (and return it). Plots and report are separate
    (``on_baseline(tracker, out)`` is called once the baseline's flip data exists).

    Under torchrun every process runs this; training phases use DistributedDataParallel,
    everything else is computed identically on every rank, and only rank 0 writes files.
        ``tensorboard``: a folder that gets one TensorBoard run per training phase.
    """
    setup = resolve_run(cfg)  # every method's data needs are checked here, before training
    out = Path(out_dir)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ds = dist.main_first(lambda: load_from_config(cfg.data, cfg.train.seed))
    log(
        f"data: {ds.name}, {len(ds.train_x)} train / {len(ds.test_x)} test images "
        f"{tuple(ds.input_shape)}"
    )
    shape = tuple(ds.input_shape)
    base = build_from_config(cfg.model, ds, cfg.train.seed)
    phases: dict[str, float] = {}
    p = cfg.prune
    tb = Path(tensorboard) if tensorboard is not None and dist.is_main() else None

    def timed_phase(name: str, model: nn.Module, tcfg: TrainConfig, plan: Any = None) -> Any:
        t0 = time.perf_counter()
        res = train_phase(name, model, ds, tcfg, out / name, cfg, log, progress,
                          plan.to_dict() if plan is not None else None,
                          tb / name if tb else None)
        phases[name] = time.perf_counter() - t0
        return res

    flips = tracker_of(timed_phase("baseline", base, cfg.train), base)
    device = next(base.parameters()).device
    if flips is not None and dist.is_main() and on_baseline is not None:
        on_baseline(flips, out)
    kill_point("run:baseline-done")
    sens = compute_sensitivity(flips, base, threshold=p.threshold) if flips else None
    baseline = measure("baseline (unpruned)", base, ds, device, epochs=cfg.train.epochs)
    log(f"baseline: test {baseline.test_acc:.2%}, {baseline.bops / 1e6:.2f} M BOPs")

    def report(name: str, rec: Any) -> None:
        log(f"{name}: test {rec.test_acc:.2%}, BOPs -{1 - rec.bops / baseline.bops:.1%}")

    # ---- the chosen method (paper: iterate; target/uniform: one shot)
    method = setup.method
    t0 = time.perf_counter()
    lm = None
    if p.target_latency is not None:  # the engine's latency tables of this machine
        from bnnprune.prune.latency import latency_model

        lm = latency_model(base, shape, batch=p.latency_batch, threads=p.latency_threads,
                           keep_fp=p.keep_fp, progress=log)
    fm = None
    if setup.budget is not None:  # the C export's footprint (and a core's instructions)
        from bnnprune.prune.budget import footprint_model

        fm = footprint_model(base, shape, keep_fp=p.keep_fp, mcu=setup.budget.mcu,
                             progress=log)
    res = prune_rounds(
        method, base, sens, ds, cfg, p.target,
        lambda r: out / (f"pruned-round{r}" if method.policy.iterates else "pruned"),
        log, progress, cfg.train.seed, latency_model=lm, tensorboard=tb,
        budget=setup.budget, footprint_model=fm)
    phases["pruned"] = time.perf_counter() - t0
    rounds = res.records
    for r in rounds:
        report(r.label, r)
    final = rounds[-1]
    achieved = 1 - final.bops / baseline.bops
    retrain_budget = p.retrain_epochs * len(rounds)
    retrain_cfg = retrain_config(cfg, retrain_budget, track=False)

    # ---- baselines at the same BOPs and the same training budget
    compared, compared_models = [], []
    for m in setup.compare:
        plan, pruned = prune_once(base, m, shape, sensitivity=sens, target=achieved,
                                  options=setup.options, seed=cfg.train.seed,
                                  data=ds, from_scratch=p.from_scratch)
        name = f"compare-{m.spec}"
        timed_phase(name, pruned, retrain_cfg, plan)
        rec = measure(m.spec, pruned, ds, device, plan=plan.to_dict(),
                      epochs=cfg.train.epochs + retrain_budget)
        compared.append(rec)
        compared_models.append(pruned)
        report(name, rec)

    budget = None
    if p.budget_baseline:
        unpruned = copy.deepcopy(base)
        timed_phase("unpruned-budget", unpruned, retrain_cfg)
        budget = measure(f"unpruned +{retrain_budget} epochs", unpruned, ds, device,
                         epochs=cfg.train.epochs + retrain_budget)

    t0 = time.perf_counter()
    engine = engine_sections(cfg, ds, [(baseline.label, base), (final.label, res.model),
                                       *((r.label, m) for r, m in zip(compared, compared_models))],
                             log)
    phases["speed"] = time.perf_counter() - t0

    results = {
        "version": RECORD_VERSION,
        "config": cfg.to_dict(),
        "dataset": DatasetRecord.of(ds).__dict__,
        "machine": MachineRecord.here(device).__dict__,
        "seeds": [cfg.train.seed],
        "baseline": baseline.to_dict(),
        "sensitivity": sens.to_dict() if isinstance(sens, Sensitivity) else None,
        "method": method.spec,
        "rounds": [r.to_dict() for r in rounds],
        "stop": res.stop,
        "pruned": final.to_dict(),
        "bops_reduction": achieved,
        "accuracy_drop": baseline.test_acc - final.test_acc,
        "retrain_epochs": retrain_budget,
        "compared": [r.to_dict() for r in compared],
        "unpruned_budget": budget.to_dict() if budget else None,
        **engine,
        "phase_seconds": phases,
        "wall_seconds": time.perf_counter() - t_start,
    }
    if dist.is_main():
        atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
        kill_point("run:results-written")
    return results


def engine_sections(cfg: RunConfig, ds: Dataset, models: list[tuple[str, nn.Module]],
                    log: Log) -> dict[str, Any]:
    """results.json's ``engine`` (C flash and RAM, agreement with PyTorch) and ``speed``
    (interleaved latencies) of ``models``, the baseline first; both None with ``prune.speed``
    off, and on ranks other than 0 (a timing shares the machine with nothing else of the run).
    A model the engine cannot compile leaves the trained run intact: ``engine`` says why."""
    if not cfg.prune.speed or not dist.is_main():
        return {"engine": None, "speed": None}
    x = normalize(ds.test_x[:CHECK_IMAGES], ds.mean, ds.std).numpy()
    log(f"engine: compiling and timing {len(models)} models (batch 1 and 64, interleaved)")
    try:
        engine, speed = measure_models(models, tuple(ds.input_shape), x)
    except EngineError as e:
        log(f"engine: not measured: {e}")
        return {"engine": {"error": str(e)}, "speed": None}
    worst = min(m["agreement"] for m in engine["models"])
    ratios = ", ".join(f"{v:.3f} (batch {b})"
                       for b, v in speed["models"][1]["latency_ratio"].items())
    log(f"engine: {models[1][0]} latency / baseline {ratios}; top-1 equals PyTorch's on "
        f">= {worst:.1%} of {len(x)} test images; {speed['cpu_seconds']:.1f} s CPU")
    return {"engine": engine, "speed": speed}
