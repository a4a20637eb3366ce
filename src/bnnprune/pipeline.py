"""The main job, ``bnnprune run``: train with flip tracking -> sensitivity -> plan -> surgery ->
retrain (repeat for the paper policy) -> compare against baselines at equal BOPs -> report.

Every phase writes its own folder under the run folder and is skipped when its ``model.pt``
already exists with the same settings, or resumed from its ``checkpoint.pt``: a crashed run
continues where it stopped when started again with the same command.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnprune.atomic import atomic_write_bytes
from bnnprune.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from bnnprune.data import Dataset
from bnnprune.flips import FlipTracker
from bnnprune.metrics import binary_channels, summarize
from bnnprune.prune import (
    Criterion,
    Sensitivity,
    apply_plan,
    check_criterion,
    compute_sensitivity,
    make_plan,
)
from bnnprune.prune.interop import with_gradient_data
from bnnprune.report.plots import write_flip_plots
from bnnprune.train import (
    TrainResult,
    dist,
    evaluate,
    load_checkpoint,
    resolve_device,
    train,
)

__all__ = ["PruneConfig", "RunConfig", "run_pipeline"]

COMPARE_METHODS = ("uniform", "random", "magnitude", "bn_scale", "wff")


@dataclass
class PruneConfig:
    policy: str = "target"  # paper | target | uniform
    target: float = 0.5  # BOPs reduction for target / uniform
    criterion: str = "wff"  # which channels go: wff | random | magnitude | bn_scale
    threshold: int = 0  # a weight is insensitive when it flipped more than this
    round_to: int = 1  # keep channel counts multiples of this
    min_channels: int = 1
    exclude: str = ""  # comma-separated binary layer names never pruned
    max_rounds: int = 4  # paper policy: train -> prune -> retrain rounds at most
    retrain_epochs: int = 2
    retrain_lr: float = 1e-3
    from_scratch: bool = False  # retrain pruned models from a fresh initialisation
    compare: str = "uniform,random"  # methods pruned to the same BOPs and retrained the same
    budget_baseline: bool = True  # also train the unpruned model for the retraining epochs

    def validate(self) -> None:
        if self.policy not in ("paper", "target", "uniform"):
            raise ConfigError(f"prune.policy must be paper, target or uniform, got {self.policy!r}")
        if not 0 < self.target < 1:
            raise ConfigError(f"prune.target must be a BOPs reduction in (0, 1), got {self.target}")
        try:
            check_criterion(self.criterion)
        except ValueError as e:
            raise ConfigError(f"prune.criterion: {e}") from None
        for key in ("round_to", "min_channels", "max_rounds", "retrain_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"prune.{key} must be >= 1, got {getattr(self, key)}")
        if self.threshold < 0:
            raise ConfigError(f"prune.threshold must be >= 0, got {self.threshold}")
        if not self.retrain_lr > 0:
            raise ConfigError(f"prune.retrain_lr must be > 0, got {self.retrain_lr}")
        bad = [m for m in self.compare_methods if m not in COMPARE_METHODS]
        if bad:
            raise ConfigError(
                f"unknown compare method(s) {bad}; choose from {', '.join(COMPARE_METHODS)}"
            )

    @property
    def compare_methods(self) -> list[str]:
        return [m.strip() for m in self.compare.split(",") if m.strip()]

    @property
    def exclude_layers(self) -> list[str]:
        return [m.strip() for m in self.exclude.split(",") if m.strip()]

    @property
    def plan_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`bnnprune.prune.make_plan` set by this config."""
        return {"round_to": self.round_to, "min_channels": self.min_channels,
                "exclude": self.exclude_layers}

    @property
    def rounds(self) -> int:
        """Prune -> retrain rounds at most (only the paper policy iterates)."""
        return self.max_rounds if self.policy == "paper" else 1

    @property
    def baseline_methods(self) -> list[str]:
        """The compared methods other than the chosen one."""
        return [m for m in self.compare_methods
                if not (m == self.criterion and self.policy == "target")]


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        if self.prune.policy == "paper" and self.train.track_last < 1:
            raise ConfigError("the paper policy needs flip data: set train.track_last >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Log = Callable[[str], None]


def retrain_config(cfg: RunConfig, epochs: int, track: bool) -> TrainConfig:
    t = dataclasses.replace(cfg.train, epochs=epochs, lr=cfg.prune.retrain_lr)
    t.track_last = min(cfg.train.track_last, epochs) if track else 0
    return t


def _normalized(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _phase_state(folder: Path, key: Any) -> tuple[str, dict[str, Any] | None]:
    """``("done", model checkpoint)``, ``("resume", None)`` or ``("new", None)`` for a phase
    folder; a folder written with other settings is an error."""
    for file in ("model.pt", "checkpoint.pt"):
        if (folder / file).is_file():
            ck = load_checkpoint(folder / file)
            if (ck.get("meta") or {}).get("phase_key") != key:
                raise ConfigError(
                    f"{folder} holds a phase run with other settings; "
                    "use a new output folder (-o) or delete it"
                )
            return ("done", ck) if file == "model.pt" else ("resume", None)
    return "new", None


def train_phase(
    name: str,
    model: nn.Module,
    ds: Dataset,
    tcfg: TrainConfig,
    out: Path,
    cfg: RunConfig,
    log: Log,
    progress: bool,
    plan: dict[str, Any] | None = None,
) -> TrainResult | dict[str, Any]:
    """Train one phase in ``out/name``; reuse it when finished with the same settings, resume
    it after a crash. A folder written with other settings is an error, never overwritten."""
    folder = out / name
    key = _normalized(
        {
            "model": dataclasses.asdict(cfg.model),
            "data": dataclasses.asdict(cfg.data),
            "train": dataclasses.asdict(tcfg),
            "plan": plan,
            "from_scratch": cfg.prune.from_scratch if plan else None,
        }
    )
    state, ck = dist.main_decides(lambda: _phase_state(folder, key))
    if state == "done":
        model.load_state_dict(ck["state_dict"])
        model.to(dist.local_device(resolve_device(tcfg.device)))
        log(f"[{name}] reusing finished phase {folder / 'model.pt'}")
        return ck
    resume = state == "resume"
    log(f"[{name}] {'resuming' if resume else 'training'}: {tcfg.epochs} epochs, lr {tcfg.lr:g}")

    def on_epoch(rec: dict[str, Any]) -> None:
        log(
            f"[{name}] epoch {rec['epoch']}/{tcfg.epochs}: loss {rec['train_loss']:.4f}, "
            f"test {rec['test_acc']:.2%} ({rec['seconds']:.0f}s)"
        )

    return train(
        model,
        ds,
        tcfg,
        out_dir=folder,
        resume=resume,
        progress=progress,
        meta={"phase_key": key, "run_config": cfg.to_dict()},
        desc=name,
        on_epoch=on_epoch,
        augment_data=cfg.data.augment,
    )


def tracker_of(res: TrainResult | dict[str, Any], model: nn.Module) -> FlipTracker | None:
    """The phase's flip tracker, rebuilt from the checkpoint when the phase was reused."""
    if isinstance(res, TrainResult):
        return res.tracker
    if not res.get("flips"):
        return None
    tracker = FlipTracker(model)
    tracker.load_state_dict(res["flips"])
    return tracker


def measure(
    name: str, model: nn.Module, ds: Dataset, device: torch.device, extra: dict[str, Any]
) -> dict[str, Any]:
    s = summarize(model, ds.input_shape)
    _, acc = evaluate(model, ds.test_x, ds.test_y, ds.mean, ds.std, device=device)
    return {
        "method": name,
        "test_acc": acc,
        "bops": s.bops,
        "float_macs": s.float_macs,
        "binary_params": s.binary_params,
        "float_params": s.float_params,
        "memory_bytes": s.memory_bytes,
        "channels": binary_channels(model),
        **extra,
    }


def reinit(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()


def pruned_copy(source: nn.Module, plan: Any, criterion: str | Criterion,
                sens: Sensitivity | None, p: PruneConfig, seed: int) -> nn.Module:
    """``source`` pruned to ``plan`` by ``criterion`` (seeded when random), re-initialised
    when ``p.from_scratch``."""
    kwargs = {"seed": seed} if criterion == "random" else {}
    model = apply_plan(source, plan, criterion, sens, **kwargs).model
    if p.from_scratch:
        reinit(model)
    return model


def run_pipeline(
    cfg: RunConfig, out_dir: str | Path, log: Log = lambda s: None, progress: bool = False
) -> dict[str, Any]:
    """Run the whole job; write results.json (and return it). Plots and report are separate.

    Under torchrun every process runs this; training phases use DistributedDataParallel,
    everything else is computed identically on every rank, and only rank 0 writes files.
    """
    cfg.validate()
    out = Path(out_dir)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ds = dist.main_first(lambda: cfg.data.load(cfg.train.seed))
    log(
        f"data: {ds.name}, {len(ds.train_x)} train / {len(ds.test_x)} test images "
        f"{tuple(ds.input_shape)}"
    )
    shape = tuple(ds.input_shape)
    base = cfg.model.build(ds, cfg.train.seed)
    track = cfg.train.track_last > 0
    if not track and cfg.prune.policy != "uniform":
        raise ConfigError("flip-guided pruning needs flip data: set train.track_last >= 1")
    phases: dict[str, float] = {}

    t0 = time.perf_counter()
    res = train_phase("baseline", base, ds, cfg.train, out, cfg, log, progress)
    phases["baseline"] = time.perf_counter() - t0
    device = next(base.parameters()).device
    flips = tracker_of(res, base)
    if flips is not None and dist.is_main():
        write_flip_plots(flips, out)
    sens = compute_sensitivity(flips, base, threshold=cfg.prune.threshold) if flips else None
    baseline = measure("baseline (unpruned)", base, ds, device, {"epochs": cfg.train.epochs})
    log(f"baseline: test {baseline['test_acc']:.2%}, {baseline['bops'] / 1e6:.2f} M BOPs")
    p = cfg.prune
    opts = p.plan_options

    def timed_phase(name: str, model: nn.Module, tcfg: TrainConfig, plan: Any = None) -> Any:
        t0 = time.perf_counter()
        res = train_phase(
            name,
            model,
            ds,
            tcfg,
            out,
            cfg,
            log,
            progress,
            plan.to_dict() if plan is not None else None,
        )
        phases[name] = time.perf_counter() - t0
        return res

    def report(name: str, rec: dict[str, Any]) -> None:
        log(f"{name}: test {rec['test_acc']:.2%}, BOPs -{1 - rec['bops'] / baseline['bops']:.1%}")

    # ---- the chosen method (paper: iterate; target/uniform: one shot)
    rounds: list[dict[str, Any]] = []
    model, cur_sens = base, sens
    for r in range(1, p.rounds + 1):
        plan = make_plan(model, shape, p.policy, sensitivity=cur_sens, target=p.target, **opts)
        if plan.bops_after >= plan.bops_before:
            log(f"round {r}: nothing left to prune (no insensitive weights above threshold)")
            break
        for note in plan.notes():
            log(f"round {r}: {note}")
        crit = with_gradient_data(p.criterion, ds)  # tp:taylor: gradients on training batches
        pruned = pruned_copy(model, plan, crit, cur_sens, p, cfg.train.seed)
        name = f"pruned-round{r}" if p.policy == "paper" else "pruned"
        tcfg = retrain_config(cfg, p.retrain_epochs, track=track and p.policy == "paper")
        flips = tracker_of(timed_phase(name, pruned, tcfg, plan), pruned)
        new_sens = compute_sensitivity(flips, pruned, threshold=p.threshold) if flips else None
        label = f"{p.policy} + {p.criterion}" + (f" (round {r})" if p.policy == "paper" else "")
        rec = measure(label, pruned, ds, device, {"plan": plan.to_dict(), "round": r})
        rec["max_p"] = cur_sens.max_p if cur_sens else None
        rec["p"] = dict(cur_sens.p) if cur_sens else None
        rounds.append(rec)
        report(name, rec)
        model = pruned
        if p.policy != "paper":
            break
        if new_sens is None or new_sens.max_p >= cur_sens.max_p:
            log(f"round {r}: largest p_l stopped decreasing; stopping")
            break
        cur_sens = new_sens
    if not rounds:
        raise ConfigError(
            "the plan removes no channel: lower prune.threshold or use the target policy"
        )
    final = rounds[-1]
    achieved = 1 - final["bops"] / baseline["bops"]
    retrain_budget = p.retrain_epochs * len(rounds)
    retrain_cfg = retrain_config(cfg, retrain_budget, track=False)

    # ---- baselines at the same BOPs and the same training budget
    compared: list[dict[str, Any]] = []
    for method in p.baseline_methods:
        policy, crit = ("uniform", p.criterion) if method == "uniform" else ("target", method)
        if policy == "target" and sens is None:
            log(f"compare {method}: skipped, needs flip data")
            continue
        plan = make_plan(base, shape, policy, sensitivity=sens, target=achieved, **opts)
        pruned = pruned_copy(base, plan, crit, sens, p, cfg.train.seed)
        timed_phase(f"compare-{method}", pruned, retrain_cfg, plan)
        rec = measure(f"{policy} + {crit}", pruned, ds, device, {"plan": plan.to_dict()})
        compared.append(rec)
        report(f"compare-{method}", rec)

    budget = None
    if p.budget_baseline:
        unpruned = copy.deepcopy(base)
        timed_phase("unpruned-budget", unpruned, retrain_cfg)
        budget = measure(
            f"unpruned + {retrain_budget} epochs",
            unpruned,
            ds,
            device,
            {"epochs": cfg.train.epochs + retrain_budget},
        )

    results = {
        "config": cfg.to_dict(),
        "dataset": {
            "name": ds.name,
            "train": len(ds.train_x),
            "test": len(ds.test_x),
            "input_shape": list(shape),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "threads": torch.get_num_threads(),
            "device": str(device),
            "torch": torch.__version__,
        },
        "baseline": baseline,
        "sensitivity": sens.to_dict() if isinstance(sens, Sensitivity) else None,
        "method": f"{p.policy} + {p.criterion}",
        "rounds": rounds,
        "pruned": final,
        "bops_reduction": achieved,
        "accuracy_drop": baseline["test_acc"] - final["test_acc"],
        "retrain_epochs": retrain_budget,
        "compared": compared,
        "unpruned_budget": budget,
        "phase_seconds": phases,
        "wall_seconds": time.perf_counter() - t_start,
    }
    if dist.is_main():
        atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
    return results
