"""Bounds on what a reader of untrusted files may allocate.

A declared size (an IDX header's shape, a .bnn file, a model spec in a checkpoint) larger
than this machine's physical memory can never be loaded, so readers refuse it before
allocating anything; smaller declarations are only believed as far as the data present.
"""

from __future__ import annotations

import os

__all__ = ["CHUNK", "memory_bytes", "read_at_most"]

CHUNK = 1 << 20  # readers take untrusted streams in pieces of this size


def memory_bytes() -> int:
    """Physical memory of this machine in bytes (2**63 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 2**63


def read_at_most(fh, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``fh``, read piecewise: memory grows with the data present,
    never with a size an untrusted header claims."""
    parts, left = [], limit
    while left > 0:
        part = fh.read(min(CHUNK, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
