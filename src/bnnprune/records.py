"""Record types: what a phase or a sweep cell measured, as versioned JSON.

:class:`ModelRecord` is the row of every results table; :class:`DatasetRecord` and
:class:`MachineRecord` say on what data and where. Phases (:mod:`bnnprune.phases`) and the
sweep (:mod:`bnnprune.sweep`) write them; reports (:mod:`bnnprune.report`) read them back with
``from_dict``. The JSON layout (``RECORD_VERSION``, :func:`save_record`) is what committed
records hold, so it never changes silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bnnprune.atomic import atomic_write_bytes
from bnnprune.machine import cpu_name

if TYPE_CHECKING:
    from bnnprune.data import Dataset

__all__ = [
    "RECORD_VERSION",
    "DatasetRecord",
    "MachineRecord",
    "ModelRecord",
    "machine_label",
    "normalized",
    "save_record",
]

RECORD_VERSION = 2


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ModelRecord:
    """What one trained model measured: the row of every results table."""

    label: str  # "baseline", "target+wff", "paper+wff (round 2)", "unpruned +2 epochs" ...
    test_acc: float
    bops: int
    float_macs: int
    binary_params: int
    float_params: int
    memory_bytes: int
    channels: dict[str, int]
    epochs: int | None = None  # total training epochs behind this model
    plan: dict[str, Any] | None = None
    round: int | None = None
    p: dict[str, float] | None = None  # p_l per layer of the model this one was pruned from
    max_p: float | None = None
    val_acc: float | None = None  # on the validation split, where the data has one
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRecord:
        if "label" not in d and "method" in d:  # version 1 wrote the label as "method"
            d = {**d, "label": d["method"]}
        return _from_dict(cls, d)


@dataclass
class DatasetRecord:
    name: str
    train: int
    test: int
    input_shape: list[int]
    val: int = 0  # validation images held out of the training images

    @classmethod
    def of(cls, ds: Dataset) -> DatasetRecord:
        return cls(ds.name, len(ds.train_x), len(ds.test_x), list(ds.input_shape), ds.num_val)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetRecord:
        return _from_dict(cls, d)


@dataclass
class MachineRecord:
    """Where a result was computed: every page states it per result."""

    cpu: str
    logical_cores: int | None
    torch_threads: int
    device: str
    platform: str
    torch: str
    python: str = field(default_factory=platform.python_version)

    @classmethod
    def here(cls, device: str | torch.device) -> MachineRecord:
        dev = str(device)
        if dev.startswith("cuda") and torch.cuda.is_available():
            dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
        return cls(cpu_name(), os.cpu_count(), torch.get_num_threads(), dev, platform.platform(),
                   torch.__version__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MachineRecord:
        return _from_dict(cls, d)

    @property
    def short(self) -> str:
        return machine_label(self.__dict__)


def machine_label(m: dict[str, Any]) -> str:
    """A machine record (or its dict in a result file) in a few words: CPU, threads, device."""
    return f"{m.get('cpu')}, {m.get('torch_threads')} threads, {m.get('device')}"


def normalized(x: Any) -> Any:
    """``x`` as it reads back from JSON (tuples -> lists, keys -> str)."""
    return json.loads(json.dumps(x))


def save_record(path: Path, rec: dict[str, Any]) -> None:
    """One record, as committed: sorted keys, one line per key, a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(normalized(rec), indent=1, sort_keys=True) + "\n")
                       .encode())
