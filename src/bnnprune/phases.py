"""Phases of a pruning experiment, shared by ``bnnprune run`` and ``bnnprune sweep``.

- :func:`train_phase`: train (or retrain) a model in its own folder; one resume key
  (:func:`phase_key`) decides whether a finished phase is reused, resumed or refused.
- :func:`prune_rounds`: prune -> retrain, once, or iterated for the paper policy until the
  largest p_l stops decreasing.
- :func:`measure`: one typed :class:`~bnnprune.records.ModelRecord` (accuracy, BOPs, float
  MACs, memory, channels) per model; the record types live in :mod:`bnnprune.records`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnprune.config import ConfigError, RunConfig, TrainConfig
from bnnprune.data import Dataset
from bnnprune.flips import FlipTracker
from bnnprune.metrics import binary_channels, summarize
from bnnprune.prune import Sensitivity, compute_sensitivity, prune_once
from bnnprune.prune.methods import Method
from bnnprune.prune.resolve import plan_options
from bnnprune.records import ModelRecord, normalized
from bnnprune.train import TrainResult, dist, evaluate, load_checkpoint, resolve_device, train

__all__ = [
    "phase_key",
    "prune_rounds",
    "retrain_config",
    "train_phase",
    "measure",
]

Log = Callable[[str], None]


def phase_key(cfg: RunConfig, tcfg: TrainConfig, plan: dict[str, Any] | None) -> Any:
    """What a trained phase depends on: model, data, training settings, the plan it trains."""
    return normalized({
        "model": cfg.model.key(),
        "data": cfg.data.key(),
        "train": dataclasses.asdict(tcfg),
        "plan": plan,
        "from_scratch": cfg.prune.from_scratch if plan else None,
    })


def retrain_config(cfg: RunConfig, epochs: int, track: bool) -> TrainConfig:
    """The training settings of a retraining phase of ``epochs`` epochs: the baseline's
    schedule shape at ``prune.retrain_lr``; when it ends on a plateau, flips are tracked on
    that plateau only (as in the baseline), so the paper policy compares like with like."""
    t = dataclasses.replace(cfg.train, epochs=epochs, lr=cfg.prune.retrain_lr,
                            plateau_epochs=min(cfg.train.plateau_epochs, epochs - 1))
    window = t.plateau_epochs if t.plateau_epochs else epochs
    t.track_last = min(cfg.train.track_last, window) if track else 0
    return t


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


def train_phase(name: str, model: nn.Module, ds: Dataset, tcfg: TrainConfig, folder: Path,
                cfg: RunConfig, log: Log, progress: bool,
                plan: dict[str, Any] | None = None,
                tensorboard: Path | None = None) -> TrainResult | dict[str, Any]:
    """Train one phase in ``folder``; reuse it when finished with the same settings, resume
    it after a crash. A folder written with other settings is an error, never overwritten.
    ``tensorboard``: a folder for this phase's TensorBoard event files."""
    key = phase_key(cfg, tcfg, plan)
    state, ck = dist.main_decides(lambda: _phase_state(folder, key))
    if state == "done":
        model.load_state_dict(ck["state_dict"])
        model.to(dist.local_device(resolve_device(tcfg.device)))
        log(f"[{name}] reusing finished phase {folder / 'model.pt'}")
        return ck
    resume = state == "resume"
    log(f"[{name}] {'resuming' if resume else 'training'}: {tcfg.epochs} epochs, lr {tcfg.lr:g}")

    def on_epoch(rec: dict[str, Any]) -> None:
        log(f"[{name}] epoch {rec['epoch']}/{tcfg.epochs}: loss {rec['train_loss']:.4f}, "
            f"test {rec['test_acc']:.2%} ({rec['seconds']:.0f}s)")

    return train(model, ds, tcfg, out_dir=folder, resume=resume, progress=progress,
                 meta={"phase_key": key, "run_config": cfg.to_dict()}, desc=name,
                 on_epoch=on_epoch, augment_data=cfg.data.augment,
                 tensorboard=tensorboard)


def tracker_of(res: TrainResult | dict[str, Any], model: nn.Module) -> FlipTracker | None:
    """The phase's flip tracker, rebuilt from the checkpoint when the phase was reused."""
    if isinstance(res, TrainResult):
        return res.tracker
    if not res.get("flips"):
        return None
    return FlipTracker.from_state(model, res["flips"])


def history_of(res: TrainResult | dict[str, Any]) -> list[dict[str, Any]]:
    """Per-epoch metrics of a phase (from the result, or the reused checkpoint)."""
    if isinstance(res, TrainResult):
        return list(res.history)
    return list(res.get("history") or [])


def measure(label: str, model: nn.Module, ds: Dataset, device: torch.device,
            **extra: Any) -> ModelRecord:
    """Accuracy on the test set (and the validation split, if any) and the cost counts of
    ``model``."""
    s = summarize(model, ds.input_shape)
    _, acc = evaluate(model, ds.test_x, ds.test_y, ds.mean, ds.std, device=device)
    if ds.val_x is not None:
        extra.setdefault("val_acc", evaluate(model, ds.val_x, ds.val_y, ds.mean, ds.std,
                                             device=device)[1])
    return ModelRecord(label=label, test_acc=acc, bops=s.bops, float_macs=s.float_macs,
                       binary_params=s.binary_params, float_params=s.float_params,
                       memory_bytes=s.memory_bytes, channels=binary_channels(model), **extra)


@dataclass
class Rounds:
    """The outcome of :func:`prune_rounds`: one record per round and the last model."""

    records: list[ModelRecord]
    model: nn.Module
    stop: str  # why the loop ended


def prune_rounds(method: Method, base: nn.Module, sens: Sensitivity | None, ds: Dataset,
                 cfg: RunConfig, target: float | None, folder_of: Callable[[int], Path],
                 log: Log, progress: bool, seed: int, latency_model: Any = None,
                 tensorboard: Path | None = None, budget: Any = None,
                 footprint_model: Any = None) -> Rounds:
    """Prune ``base`` with ``method`` and retrain, once; for the paper policy repeat
    (retraining with flip tracking) until the largest p_l stops decreasing or
    ``prune.max_rounds`` rounds are done. Round r trains in ``folder_of(r)``. With
    ``prune.target_latency`` the plan is searched on ``latency_model`` (built for ``base``),
    with a device ``budget`` on ``footprint_model`` (also built for ``base``)."""
    p = cfg.prune
    paper = method.policy.iterates
    rounds = method.policy.rounds(p.max_rounds)
    device = next(base.parameters()).device
    tcfg = retrain_config(cfg, p.retrain_epochs, track=paper and cfg.train.track_last > 0)
    records: list[ModelRecord] = []
    model, cur = base, sens
    stop = "one round"
    for r in range(1, rounds + 1):
        by_model = p.target_latency is not None or budget is not None
        plan, pruned = prune_once(
            model, method, tuple(ds.input_shape), sensitivity=cur,
            target=None if by_model else target, options=plan_options(p),
            target_latency=p.target_latency, latency_model=latency_model, budget=budget,
            footprint_model=footprint_model, seed=seed, data=ds, from_scratch=p.from_scratch)
        if plan.bops_after >= plan.bops_before:
            stop = f"round {r}: the plan removes no channel"
            log(stop)
            break
        for note in plan.notes():
            log(f"round {r}: {note}")
        name = folder_of(r).name
        res = train_phase(name, pruned, ds, tcfg, folder_of(r), cfg, log, progress,
                          plan.to_dict(), tensorboard / name if tensorboard else None)
        label = method.spec + (f" (round {r})" if paper else "")
        rec = measure(label, pruned, ds, device, plan=plan.to_dict(), round=r,
                      epochs=cfg.train.epochs + r * p.retrain_epochs,
                      p=dict(cur.p) if cur else None, max_p=cur.max_p if cur else None)
        records.append(rec)
        model = pruned
        if not paper:
            break
        flips = tracker_of(res, pruned)
        new = compute_sensitivity(flips, pruned, threshold=p.threshold) if flips else None
        if new is None or new.max_p >= cur.max_p:
            stop = f"round {r}: largest p_l stopped decreasing"
            log(stop)
            break
        cur = new
        stop = f"{rounds} rounds (prune.max_rounds)"
    if not records:
        raise ConfigError(
            f"method {method.spec}: the plan removes no channel; lower prune.threshold, "
            "track more epochs, use the target policy or prune.round_to = 1 (channel "
            "rounding can swallow small cuts)"
        )
    return Rounds(records, model, stop)
