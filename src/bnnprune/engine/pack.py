"""Bit packing: ±1 values <-> 64-bit words along the channel (last) axis.

Bit ``j`` of word ``w`` holds channel ``64*w + j``; bit 1 = -1 and bit 0 = +1, so
``sign(x) = +1 if x >= 0 else -1`` maps every float (NaN -> -1, as in PyTorch's
``where(x >= 0, 1, -1)``) to one bit. Unused high bits of the last word are 0.
"""

from __future__ import annotations

import numpy as np

from bnnprune.engine.errors import EngineError
from bnnprune.engine.kernels import run_affine_pack, words

__all__ = ["pack_signs", "pack_weights", "tail_mask", "unpack_signs", "words"]


def pack_signs(x: np.ndarray) -> np.ndarray:
    """Pack sign(x) over the last axis: (..., C) float -> (..., words(C)) uint64."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim < 1 or x.shape[-1] < 1:
        raise EngineError(f"pack_signs needs at least one channel, got shape {x.shape}")
    return run_affine_pack(x)


def unpack_signs(packed: np.ndarray, channels: int) -> np.ndarray:
    """Unpack (..., words) uint64 to float32 ±1 values (..., channels)."""
    packed = np.ascontiguousarray(packed, dtype=np.uint64)
    if packed.ndim < 1 or packed.shape[-1] != words(channels) or channels < 1:
        raise EngineError(
            f"cannot unpack {channels} channels from words of shape {packed.shape}"
        )
    raw = packed.astype("<u8", copy=False).view(np.uint8)
    bits = np.unpackbits(raw, axis=-1, bitorder="little")[..., :channels]
    return (1.0 - 2.0 * bits).astype(np.float32)


def tail_mask(channels: int) -> np.ndarray:
    """Per-word masks (words(C),) uint64 with a 1 for every valid channel bit."""
    wd = words(channels)
    mask = np.full(wd, np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64)
    rem = channels % 64
    if rem:
        mask[-1] = np.uint64((1 << rem) - 1)
    return mask


def pack_weights(w: np.ndarray) -> np.ndarray:
    """Binary conv weights (Co, Ci, KH, KW) (signs taken) -> (Co, KH, KW*words(Ci)) uint64."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 4:
        raise EngineError(f"conv weights must be 4-D, got shape {w.shape}")
    co, ci, kh, kw = w.shape
    packed = pack_signs(np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
    return np.ascontiguousarray(packed.reshape(co, kh, kw * words(ci)))
