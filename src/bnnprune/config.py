"""Experiment configuration: dataclasses, TOML loading and CLI-style overrides.

A config file has the tables ``[model]``, ``[data]``, ``[train]`` (``[prune]`` for
``bnnprune run``, ``[sweep]`` for ``bnnprune sweep``); every key is a field of the matching
dataclass. Unknown keys and values of the wrong type raise :class:`ConfigError` naming the
key. Configs are passive: models and data are built from them by
:func:`bnnprune.models.build_from_config` and :func:`bnnprune.data.load_from_config`, and
what the ``[prune]`` and ``[sweep]`` settings mean (methods, their data needs, plan options)
is read and checked by the pruning code (:mod:`bnnprune.prune.resolve`), which this module
does not import.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same API from the tomli package
    import tomli as tomllib

__all__ = [
    "PLATEAU_RULES",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "PruneConfig",
    "RunConfig",
    "SweepConfig",
    "SweepSection",
    "TrainConfig",
    "load_config",
]


MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    """A configuration key or value is not valid."""


@dataclass
class ModelConfig:
    # a zoo model, or a factory "package.module:function" (see bnnprune.models.resolve_factory)
    name: str = "small"
    width: float = 0.5  # width, pad_value and scale: zoo models only (a factory takes kwargs)
    pad_value: float = 1.0
    scale: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)  # more keyword arguments of the model

    def key(self) -> dict[str, Any]:
        """The settings as resume keys record them; no ``kwargs`` entry when there are none,
        so folders written before kwargs existed still resume."""
        d = dataclasses.asdict(self)
        if not d["kwargs"]:
            del d["kwargs"]
        return d

    @property
    def label(self) -> str:
        """How messages name the model: the zoo name and width, or the factory and kwargs."""
        return model_label(dataclasses.asdict(self))

    def validate(self) -> None:
        from bnnprune.imports import is_import_spec
        from bnnprune.models import MODELS, check_plain_kwargs, resolve_factory

        try:
            check_plain_kwargs(self.kwargs, "model.kwargs")
            if is_import_spec(self.name):
                resolve_factory(self.name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not is_import_spec(self.name) and self.name not in MODELS:
            raise ConfigError(
                f"unknown model {self.name!r}; choose from {', '.join(sorted(MODELS))} "
                "or name a factory as package.module:function"
            )
        if not self.width > 0:
            raise ConfigError(f"model.width must be > 0, got {self.width}")
        if self.pad_value not in (1.0, -1.0):
            raise ConfigError(f"model.pad_value must be 1 or -1, got {self.pad_value}")


def model_label(model: dict[str, Any], quote: str = "") -> str:
    """A model config (a ModelConfig as a dict, as results files store it) in one phrase:
    ``small (width 0.5)``, or a factory with its kwargs ``pkg.nets:build(width=2)``;
    ``quote`` (e.g. a backtick) surrounds the name."""
    from bnnprune.imports import is_import_spec

    if is_import_spec(model["name"]):
        args = ", ".join(f"{k}={json.dumps(v)}" for k, v in (model.get("kwargs") or {}).items())
        return f"{quote}{model['name']}({args}){quote}"
    return f"{quote}{model['name']}{quote} (width {model['width']})"


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: str | None = None
    download: bool = False
    train_subset: int | None = None
    test_subset: int | None = None
    augment: bool = True
    # training images held out (after the train subset) as a validation split; 0: none
    val_subset: int = 0

    def key(self) -> dict[str, Any]:
        """The settings as resume keys record them; no ``val_subset`` entry without a
        validation split, so folders written before it existed still resume."""
        d = dataclasses.asdict(self)
        if not d["val_subset"]:
            del d["val_subset"]
        return d

    def validate(self) -> None:
        from bnnprune.data import canonical_name

        canonical_name(self.name)  # raises DatasetError naming the valid datasets
        for k in ("train_subset", "test_subset", "val_subset"):
            v = getattr(self, k)
            if v is not None and v < 0:
                raise ConfigError(f"data.{k} must be >= 0 (0: all images), got {v}")


SCHEDULES = ("cosine", "step", "constant")


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3
    schedule: str = "cosine"  # cosine | step | constant
    step_epochs: int = 2  # step schedule: decay every N epochs
    step_gamma: float = 0.1
    # plateau: the last K epochs hold the learning rate at lr * plateau_lr (> 0), and the
    # cosine / step schedule runs over the epochs before it (cosine then ends at that value)
    plateau_epochs: int = 0
    plateau_lr: float = 0.1
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
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"train.schedule must be cosine, step or constant, got {self.schedule!r}"
            )
        if self.step_epochs < 1:
            raise ConfigError(f"train.step_epochs must be >= 1, got {self.step_epochs}")
        if not 0 <= self.plateau_epochs < self.epochs:
            raise ConfigError(
                f"train.plateau_epochs must be between 0 and epochs - 1 ({self.epochs - 1}), "
                f"got {self.plateau_epochs}"
            )
        if not 0 < self.plateau_lr <= 1:
            raise ConfigError(f"train.plateau_lr must be in (0, 1], got {self.plateau_lr}")
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


@dataclass
class PruneConfig:
    # The default method follows the near-convergence trial (docs/results.md): the simplest
    # pruning method no comparison resolves from the best-ranked one (uniform+flip_magnitude,
    # 0.02 pp ahead); the paper's own method is policy = "paper".
    policy: str = "uniform"  # paper | target | uniform
    target: float = 0.5  # BOPs reduction for target / uniform
    criterion: str = "magnitude"  # which channels go (see bnnprune.prune.CRITERIA)
    threshold: int = 0  # a weight is insensitive when it flipped more than this
    # channel counts: "auto" keeps those the engine's kernels pay for (8-channel output
    # vectors, 64-bit input words, dense patch rows); N keeps multiples of N. The library's
    # default (bnnprune.prune.DEFAULTS), held equal by tests/prune/test_round_auto.py
    round_to: int | str = "auto"
    min_channels: int = 1
    exclude: list[str] = field(default_factory=list)  # binary layers never pruned
    # keep full-precision producers (a first conv feeding only binary layers) unpruned
    keep_fp: bool = False
    # prune to this fraction of the unpruned engine latency (replaces the BOPs target)
    target_latency: float | None = None
    latency_batch: int = 1  # batch size and threads the latency target is measured at
    latency_threads: int = 1
    # prune to a device budget instead of the BOPs target: the C export's const data and
    # scratch arena in bytes, and its instructions per inference on the Cortex-M core ``mcu``
    # (counted under qemu emulation; checked by bnnprune.prune.resolve)
    flash_budget: int | None = None
    ram_budget: int | None = None
    insn_budget: int | None = None
    mcu: str | None = None
    max_rounds: int = 4  # paper policy: train -> prune -> retrain rounds at most
    retrain_epochs: int = 2
    retrain_lr: float = 1e-3
    from_scratch: bool = False  # retrain pruned models from a fresh initialisation
    # methods pruned to the same BOPs and retrained the same ("policy+criterion"; a bare
    # policy takes this config's criterion, a bare criterion the target policy)
    # (default: the paper's flip-guided allocation and channel choice, and chance)
    compare: list[str] = field(default_factory=lambda: ["target+wff", "uniform+random"])
    budget_baseline: bool = True  # also train the unpruned model for the retraining epochs
    # bnnprune run: time the baseline and the pruned models on the packed engine (batch 1 and
    # 64) and compute their C export's flash and RAM (a sweep has sweep.speed instead)
    speed: bool = True

    def validate(self) -> None:
        """Checks of plain values; what the methods, rounding and latency target mean is
        checked by the pruning code (:func:`bnnprune.prune.resolve.resolve_prune`)."""
        if not 0 < self.target < 1:
            raise ConfigError(f"prune.target must be a BOPs reduction in (0, 1), got {self.target}")
        for key in ("min_channels", "max_rounds", "retrain_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"prune.{key} must be >= 1, got {getattr(self, key)}")
        if self.threshold < 0:
            raise ConfigError(f"prune.threshold must be >= 0, got {self.threshold}")
        for key in ("latency_batch", "latency_threads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"prune.{key} must be >= 1, got {getattr(self, key)}")
        if not self.retrain_lr > 0:
            raise ConfigError(f"prune.retrain_lr must be > 0, got {self.retrain_lr}")



@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    def validate(self) -> None:
        """Each section's plain checks (the pruning ones:
        :func:`bnnprune.prune.resolve.resolve_run`)."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# the suffix of a sweep table row (a method key) whose cells retrained from scratch
SCRATCH_ROW = ", from scratch"

# the plateau rules a sweep can pre-register (sweep.plateau_rule); the first is the default
PLATEAU_RULES = ("per-seed-rise", "seed-mean-slope")


@dataclass
class SweepSection:
    reductions: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5])
    methods: list[str] = field(default_factory=lambda: [
        "paper+wff", "target+wff", "uniform+wff", "target+random", "target+magnitude",
        "target+bn_scale"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    flip_percents: list[float] = field(default_factory=lambda: [1, 2, 5, 10, 15, 20])
    flip_choices: list[str] = field(
        default_factory=lambda: ["highest_wff", "lowest_wff", "random", "smallest_magnitude"])
    speed: bool = True  # time every pruned model on the packed engine
    speed_repeats: int = 30
    # uniform-width networks trained from scratch at every reduction for the same total epochs
    scratch: bool = False
    # the paper policy also retrained from scratch: every round trains the shrunk network
    # from a fresh initialisation for the baseline's epochs (run after all other cells)
    paper_scratch: bool = False
    # folder of the cells' small JSON records (commit it: a fresh clone resumes from it);
    # "" keeps them in the run folder
    records: str = ""
    # whose layer widths the from-scratch networks take (sweep.scratch): "uniform", and
    # "target" (the widths the flip-proportional allocation picks)
    scratch_policies: list[str] = field(default_factory=lambda: ["uniform"])
    # per seed, uniform widths at the BOPs the paper policy reached, fine-tuned as long as
    # the paper policy retrained in all its rounds (needs a paper method)
    paper_control: bool = False
    # the plateau criterion, fixed before any result: over the train.track_last epochs
    # before the flip interval accuracy (validation split, if any) rises by less than
    # plateau_max_rise_pp points, and inside the interval every layer's per-epoch flip
    # ratio varies by less than plateau_max_flatness (max/min); with plateau_gate a seed
    # whose baseline fails it gets no other cell
    plateau_max_rise_pp: float | None = None
    plateau_max_flatness: float | None = None
    plateau_gate: bool = False
    # which plateau rule (PLATEAU_RULES): "per-seed-rise" reads plateau_max_rise_pp on each
    # seed; "seed-mean-slope" reads the recipe, not a seed: the least-squares slope of the
    # seed-mean validation accuracy over the plateau_slope_epochs epochs before the interval
    # is below plateau_max_slope_pp pp per epoch, and every layer's seed-mean flip ratio
    # max/min is below plateau_max_flatness (per-seed figures are reported, none gate)
    plateau_rule: str = PLATEAU_RULES[0]
    plateau_max_slope_pp: float | None = None
    plateau_slope_epochs: int = 5
    # pre-registered primary comparisons (bnnprune.evidence.PRIMARIES), Holm-corrected
    # together, and the file that states the analysis (quoted verbatim by the page)
    primaries: list[str] = field(default_factory=list)
    preregistration: str = ""
    # --docs DIR writes DIR/<page>.md and its plots into DIR/<page>/
    page: str = "results"

    def validate(self) -> None:
        if not self.reductions or any(not 0 < r < 1 for r in self.reductions):
            raise ConfigError(f"sweep.reductions must lie in (0, 1), got {self.reductions!r}")
        if not self.methods:
            raise ConfigError("sweep.methods is empty")
        if not self.seeds:
            raise ConfigError("sweep.seeds is empty")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"sweep.seeds must be whole numbers >= 0, got {self.seeds!r}")
        if any(not 0 <= x <= 100 for x in self.flip_percents):
            raise ConfigError(f"sweep.flip_percents must lie in [0, 100], got {self.flip_percents}")
        if self.speed_repeats < 1:
            raise ConfigError("sweep.speed_repeats must be >= 1")
        if not self.page or "/" in self.page or self.page.startswith("."):
            raise ConfigError(f"sweep.page must be a plain file name, got {self.page!r}")
        bad = [a for a in self.scratch_policies if a not in ("uniform", "target")]
        if bad or not self.scratch_policies:
            raise ConfigError(f"sweep.scratch_policies takes uniform and/or target, got "
                              f"{self.scratch_policies!r}")
        for key in ("plateau_max_rise_pp", "plateau_max_flatness"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ConfigError(f"sweep.{key} must be > 0, got {v}")
        if self.plateau_rule not in PLATEAU_RULES:
            raise ConfigError(f"sweep.plateau_rule takes {' or '.join(PLATEAU_RULES)}, got "
                              f"{self.plateau_rule!r}")
        if self.plateau_max_slope_pp is not None and not self.plateau_max_slope_pp > 0:
            raise ConfigError(f"sweep.plateau_max_slope_pp must be > 0, got "
                              f"{self.plateau_max_slope_pp}")
        if self.plateau_slope_epochs < 2:
            raise ConfigError(f"sweep.plateau_slope_epochs must be >= 2 (a slope needs two "
                              f"epochs), got {self.plateau_slope_epochs}")
        if self.plateau_rule == "seed-mean-slope":
            if self.plateau_max_slope_pp is None:
                raise ConfigError("sweep.plateau_rule = \"seed-mean-slope\" needs "
                                  "sweep.plateau_max_slope_pp")
            if self.plateau_max_rise_pp is not None:
                raise ConfigError("sweep.plateau_max_rise_pp belongs to the per-seed-rise "
                                  "rule; the seed-mean-slope rule reads plateau_max_slope_pp")
            if self.plateau_gate:
                raise ConfigError("sweep.plateau_gate cannot gate seeds on the seed-mean-slope "
                                  "rule: it judges the recipe, not a seed (set it to false)")
        elif self.plateau_max_slope_pp is not None:
            raise ConfigError("sweep.plateau_max_slope_pp needs sweep.plateau_rule = "
                              "\"seed-mean-slope\"")
        if self.plateau_gate and self.plateau_max_rise_pp is None \
                and self.plateau_max_flatness is None:
            raise ConfigError("sweep.plateau_gate needs a criterion: set "
                              "sweep.plateau_max_rise_pp and/or sweep.plateau_max_flatness")


def _sweep_prune_defaults() -> PruneConfig:
    """A sweep's prune section: every cell names its own method (sweep.methods), so the
    method settings of ``bnnprune run`` are unused (and not part of a cell's key); the paper
    policy runs one round unless ``max_rounds`` says more, and channel counts are not
    rounded (methods are compared at the counts they ask for, not at the engine's)."""
    return PruneConfig(max_rounds=1, round_to=1)


@dataclass
class SweepConfig(RunConfig):
    prune: PruneConfig = field(default_factory=_sweep_prune_defaults)
    sweep: SweepSection = field(default_factory=SweepSection)

    def validate(self) -> None:
        """Each section's plain checks (the pruning ones:
        :func:`bnnprune.prune.resolve.resolve_sweep`)."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()


def _coerce(value: Any, tp: Any, key: str, from_file: bool = False) -> Any:
    """Check ``value`` against a simple annotation (str, int, float, bool, X | None, list[X]).

    A list setting takes an array; a comma-separated string is also accepted (the form of
    command-line flags), with a deprecation note when it comes from a TOML file.
    """
    args = typing.get_args(tp)
    if typing.get_origin(tp) is dict:  # a TOML table, or JSON text on the command line
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise ConfigError(f"{key} must be a JSON object, got {value!r} ({e})") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table (JSON object), got {value!r}")
        return dict(value)
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
            if args[0] is not str:
                try:
                    items = [float(v) for v in items]
                except ValueError:
                    raise ConfigError(f"{key} must be a list of numbers, got {value!r}") from None
                items = [int(v) if args[0] is int and v == int(v) else v for v in items]
            if from_file:
                warnings.warn(
                    f"config key {key}: a comma-separated string is deprecated, write a TOML "
                    f"array, e.g. {key.rpartition('.')[2]} = {json.dumps(items)}",
                    FutureWarning, stacklevel=2)
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(items)]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key)
        for tp_ in inner:  # X | Y: the first type the value is
            try:
                return _coerce(value, tp_, key)
            except ConfigError:
                pass
        names = " or ".join(t.__name__ for t in inner)
        raise ConfigError(f"{key} must be of type {names}, got {value!r}")
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


def update_dataclass(obj: Any, values: dict[str, Any], prefix: str,
                     from_file: bool = False) -> None:
    """Set fields of ``obj`` from ``values`` with type checks; unknown keys are errors."""
    hints = typing.get_type_hints(type(obj))
    for k, v in values.items():
        if k not in hints:
            raise ConfigError(f"unknown config key '{prefix}{k}'; valid keys: {', '.join(hints)}")
        setattr(obj, k, _coerce(v, hints[k], f"{prefix}{k}", from_file))


def apply_sections(cfg: Any, data: dict[str, Any], from_file: bool = False) -> Any:
    """Apply a nested dict (TOML tables) onto a config of dataclass sections."""
    sections = {f.name for f in dataclasses.fields(cfg)}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(
                f"unknown config table [{section}]; valid tables: {', '.join(sorted(sections))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        update_dataclass(getattr(cfg, section), values, f"{section}.", from_file)
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
    return apply_sections(cfg, data, from_file=True)
