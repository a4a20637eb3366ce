"""The evidence sweep, ``bnnprune sweep``: does flip frequency pick the right channels?

For every seed: train the baseline with flip tracking; then, from that baseline, prune with
every method at every BOPs reduction (the paper policy at its own reduction), retrain each for
the same number of epochs, and train the unpruned model for those epochs too (equal budget).
On each baseline, the premise check flips the signs of chosen weights without retraining
(:mod:`bnnprune.prune.premise`). Finally every pruned model is compiled to the packed engine
and timed against its unpruned baseline, one model after another with nothing else running.

Every cell writes its own folder (``seed0/target-wff-30/`` ...) with a ``result.json``; a
finished cell is never recomputed and an interrupted one resumes from its last epoch. Cells
run in ``jobs`` processes (each with ``cores / jobs`` threads); pruned cells of a seed start
as soon as its baseline is done.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bnnprune.atomic import atomic_write_bytes
from bnnprune.config import ConfigError
from bnnprune.data import normalize
from bnnprune.engine.bench import machine_info
from bnnprune.pipeline import (
    PruneConfig,
    RunConfig,
    measure,
    pruned_copy,
    retrain_config,
    train_phase,
)
from bnnprune.prune import CRITERIA, POLICIES, compute_sensitivity, make_plan
from bnnprune.prune.premise import CHOICES, premise_curve
from bnnprune.train import evaluate, load_checkpoint, load_model, resolve_device

__all__ = ["Method", "SweepConfig", "SweepSection", "parse_method", "run_sweep"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Method:
    policy: str
    criterion: str

    @property
    def label(self) -> str:
        return f"{self.policy} + {self.criterion}"

    @property
    def key(self) -> str:
        return f"{self.policy}-{self.criterion}"


def parse_method(text: str) -> Method:
    """``policy+criterion``; a bare policy means ``+wff``, a bare criterion ``target+``."""
    t = text.strip().replace(" ", "")
    if "+" in t:
        policy, crit = t.split("+", 1)
    elif t in POLICIES:
        policy, crit = t, "wff"
    else:
        policy, crit = "target", t
    if policy not in POLICIES or crit not in CRITERIA:
        raise ConfigError(
            f"unknown sweep method {text!r}: write policy+criterion with policy in "
            f"{', '.join(POLICIES)} and criterion in {', '.join(CRITERIA)}"
        )
    return Method(policy, crit)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"sweep.{what} must be comma-separated numbers, got {text!r}") from None


@dataclass
class SweepSection:
    reductions: str = "0.2,0.3,0.4,0.5"  # BOPs reductions for the target/uniform methods
    methods: str = "paper,target+wff,uniform,target+random,target+magnitude,target+bn_scale"
    seeds: str = "0,1,2"
    flip_percents: str = "1,2,5,10,15,20"  # premise check: % of each layer's weights
    flip_choices: str = ",".join(CHOICES)
    speed: bool = True  # time every pruned model on the packed engine
    speed_repeats: int = 30

    def validate(self) -> None:
        red = self.reduction_list
        if not red or any(not 0 < r < 1 for r in red):
            raise ConfigError(f"sweep.reductions must lie in (0, 1), got {self.reductions!r}")
        if not self.method_list:
            raise ConfigError("sweep.methods is empty")
        if not self.seed_list:
            raise ConfigError("sweep.seeds is empty")
        pct = self.flip_percent_list
        if any(not 0 <= x <= 100 for x in pct):
            raise ConfigError(f"sweep.flip_percents must lie in [0, 100], got {pct}")
        bad = [c for c in self.flip_choice_list if c not in CHOICES]
        if bad:
            raise ConfigError(f"unknown sweep.flip_choices {bad}; choose from {', '.join(CHOICES)}")
        if self.speed_repeats < 1:
            raise ConfigError("sweep.speed_repeats must be >= 1")

    @property
    def reduction_list(self) -> list[float]:
        return _floats(self.reductions, "reductions")

    @property
    def method_list(self) -> list[Method]:
        out: list[Method] = []
        for m in self.methods.split(","):
            if m.strip() and (method := parse_method(m)) not in out:
                out.append(method)
        return out

    @property
    def seed_list(self) -> list[int]:
        vals = _floats(self.seeds, "seeds")
        if any(v != int(v) or v < 0 for v in vals):
            raise ConfigError(f"sweep.seeds must be whole numbers >= 0, got {self.seeds!r}")
        return list(dict.fromkeys(int(v) for v in vals))

    @property
    def flip_percent_list(self) -> list[float]:
        return _floats(self.flip_percents, "flip_percents")

    @property
    def flip_choice_list(self) -> list[str]:
        return [c.strip() for c in self.flip_choices.split(",") if c.strip()]


def _sweep_prune_defaults() -> PruneConfig:
    return PruneConfig(compare="", budget_baseline=True, max_rounds=1)


@dataclass
class SweepConfig(RunConfig):
    prune: PruneConfig = field(default_factory=_sweep_prune_defaults)
    sweep: SweepSection = field(default_factory=SweepSection)

    def validate(self) -> None:
        super().validate()
        if self.train.track_last < 1 and any(
            m.policy != "uniform" or m.criterion == "wff" for m in self.sweep.method_list
        ):
            raise ConfigError("the sweep's flip-guided methods need train.track_last >= 1")


# ---------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    kind: str  # baseline | prune | budget | premise
    seed: int
    method: Method | None = None
    reduction: float | None = None  # target BOPs reduction (None: the policy's own)

    @property
    def folder(self) -> str:
        if self.kind == "prune":
            assert self.method is not None
            suffix = "" if self.reduction is None else f"-{round(100 * self.reduction)}"
            return f"seed{self.seed}/{self.method.key}{suffix}"
        return f"seed{self.seed}/" + {"baseline": "baseline", "budget": "unpruned-budget",
                                      "premise": "premise"}[self.kind]

    @property
    def title(self) -> str:
        if self.kind == "prune":
            assert self.method is not None
            red = "own" if self.reduction is None else f"-{self.reduction:.0%}"
            return f"seed {self.seed} {self.method.label} ({red})"
        return f"seed {self.seed} {self.kind}"


def _seed_cfg(cfg: SweepConfig, seed: int) -> SweepConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


def _cell_key(cfg: SweepConfig, cell: Cell) -> Any:
    """What a finished cell depends on: everything but the sweep's own lists."""
    key = {
        "cell": [cell.kind, cell.seed, cell.method.key if cell.method else None, cell.reduction],
        "model": dataclasses.asdict(cfg.model),
        "data": dataclasses.asdict(cfg.data),
        "train": dataclasses.asdict(cfg.train),
        "prune": dataclasses.asdict(cfg.prune),
    }
    if cell.kind == "premise":
        key["flips"] = [cfg.sweep.flip_percents, cfg.sweep.flip_choices]
    return json.loads(json.dumps(key))


def _finished(cfg: SweepConfig, out: Path, cell: Cell) -> dict[str, Any] | None:
    path = out / cell.folder / "result.json"
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged record is recomputed (phases underneath are reused)
    if rec.get("key") != _cell_key(cfg, cell):
        raise ConfigError(
            f"{out / cell.folder} holds a sweep cell run with other settings; "
            "use a new output folder (-o) or delete it"
        )
    return rec


_DATA: dict[str, Any] = {}


def _dataset(cfg: SweepConfig) -> Any:
    """The sweep's data, loaded once per process (the same subset for every seed)."""
    key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = cfg.data.load(0)
    return _DATA[key]


def _write(out: Path, cell: Cell, cfg: SweepConfig, rec: dict[str, Any]) -> dict[str, Any]:
    rec = {**rec, "key": _cell_key(cfg, cell), "kind": cell.kind, "seed": cell.seed,
           "method_key": cell.method.key if cell.method else None,
           "target_reduction": cell.reduction, "folder": cell.folder}
    path = out / cell.folder / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(rec, indent=1).encode())
    return rec


def run_cell(cfg: SweepConfig, out: Path, cell: Cell) -> dict[str, Any]:
    """Compute one cell (its baseline must be finished unless it is the baseline)."""
    t0 = time.perf_counter()
    ds = _dataset(cfg)
    scfg = _seed_cfg(cfg, cell.seed)
    seed_dir = out / f"seed{cell.seed}"
    shape = tuple(ds.input_shape)
    quiet: Log = lambda s: None  # noqa: E731 (per-epoch logs are in each metrics.jsonl)
    if cell.kind == "baseline":
        model = cfg.model.build(ds, cell.seed)
        train_phase("baseline", model, ds, scfg.train, seed_dir, scfg, quiet, False)
        device = next(model.parameters()).device
        rec = measure("baseline (unpruned)", model, ds, device, {"epochs": cfg.train.epochs})
        ck = load_checkpoint(seed_dir / "baseline" / "model.pt")
        if ck.get("flips"):
            sens = compute_sensitivity(ck["flips"], model, threshold=cfg.prune.threshold)
            rec["sensitivity"] = sens.to_dict()
        return _write(out, cell, cfg, {**rec, "seconds": time.perf_counter() - t0})

    base, ck = load_model(seed_dir / "baseline" / "model.pt")
    base.to(resolve_device(cfg.train.device))
    device = next(base.parameters()).device
    p = cfg.prune
    sens = (compute_sensitivity(ck["flips"], base, threshold=p.threshold)
            if ck.get("flips") else None)

    if cell.kind == "premise":
        if sens is None:
            raise ConfigError("the premise check needs flip data: set train.track_last >= 1")

        def acc(m: torch.nn.Module) -> float:
            return evaluate(m, ds.test_x, ds.test_y, ds.mean, ds.std, device=device)[1]

        fractions = [x / 100 for x in cfg.sweep.flip_percent_list]
        curves = premise_curve(base, ck["flips"]["counts"], fractions, acc,
                               cfg.sweep.flip_choice_list, seed=cell.seed)
        flipped = sum(sens.insensitive.values()) / sum(sens.numel.values())
        baseline = _finished(cfg, out, Cell("baseline", cell.seed))
        unflipped = baseline["test_acc"] if baseline else acc(base)
        rec = {"percents": cfg.sweep.flip_percent_list, "curves": curves,
               "unflipped_acc": unflipped, "flipped_in_window": flipped}
        return _write(out, cell, cfg, {**rec, "seconds": time.perf_counter() - t0})

    tcfg = retrain_config(scfg, p.retrain_epochs, track=False)
    if cell.kind == "budget":
        model = copy.deepcopy(base)
        train_phase("unpruned-budget", model, ds, tcfg, seed_dir, scfg, quiet, False)
        rec = measure(f"unpruned + {p.retrain_epochs} epochs", model, ds, device,
                      {"epochs": cfg.train.epochs + p.retrain_epochs})
        return _write(out, cell, cfg, {**rec, "seconds": time.perf_counter() - t0})

    assert cell.method is not None
    m = cell.method
    plan = make_plan(base, shape, m.policy, sensitivity=sens, target=cell.reduction,
                     **p.plan_options)
    if plan.bops_after >= plan.bops_before:
        raise ConfigError(
            f"{cell.title}: the plan removes no channel (no weight flipped more than "
            f"prune.threshold={p.threshold} times); lower the threshold or track more epochs"
        )
    model = pruned_copy(base, plan, m.criterion, sens, p, cell.seed)
    name = Path(cell.folder).name
    train_phase(name, model, ds, tcfg, seed_dir, scfg, quiet, False, plan.to_dict())
    rec = measure(m.label, model, ds, device, {"plan": plan.to_dict()})
    rec["bops_reduction"] = plan.reduction
    return _write(out, cell, cfg, {**rec, "seconds": time.perf_counter() - t0})


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _cells(cfg: SweepConfig) -> tuple[list[Cell], dict[int, list[Cell]]]:
    s = cfg.sweep
    baselines = [Cell("baseline", seed) for seed in s.seed_list]
    deps: dict[int, list[Cell]] = {}
    for seed in s.seed_list:
        cells = [Cell("premise", seed)] if s.flip_percent_list and s.flip_choice_list else []
        for m in s.method_list:
            if m.policy == "paper":
                cells.append(Cell("prune", seed, m, None))
            else:
                cells += [Cell("prune", seed, m, r) for r in s.reduction_list]
        if cfg.prune.budget_baseline:
            cells.append(Cell("budget", seed))
        deps[seed] = cells
    return baselines, deps


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


def _train_cells(cfg: SweepConfig, out: Path, jobs: int, log: Log,
                 progress: bool) -> list[dict[str, Any]]:
    baselines, deps = _cells(cfg)
    total = len(baselines) + sum(len(v) for v in deps.values())
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
                                 initializer=_init_worker, initargs=(threads,))
    pending: dict[Future, Cell] = {}

    def finish(cell: Cell, rec: dict[str, Any], reused: bool) -> None:
        records.append({**rec, "reused": reused})
        done = len(records)
        what = _describe(rec)
        msg = f"[{done}/{total}] {cell.title}: {what}" + (" (reused)" if reused else "")
        if bar is not None:
            bar.update(1)
            bar.write(msg)
        else:
            log(msg)
        if cell.kind == "baseline":
            for d in deps[cell.seed]:
                submit(d)

    def submit(cell: Cell) -> None:
        rec = _finished(cfg, out, cell)
        if rec is not None:
            finish(cell, rec, True)
        else:
            pending[ex.submit(run_cell, cfg, out, cell)] = cell

    try:
        for b in baselines:
            submit(b)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in done:
                cell = pending.pop(f)
                finish(cell, f.result(), False)
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
    from bnnprune.engine.bench import compare_latency, op_times

    ds = _dataset(cfg)
    shape = tuple(ds.input_shape)
    x_check = normalize(ds.test_x[:512], ds.mean, ds.std).numpy()
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
        folder = out / rec["folder"]
        model, _ = load_model(folder / "model.pt")
        model = model.cpu().eval()
        prog = compile_model(model, shape)
        with torch.no_grad():
            ref = model(torch.from_numpy(x_check)).argmax(1).numpy()
        agree = float((prog(x_check).argmax(1) == ref).mean())
        speed = {"key": rec["key"], "engine_agreement": agree, "images_checked": len(x_check)}
        for label, batch in (("batch1", 1), ("batch64", 64)):
            reps = cfg.sweep.speed_repeats if batch == 1 else max(3, cfg.sweep.speed_repeats // 4)
            speed[label] = compare_latency(prog, programs[seed], batch, reps)
        # where the time goes, op by op (batch 64): explains a latency ratio far from BOPs
        speed["ops_batch64"] = op_times(prog, 64, 10)
        speed["baseline_ops_batch64"] = base_ops[seed]
        rec["speed"] = speed
        path = folder / "result.json"
        saved = {k: v for k, v in rec.items() if k != "reused"}
        atomic_write_bytes(path, json.dumps(saved, indent=1).encode())
    return len(todo)


# ---------------------------------------------------------------- aggregate


def _ms(vals: list[float]) -> dict[str, float]:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0, "mean": float("nan"), "std": float("nan")}
    return {"n": len(vals), "mean": statistics.fmean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of every (method, reduction) and the premise."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)
    base = by_kind.get("baseline", [])
    base_bops = {r["seed"]: r["bops"] for r in base}
    rows: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in by_kind.get("prune", []):
        rows.setdefault((r["method_key"], r["target_reduction"]), []).append(r)
    table = []
    for (key, target), rs in rows.items():
        entry = {
            "method_key": key, "method": rs[0]["method"], "target_reduction": target,
            "seeds": sorted(r["seed"] for r in rs),
            "test_acc": _ms([r["test_acc"] for r in rs]),
            "bops_reduction": _ms([1 - r["bops"] / base_bops[r["seed"]] for r in rs]),
            "bops": _ms([r["bops"] for r in rs]),
            "memory_bytes": _ms([r["memory_bytes"] for r in rs]),
            "channels_by_seed": {str(r["seed"]): r["channels"] for r in rs},
        }
        for b in ("batch1", "batch64"):
            sp = [r["speed"][b] for r in rs if r.get("speed")]
            entry[f"latency_ratio_{b}"] = _ms([s["latency_ratio"] for s in sp])
            entry[f"bops_ratio_{b}"] = _ms([s["bops_ratio"] for s in sp])
        agree = [r["speed"]["engine_agreement"] for r in rs if r.get("speed")]
        entry["engine_agreement_min"] = min(agree) if agree else None
        table.append(entry)
    table.sort(key=lambda e: (e["method_key"], e["target_reduction"] or 0))
    premise: dict[str, Any] = {}
    prem = by_kind.get("premise", [])
    if prem:
        percents = prem[0]["percents"]
        premise = {"percents": percents,
                   "unflipped_acc": _ms([r["unflipped_acc"] for r in prem]),
                   "flipped_in_window": _ms([r["flipped_in_window"] for r in prem]),
                   "curves": {}}
        for choice in prem[0]["curves"]:
            premise["curves"][choice] = [
                _ms([r["curves"][choice][i] for r in prem]) for i in range(len(percents))
            ]
    p_layers: dict[str, list[float]] = {}
    for r in base:
        for name, v in ((r.get("sensitivity") or {}).get("layers") or {}).items():
            p_layers.setdefault(name, []).append(v["p"])
    return {
        "baseline": {"test_acc": _ms([r["test_acc"] for r in base]),
                     "bops": _ms([r["bops"] for r in base]),
                     "memory_bytes": _ms([r["memory_bytes"] for r in base]),
                     "channels": base[0]["channels"] if base else {}},
        "budget": {"test_acc": _ms([r["test_acc"] for r in by_kind.get("budget", [])])},
        "table": table,
        "premise": premise,
        "p_layers": {n: _ms(v) for n, v in p_layers.items()},
    }


def run_sweep(cfg: SweepConfig, out_dir: str | Path, jobs: int = 1, log: Log = lambda s: None,
              progress: bool = False, command: str | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; write ``results.json`` and return it."""
    cfg.validate()
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    ds = _dataset(cfg)
    log(f"data: {ds.name}, {len(ds.train_x)} train / {len(ds.test_x)} test images; "
        f"{jobs} job(s) x {max(1, (os.cpu_count() or 1) // jobs)} thread(s)")
    records = _train_cells(cfg, out, jobs, log, progress)
    t_train = time.perf_counter() - t0
    timed = _speed(cfg, out, records, log, progress) if cfg.sweep.speed else 0
    command = command or " ".join(["bnnprune", *sys.argv[1:]])
    wall = time.perf_counter() - t0
    invocations = [*_earlier_invocations(out / "results.json"),
                   {"started": started, "command": command, "wall_seconds": wall,
                    "cells_computed": sum(not r.get("reused") for r in records),
                    "models_timed": timed}]
    results = {
        "config": cfg.to_dict(),
        "command": command,
        "jobs": jobs,
        "dataset": {"name": ds.name, "train": len(ds.train_x), "test": len(ds.test_x),
                    "input_shape": list(ds.input_shape)},
        "machine": {**machine_info(), "platform": platform.platform(),
                    "device": str(resolve_device(cfg.train.device))},
        "started": started,
        "wall_seconds": wall,
        "train_wall_seconds": t_train,
        "invocations": invocations,
        "total_wall_seconds": sum(i["wall_seconds"] for i in invocations),
        "cell_seconds": sum(r.get("seconds", 0.0) for r in records),
        "records": records,
        **aggregate(records),
    }
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1).encode())
    return results


def _earlier_invocations(path: Path) -> list[dict[str, Any]]:
    """The invocations recorded by an earlier results.json of this folder (resumed sweeps)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    if not isinstance(old, dict):
        return []
    if isinstance(old.get("invocations"), list):
        return old["invocations"]
    if "started" in old and "wall_seconds" in old:  # written before the history existed
        return [{"started": old["started"], "command": old.get("command"),
                 "wall_seconds": old["wall_seconds"], "cells_computed": None}]
    return []

