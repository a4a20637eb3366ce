"""Checkpoints: atomic writes and safe loading (``weights_only=True``, never arbitrary pickle).

Its own module, apart from training: deploying a checkpoint reads it without the training
package."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnprune.atomic import atomic_write_bytes
from bnnprune.limits import memory_bytes
from bnnprune.models import model_from_arch, resize_to_state_dict

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "load_checkpoint",
    "load_model",
    "recorded_input_shape",
    "save_checkpoint",
    "save_pruned",
]

FORMAT = "bnnprune-checkpoint"
MAX_SPEC_RATIO = 1000
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, unsafe or of another kind."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_pruned(path: str | Path, pruned: nn.Module, source: dict[str, Any],
                meta: dict[str, Any]) -> None:
    """Write ``pruned``, a pruned copy of the model in checkpoint ``source``, as a checkpoint
    that :func:`load_model` rebuilds: the source's dataset and training config, no flip data
    (``meta``: e.g. the plan and where the model came from)."""
    save_checkpoint(path, {
        "arch": getattr(pruned, "arch", None),
        "state_dict": pruned.state_dict(),
        "dataset": source.get("dataset") or {},
        "flips": None,
        "train_config": source.get("train_config"),
        "meta": meta,
    })


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
    except Exception as e:  # a forged file fails in many more ways (TypeError, OverflowError..)
        raise CheckpointError(
            f"{path} is not a readable checkpoint (malformed: {type(e).__name__})"
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
    _check_tensors(ckpt, path)
    return ckpt


def _check_tensors(node: Any, path: Path, where: str = "") -> None:
    """Refuse tensors whose shape claims more elements than their stored data holds (stride-0
    views of a tiny storage): copying or resizing to them would allocate the claimed size."""
    if isinstance(node, torch.Tensor):
        need = node.numel() * node.element_size()
        have = node.untyped_storage().nbytes()
        if need > have:
            raise CheckpointError(
                f"{path}: tensor {where or '/'} of shape {tuple(node.shape)} claims {need} "
                f"bytes but stores {have}"
            )
    elif isinstance(node, dict):
        for k, v in node.items():
            _check_tensors(v, path, f"{where}/{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            _check_tensors(v, path, f"{where}[{i}]")


def _state_bytes(state_dict: Any) -> int:
    if not isinstance(state_dict, dict):
        raise ValueError("state_dict must be a dict of tensors")
    tensors = [t for t in state_dict.values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _check_model_size(arch: Any, state_dict: Any) -> None:
    """Build ``arch`` on the meta device (no memory) and refuse a spec a forged file could use
    to allocate terabytes (``width = 1e4``): the rebuild first creates the spec's full model,
    then resizes it to the stored (possibly pruned) weights. The full model may be at most
    MAX_SPEC_RATIO times the stored weights (no pruning removes 99.9% of them) and must fit
    in memory; the resized one must be exactly what the file stores."""
    have = _state_bytes(state_dict)
    with torch.device("meta"):
        meta = model_from_arch(arch)
        full = _state_bytes(meta.state_dict())
        if full > min(MAX_SPEC_RATIO * have, memory_bytes()):
            raise ValueError(
                f"its model spec needs {full} bytes of weights before resizing, the file "
                f"stores {have}"
            )
        resize_to_state_dict(meta, state_dict)
    need = _state_bytes(meta.state_dict())
    if need > have:
        raise ValueError(f"its model spec needs {need} bytes of weights, the file stores {have}")


def _one_line(e: Exception, limit: int = 300) -> str:
    """An exception as one line of at most ``limit`` characters (forged values can be huge)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (pruned or not); return it with the checkpoint."""
    ckpt = load_checkpoint(path)
    try:
        _check_model_size(ckpt["arch"], ckpt["state_dict"])
        model = model_from_arch(ckpt["arch"], ckpt["state_dict"])
    except ValueError as e:
        raise CheckpointError(f"{path}: {_one_line(e)}") from None
    except Exception as e:  # a forged spec or state_dict can fail in many ways
        reason = f"{type(e).__name__}: {_one_line(e)}"
        raise CheckpointError(f"{path}: cannot rebuild its model ({reason})") from None
    return model, ckpt


def recorded_input_shape(ckpt: dict[str, Any]) -> tuple[int, ...]:
    """The input shape (C, H, W) the checkpoint's dataset recorded; () when it records none."""
    return tuple((ckpt.get("dataset") or {}).get("input_shape", ()))
