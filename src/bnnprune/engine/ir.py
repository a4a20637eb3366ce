"""The program's instruction set: values (shape, float or packed bits) and ops.

Shared by the compiler, the program, its execution plan and every exporter, so none of
them imports another to learn what an op is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Op", "ValueInfo"]


@dataclass
class ValueInfo:
    """Shape and representation of one program value (batch dimension excluded)."""

    kind: str  # "float" or "bits"
    h: int
    w: int
    c: int
    flat: bool = False
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "h": self.h, "w": self.w, "c": self.c, "flat": self.flat,
                "source": self.source}


@dataclass
class Op:
    """One instruction: ``output = kind(inputs; attrs, arrays)``."""

    kind: str
    inputs: list[int]
    output: int
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""
