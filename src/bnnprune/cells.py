"""The cells of a sweep: what each cell is, what it depends on, where its record lives,
whether it is finished, and its claim.

A :class:`Cell` (``seed0/target+wff-30`` ...) is one unit of work of ``bnnprune sweep``. Its
record is one JSON file (:func:`record_path`, written by :func:`write_cell`); a record
written with the same settings (:func:`cell_key`) makes the cell finished
(:func:`finished`), so a resumed sweep never recomputes it, and a record written with other
settings is refused. While a process computes a cell it holds the cell's claim
(:func:`hold_claim`, :func:`bnnprune.lock.claim`), so processes sharing a sweep folder never
compute one cell at the same time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnprune.config import SCRATCH_ROW, ConfigError, SweepConfig
from bnnprune.data import load_from_config
from bnnprune.killpoint import kill_point
from bnnprune.lock import claim
from bnnprune.prune.methods import Method
from bnnprune.prune.resolve import BUDGET_KEYS, sweep_methods
from bnnprune.records import RECORD_VERSION, MachineRecord, normalized, save_record
from bnnprune.train import resolve_device

__all__ = ["CLAIMS", "CLAIM_POLL_SECONDS", "Cell", "cell_key", "finished", "hold_claim",
           "paper_cell", "record_path", "retrain_cfg", "seed_cfg", "sweep_dataset",
           "write_cell"]

CLAIMS = ".claims"  # under the sweep folder: one claim per cell, while a process computes it
CLAIM_POLL_SECONDS = 0.5  # how often a process waiting for a cell claimed elsewhere retries


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


def seed_cfg(cfg: SweepConfig, seed: int) -> SweepConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))


# prune settings no sweep cell reads: each cell names its own method and BOPs reduction
# bnnprune run's method settings a sweep cell does not read (a sweep refuses device budgets:
# bnnprune.prune.resolve.resolve_sweep), so records written before they existed still resume
UNKEYED_PRUNE = ("policy", "criterion", "target", "compare", "speed", *BUDGET_KEYS)


def cell_key(cfg: SweepConfig, cell: Cell) -> Any:
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


def retrain_cfg(cfg: SweepConfig, cell: Cell) -> SweepConfig:
    """The settings a cell retrains with: ``prune.*`` as configured when fine-tuning; from
    scratch, every round trains a fresh initialisation for the baseline's own epochs and
    learning rate (so a round costs what the baseline cost)."""
    if cell.retrain == "finetune":
        return cfg
    p = dataclasses.replace(cfg.prune, from_scratch=True, retrain_epochs=cfg.train.epochs,
                            retrain_lr=cfg.train.lr)
    return dataclasses.replace(cfg, prune=p)


def record_path(cfg: SweepConfig, out: Path, folder: str) -> Path:
    """Where the record of the cell in ``folder`` (``seed0/target+wff-30``) lives: under
    ``sweep.records`` (small JSON files meant to be committed, so a fresh clone resumes) or
    else in the run folder."""
    if cfg.sweep.records:
        return Path(cfg.sweep.records) / f"{folder}.json"
    return out / folder / "result.json"


def finished(cfg: SweepConfig, out: Path, cell: Cell) -> dict[str, Any] | None:
    path = record_path(cfg, out, cell.folder)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged record is recomputed (phases underneath are reused)
    if rec.get("key") != cell_key(cfg, cell):
        raise ConfigError(
            f"{path} holds a sweep cell run with other settings; "
            "use a new output folder (-o) or records folder, or delete it"
        )
    return rec


_DATA: dict[str, Any] = {}


def sweep_dataset(cfg: SweepConfig) -> Any:
    """The sweep's data, loaded once per process (the same subset for every seed)."""
    key = json.dumps(dataclasses.asdict(cfg.data), sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_from_config(cfg.data, 0)
    return _DATA[key]


def write_cell(cfg: SweepConfig, out: Path, cell: Cell, rec: dict[str, Any],
           seconds: float) -> dict[str, Any]:
    device = resolve_device(cfg.train.device)
    rec = {**rec, "version": RECORD_VERSION, "key": cell_key(cfg, cell), "kind": cell.kind,
           "seed": cell.seed, "method_key": cell.method.spec if cell.method else None,
           "target_reduction": cell.reduction, "folder": cell.folder,
           "seconds": seconds, "machine": dataclasses.asdict(MachineRecord.here(device))}
    save_record(record_path(cfg, out, cell.folder), rec)
    kill_point(f"sweep:recorded:{cell.folder}")
    return rec


def paper_cell(cfg: SweepConfig, seed: int) -> Cell:
    """The seed's fine-tuned paper-policy cell that its control is matched to."""
    paper = next(m for m in sweep_methods(cfg.sweep) if m.policy.iterates)
    return Cell("prune", seed, paper, None)


@contextlib.contextmanager
def hold_claim(out: Path, cell: Cell) -> Iterator[None]:
    """Hold ``cell``'s claim for the block, waiting while another process holds it."""
    item = out / CLAIMS / cell.folder
    while True:
        with claim(item, f"bnnprune sweep cell {cell.folder}") as held:
            if held is not None:
                yield
                return
        time.sleep(CLAIM_POLL_SECONDS)
