"""The synthetic dataset: deterministic, configurable, balanced."""

from __future__ import annotations

import pytest
import torch

from bnnprune.data import DatasetError, load_dataset


def _small(**kw):
    return load_dataset("synthetic", **{"n_train": 40, "n_test": 20, **kw})


def test_same_seed_identical_other_seed_different():
    a, b, c = _small(seed=7), _small(seed=7), _small(seed=8)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.train_x, c.train_x)
    assert a.mean == b.mean and a.std == b.std


def test_shape_is_configurable():
    ds = _small(channels=2, image_size=12, num_classes=4, n_train=30, n_test=9)
    assert ds.train_x.shape == (30, 2, 12, 12) and ds.test_x.shape == (9, 2, 12, 12)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert (ds.in_channels, ds.image_size, ds.num_classes) == (2, 12, 4)
    assert len(ds.mean) == 2 and all(s > 0 for s in ds.std)
    assert torch.bincount(ds.train_y, minlength=4).tolist() == [8, 8, 7, 7]


def test_split_sizes_do_not_change_each_other():
    a, b = _small(n_train=40), _small(n_train=50)
    assert torch.equal(a.test_x, b.test_x)


def test_classes_are_separable():
    """Nearest train centroid already classifies the test split: there is signal to learn."""
    ds = _small(n_train=200, n_test=100)
    x = ds.train_x.float().flatten(1)
    centroids = torch.stack([x[ds.train_y == k].mean(0) for k in range(ds.num_classes)])
    pred = torch.cdist(ds.test_x.float().flatten(1), centroids).argmin(1)
    assert (pred == ds.test_y).float().mean() > 0.9


@pytest.mark.parametrize(
    "kw", [{"n_train": 0}, {"num_classes": 1}, {"image_size": 0}, {"noise": -1.0}]
)
def test_invalid_options(kw):
    with pytest.raises(DatasetError, match="synthetic"):
        _small(**kw)


def test_unknown_and_misplaced_options(tmp_path):
    with pytest.raises(DatasetError, match="unknown synthetic option.*colour"):
        _small(colour=3)
    with pytest.raises(DatasetError, match="apply only to the synthetic dataset"):
        load_dataset("mnist", root=tmp_path, n_train=5)
