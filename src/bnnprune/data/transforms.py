"""Batch-level normalization, augmentation and batching on tensors.

Everything works on whole uint8 batches at once (no per-sample Python loop) and on any
device; randomness comes only from the given ``torch.Generator``, so a seeded generator
gives the same batches and augmentations on every run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ["augment", "batches", "normalize"]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Scale a uint8 batch to [0, 1] and standardize per channel; returns float32.

    A floating batch is taken to be on the [0, 1] scale already. Moving the uint8 batch
    to the device first and normalizing there sends four times fewer bytes.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    c = x.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std have {len(mean)}/{len(std)} entries for {c} channels")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {tuple(std)}")
    scale = 255.0 if x.dtype == torch.uint8 else 1.0
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, c, 1, 1) * scale
    inv = 1.0 / (torch.tensor(std, dtype=torch.float32, device=x.device).view(1, c, 1, 1) * scale)
    return (x.to(torch.float32) - m) * inv


def _rand_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def augment(
    x: torch.Tensor,
    generator: torch.Generator | None,
    crop_pad: int = 0,
    hflip: bool = False,
) -> torch.Tensor:
    """Random crop after zero padding by ``crop_pad`` and random horizontal flip, per sample.

    Pads the batch once, draws one (row, col) offset per sample and gathers the crop with
    index arithmetic; flips half the samples (on average) with one ``torch.where``. Returns
    the input itself when there is nothing to do. The generator may live on another
    device than ``x``: draws happen on its device and move to ``x``'s.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if crop_pad < 0:
        raise ValueError(f"crop_pad must be >= 0, got {crop_pad}")
    n, c, h, w = x.shape
    out = x
    gen_device = _rand_device(generator, x)
    if crop_pad > 0:
        p = crop_pad
        padded = F.pad(x, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator, device=gen_device)
        offsets = offsets.to(x.device)
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)
        cols = offsets[1, :, None] + torch.arange(w, device=x.device)
        out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
        out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    if hflip:
        flip = torch.rand(n, generator=generator, device=gen_device).to(x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` in order, or in a seeded random order when shuffling."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} samples but y has {len(y)}")
    order = None
    if shuffle:
        order = torch.randperm(n, generator=generator, device=_rand_device(generator, x))
        order = order.to(x.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if drop_last and stop - start < batch_size:
            break
        if order is None:
            yield x[start:stop], y[start:stop]
        else:
            idx = order[start:stop]
            yield x[idx], y[idx.to(y.device)]
