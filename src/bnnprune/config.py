"""Experiment configuration: dataclasses, TOML loading and CLI-style overrides.

A config file has the tables ``[model]``, ``[data]``, ``[train]`` (and ``[prune]`` for the
pruning pipeline); every key is a field of the matching dataclass. Unknown keys and values
of the wrong type raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

__all__ = [
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "TrainConfig",
    "load_config",
]


MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


@dataclass
class ModelConfig:
    name: str = "small"
    width: float = 0.5
    pad_value: float = 1.0
    scale: bool = False

    def validate(self) -> None:
        from bnnprune.models import MODELS

        if self.name not in MODELS:
            raise ConfigError(
                f"unknown model {self.name!r}; choose from {', '.join(sorted(MODELS))}"
            )
        if not self.width > 0:
            raise ConfigError(f"model.width must be > 0, got {self.width}")
        if self.pad_value not in (1.0, -1.0):
            raise ConfigError(f"model.pad_value must be 1 or -1, got {self.pad_value}")

    def build(self, dataset: Any, seed: int) -> Any:
        """The configured zoo model for ``dataset``'s input shape, initialised from ``seed``."""
        from bnnprune.models import build_model
        from bnnprune.train import seed_everything

        seed_everything(seed)
        return build_model(
            self.name,
            width=self.width,
            in_channels=dataset.in_channels,
            num_classes=dataset.num_classes,
            image_size=dataset.image_size,
            pad_value=self.pad_value,
            scale=self.scale,
        )


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: str | None = None
    download: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool = True

    def validate(self) -> None:
        from bnnprune.data import canonical_name

        canonical_name(self.name)  # raises DatasetError naming the valid datasets
        for k in ("train_subset", "test_subset"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise ConfigError(f"data.{k} must be >= 0 (0: all images), got {v}")

    def load(self, seed: int = 0) -> Any:
        """Load the configured dataset (subsets drawn with ``seed``; 0 or None: all images)."""
        from bnnprune.data import load_dataset

        return load_dataset(
            self.name,
            root=self.root,
            download=self.download,
            train_subset=self.train_subset or None,
            test_subset=self.test_subset or None,
            seed=seed,
        )


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    schedule: str = "cosine"  # cosine | step | constant
    step_epochs: int = 2  # step schedule: decay every N epochs
    step_gamma: float = 0.1
    weight_decay: float = 0.0  # on full-precision parameters
    binary_weight_decay: float = 0.0  # on latent binary weights (usually 0)
    track_last: int = 1  # pruning interval: the last K epochs (0 = no flip tracking)
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(
                f"train.schedule must be cosine, step or constant, got {self.schedule!r}"
            )
        if self.step_epochs < 1:
            raise ConfigError(f"train.step_epochs must be >= 1, got {self.step_epochs}")
        if not 0 <= self.track_last <= self.epochs:
            raise ConfigError(
                f"train.track_last must be between 0 and epochs ({self.epochs}), "
                f"got {self.track_last}"
            )
        if self.weight_decay < 0 or self.binary_weight_decay < 0:
            raise ConfigError("weight decay must be >= 0")


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against a simple annotation (str, int, float, bool, X | None)."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key} must be of type {tp.__name__}, got {value!r}")


def update_dataclass(obj: Any, values: dict[str, Any], prefix: str) -> None:
    """Set fields of ``obj`` from ``values`` with type checks; unknown keys are errors."""
    hints = typing.get_type_hints(type(obj))
    for k, v in values.items():
        if k not in hints:
            raise ConfigError(f"unknown config key '{prefix}{k}'; valid keys: {', '.join(hints)}")
        setattr(obj, k, _coerce(v, hints[k], f"{prefix}{k}"))


def apply_sections(cfg: Any, data: dict[str, Any]) -> Any:
    """Apply a nested dict (TOML tables) onto a config of dataclass sections."""
    sections = {f.name for f in dataclasses.fields(cfg)}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(
                f"unknown config table [{section}]; valid tables: {', '.join(sorted(sections))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        update_dataclass(getattr(cfg, section), values, f"{section}.")
    return cfg


def load_config(path: str | Path | None, cls: type = ExperimentConfig) -> Any:
    """Read a TOML config (None -> defaults) into ``cls``."""
    cfg = cls()
    if path is None:
        return cfg
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # bounded: a huge file is refused unread
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {p} is larger than {MAX_CONFIG_BYTES} bytes; a bnnprune config "
            "is a few hundred bytes"
        )
    try:  # TOMLDecodeError, bad UTF-8 and integers of thousands of digits are ValueErrors
        data = tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ConfigError(f"config file {p} is not valid TOML: nested too deeply") from None
    except ValueError as e:
        raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    return apply_sections(cfg, data)
