"""bnnprune: train binary neural networks, prune their channels by weight flipping frequency,
and run them on a bit-packed XNOR/popcount engine.

The names below are the public API of one pass through that path; each is imported from its
home module on first use, so ``import bnnprune`` stays cheap (no torch, no numba)::

    import bnnprune as bp

    ds = bp.load_dataset("fashion-mnist", root="data", download=True)
    model = bp.build_model("small", width=0.5)
    result = bp.train_model(model, ds, bp.TrainConfig(epochs=5, track_last=2))
    plan, pruned = bp.prune_trained(model, result.tracker, bp.parse_method("target+wff"),
                                    ds.input_shape, target=0.4)
    program = bp.compile_model(pruned, ds.input_shape)  # program(normalized images): logits
    bp.engine.save(program, "model.bnn")

``train_model`` is :func:`bnnprune.train.train` (``bnnprune.train`` names the training
package). Everything else stays where it lives; the subpackages (``bp.prune``, ``bp.engine``,
...) are imported on first use too.
"""

# ruff: noqa: F401  (the imports under TYPE_CHECKING are for type checkers: see _API)
from __future__ import annotations

from importlib import import_module

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time)
if TYPE_CHECKING:
    from typing import Any

    from bnnprune.config import PruneConfig, TrainConfig
    from bnnprune.data import Dataset, load_dataset
    from bnnprune.engine import compile_model
    from bnnprune.flips import FlipTracker
    from bnnprune.metrics import summarize
    from bnnprune.models import build_model
    from bnnprune.prune import (
        Method,
        PlanOptions,
        compute_sensitivity,
        flip_table,
        parse_method,
        prune_once,
        prune_trained,
    )
    from bnnprune.train import evaluate, load_model
    from bnnprune.train import train as train_model

# public name -> (home module, name there)
_API: dict[str, tuple[str, str]] = {
    "Dataset": ("bnnprune.data", "Dataset"),
    "FlipTracker": ("bnnprune.flips", "FlipTracker"),
    "Method": ("bnnprune.prune", "Method"),
    "PlanOptions": ("bnnprune.prune", "PlanOptions"),
    "PruneConfig": ("bnnprune.config", "PruneConfig"),
    "TrainConfig": ("bnnprune.config", "TrainConfig"),
    "build_model": ("bnnprune.models", "build_model"),
    "compile_model": ("bnnprune.engine", "compile_model"),
    "compute_sensitivity": ("bnnprune.prune", "compute_sensitivity"),
    "evaluate": ("bnnprune.train", "evaluate"),
    "flip_table": ("bnnprune.prune", "flip_table"),
    "load_dataset": ("bnnprune.data", "load_dataset"),
    "load_model": ("bnnprune.train", "load_model"),
    "parse_method": ("bnnprune.prune", "parse_method"),
    "prune_once": ("bnnprune.prune", "prune_once"),
    "prune_trained": ("bnnprune.prune", "prune_trained"),
    "summarize": ("bnnprune.metrics", "summarize"),
    "train_model": ("bnnprune.train", "train"),
}

_SUBMODULES = ("data", "engine", "flips", "metrics", "models", "nn", "prune", "train")

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """Import a public name from its home module, or a subpackage, on first use (PEP 562)."""
    if name in _SUBMODULES:
        return import_module(f"bnnprune.{name}")  # the import binds it here too
    if name not in _API:
        raise AttributeError(f"module 'bnnprune' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, *_SUBMODULES})
