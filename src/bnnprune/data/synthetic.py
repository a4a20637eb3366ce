"""A seeded, learnable synthetic image-classification dataset of any shape.

Each class owns a pattern: half a smooth layout (a coarse 4x4 grid of random intensities,
upsampled) and half a texture (a random 4x4 tile repeated over the image). A sample is its
class pattern plus Gaussian pixel noise, quantized to uint8; classes are balanced. The
layout suits models with a flatten head, the texture suits global-pooling ones (NIN,
ResNet), so any small CNN beats chance clearly within one short epoch; ``noise`` tunes
how hard that is. Train and test draw from separate random streams, so changing the size
of one split leaves the other unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bnnprune.data.errors import DatasetError

__all__ = ["SYNTHETIC_DEFAULTS", "make_synthetic", "stream_generator"]

SYNTHETIC_DEFAULTS: dict[str, float | int] = {
    "n_train": 2000,
    "n_test": 500,
    "channels": 3,
    "image_size": 32,
    "num_classes": 10,
    "noise": 0.4,
}
_GRID = 4


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for an independent random stream derived from ``(seed, stream)``."""
    if seed < 0:
        raise DatasetError(f"seed must be >= 0, got {seed}")
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def _draw(
    patterns: torch.Tensor, n: int, noise: float, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    k = patterns.shape[0]
    y = torch.randperm(n, generator=g) % k
    x = patterns[y] + noise * torch.randn((n, *patterns.shape[1:]), generator=g)
    return x.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8), y.to(torch.int64)


def make_synthetic(
    n_train: int = 2000,
    n_test: int = 500,
    channels: int = 3,
    image_size: int = 32,
    num_classes: int = 10,
    noise: float = 0.4,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``train_x, train_y, test_x, test_y`` (uint8 NCHW images, int64 labels)."""
    for key, value, low in (
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("channels", channels, 1),
        ("image_size", image_size, 1),
        ("num_classes", num_classes, 2),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise DatasetError(f"synthetic: {key} must be an integer >= {low}, got {value!r}")
    if not noise >= 0:
        raise DatasetError(f"synthetic: noise must be >= 0, got {noise!r}")
    g = stream_generator(seed, 0)
    grid = min(_GRID, image_size)
    coarse = torch.rand((num_classes, channels, grid, grid), generator=g)
    size = (image_size, image_size)
    layout = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    tiles = torch.rand((num_classes, channels, grid, grid), generator=g)
    reps = -(-image_size // grid)
    texture = tiles.repeat(1, 1, reps, reps)[:, :, :image_size, :image_size]
    patterns = 0.5 * layout + 0.5 * texture
    train_x, train_y = _draw(patterns, n_train, noise, stream_generator(seed, 1))
    test_x, test_y = _draw(patterns, n_test, noise, stream_generator(seed, 2))
    return train_x, train_y, test_x, test_y
