"""Batch normalization, augmentation and batching."""

from __future__ import annotations

import pytest
import torch

from bnnprune.data import augment, batches, normalize


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 64, c: int = 3, h: int = 8, w: int = 8) -> torch.Tensor:
    # Every pixel distinct and non-zero, so a crop's position can be read off its content.
    base = torch.arange(1, c * h * w + 1).reshape(1, c, h, w) % 251 + 1
    return base.expand(n, c, h, w).to(torch.uint8).contiguous()


def test_normalize_values_and_stats():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    out = normalize(x, (0.2,), (0.5,))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.flatten(), torch.tensor([-0.4, 0.0, 1.6]))
    imgs = torch.randint(0, 256, (32, 3, 6, 6), generator=_gen(), dtype=torch.uint8)
    scaled = imgs.float() / 255
    mean = scaled.mean(dim=(0, 2, 3)).tolist()
    std = scaled.std(dim=(0, 2, 3)).tolist()
    out = normalize(imgs, mean, std)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalize(scaled, mean, std), out)


def test_normalize_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="3 channels"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), (0.5,), (0.5,))


def test_augment_shape_dtype_and_noop():
    x = _images()
    out = augment(x, _gen(), crop_pad=2, hflip=True)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert augment(x, _gen(), crop_pad=0, hflip=False) is x


def test_augment_is_deterministic_with_a_seeded_generator():
    x = _images()
    a = augment(x, _gen(3), crop_pad=2, hflip=True)
    b = augment(x, _gen(3), crop_pad=2, hflip=True)
    c = augment(x, _gen(4), crop_pad=2, hflip=True)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_crop_shifts_content_per_sample():
    x = _images(n=64)
    p = 2
    out = augment(x, _gen(1), crop_pad=p, hflip=False)
    padded = torch.nn.functional.pad(x[0], (p, p, p, p))
    shifts = set()
    for i in range(len(out)):
        matches = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(out[i], padded[:, dy : dy + 8, dx : dx + 8])
        ]
        assert len(matches) == 1, "each output must be exactly one window of the padded image"
        shifts.add(matches[0])
    assert len(shifts) > 10 and (p, p) in shifts  # offsets vary per sample, centre included


def test_flip_flips_about_half():
    x = _images(n=200)
    out = augment(x, _gen(2), crop_pad=0, hflip=True)
    flipped = torch.tensor([torch.equal(o, x[0].flip(-1)) for o in out])
    same = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert bool((flipped ^ same).all())
    assert 60 < int(flipped.sum()) < 140


def test_batches_cover_everything_once():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1)
    y = torch.arange(10)
    got = list(batches(x, y, 4))
    assert [len(b[0]) for b in got] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in got]), y)
    shuffled = list(batches(x, y, 4, shuffle=True, generator=_gen(5)))
    order = torch.cat([b[1] for b in shuffled])
    assert sorted(order.tolist()) == list(range(10)) and not torch.equal(order, y)
    assert all(torch.equal(bx.flatten().long(), by) for bx, by in shuffled)
    again = torch.cat([b[1] for b in batches(x, y, 4, shuffle=True, generator=_gen(5))])
    assert torch.equal(order, again)
    assert [len(b[0]) for b in batches(x, y, 4, drop_last=True)] == [4, 4]


def test_batches_rejects_bad_arguments():
    x = torch.zeros(3, 1, 1, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(x, torch.zeros(3), 0))
    with pytest.raises(ValueError, match="x has 3 samples but y has 2"):
        list(batches(x, torch.zeros(2), 2))
