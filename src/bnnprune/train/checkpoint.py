"""The training package's name for :mod:`bnnprune.checkpoint` (its one home), kept because
code outside the deploy path still imports it from here."""

from bnnprune.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]
