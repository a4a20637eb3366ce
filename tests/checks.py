"""Equality checks shared by the crash, kill and distributed-resume tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load(path: Path) -> dict[str, Any]:
    """A checkpoint, read on the CPU without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Exact equality of nested checkpoint data (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def no_seconds(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch records without their wall-clock seconds."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]
