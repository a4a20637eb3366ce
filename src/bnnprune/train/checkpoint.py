"""Checkpoints: atomic writes and safe loading (``weights_only=True``, never arbitrary pickle)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnprune.atomic import atomic_write_bytes
from bnnprune.models import model_from_arch

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]

FORMAT = "bnnprune-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, unsafe or of another kind."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a bnnprune checkpoint safely; any problem raises a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(
            f"{path} refused: not a plain-data checkpoint ({reason[:120]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated or corrupt: {type(e).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bnnprune checkpoint")
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {ckpt['version']}; this bnnprune reads up to {VERSION}"
        )
    for key in ("arch", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path} lacks {key!r}")
    return ckpt


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (pruned or not); return it with the checkpoint."""
    ckpt = load_checkpoint(path)
    try:
        model = model_from_arch(ckpt["arch"], ckpt["state_dict"])
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, ckpt
