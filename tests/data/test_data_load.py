"""load_dataset: names, search order, messages, subsets, overrides, the real Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bnnprune.data import DATASETS, Dataset, DatasetError, datasets, load_dataset, search_dirs

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_names_and_aliases(tmp_path, formats):
    assert DATASETS == ("cifar10", "fashion-mnist", "mnist", "synthetic")
    formats.write_idx_set(tmp_path)
    for name in ("fashion-mnist", "fashion_mnist", "Fashion-MNIST"):
        assert load_dataset(name, root=tmp_path).name == "fashion-mnist"
    with pytest.raises(DatasetError, match="cifar10, fashion-mnist, mnist, synthetic"):
        load_dataset("imagenet")


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
        ("mnist", "--data-dir"),
        ("cifar10", "cifar-10-batches-py or cifar-10-python.tar.gz"),
    ],
)
def test_missing_dataset_says_how_to_get_it(tmp_path, name, hint):
    with pytest.raises(DatasetError) as err:
        load_dataset(name, root=tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message and hint in message and "download=True" in message
    assert str(tmp_path / "nowhere") in message


def test_search_order(tmp_path, formats, monkeypatch):
    root, env, cache, system = (tmp_path / d for d in ("root", "env", "xdg-cache", "system"))
    monkeypatch.setenv("BNNPRUNE_DATA", str(env))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"mnist": (system,)})
    assert search_dirs("mnist", root)[0] == root
    assert search_dirs("mnist")[:2] == [env / "mnist", env / "MNIST"]
    assert search_dirs("mnist")[-2:] == [cache / "bnnprune" / "mnist", system]
    for rank, folder in enumerate([system, cache / "bnnprune" / "mnist", env / "MNIST", root]):
        formats.write_idx_set(folder, n_train=10 + rank)
        got = load_dataset("mnist", root=root if folder == root else None)
        assert (got.num_train, got.source) == (10 + rank, str(folder))


def test_subsets_are_seeded_and_keep_order(tmp_path, formats):
    formats.write_idx_set(tmp_path, n_train=40, n_test=20)
    full = load_dataset("mnist", root=tmp_path)
    a = load_dataset("mnist", root=tmp_path, train_subset=10, test_subset=5, seed=1)
    b = load_dataset("mnist", root=tmp_path, train_subset=10, test_subset=5, seed=1)
    c = load_dataset("mnist", root=tmp_path, train_subset=10, test_subset=5, seed=2)
    assert (a.num_train, a.num_test) == (10, 5)
    assert torch.equal(a.train_x, b.train_x) and not torch.equal(a.train_x, c.train_x)
    rows = [int((full.train_x == img).flatten(1).all(1).nonzero()) for img in a.train_x]
    assert rows == sorted(rows) and torch.equal(full.train_y[rows], a.train_y)
    other_test = load_dataset("mnist", root=tmp_path, train_subset=10, test_subset=6, seed=1)
    assert torch.equal(other_test.train_x, a.train_x)


@pytest.mark.parametrize("n", [0, 41, -3])
def test_bad_subset(tmp_path, formats, n):
    formats.write_idx_set(tmp_path, n_train=40)
    with pytest.raises(DatasetError, match="train_subset"):
        load_dataset("mnist", root=tmp_path, train_subset=n)


def test_augmentation_defaults_and_overrides(tmp_path, formats):
    formats.write_idx_set(tmp_path)
    mnist = load_dataset("mnist", root=tmp_path)
    fashion = load_dataset("fashion-mnist", root=tmp_path)
    assert (mnist.crop_pad, mnist.hflip) == (2, False) and fashion.hflip
    custom = load_dataset("mnist", root=tmp_path, crop_pad=0, hflip=True)
    assert (custom.crop_pad, custom.hflip) == (0, True)


def test_dataset_validates_itself():
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    common = {"num_classes": 2, "mean": (0.5,), "std": (0.5,), "crop_pad": 0, "hflip": False}
    ds = Dataset("toy", x, y, x, y, **common)
    assert ds.input_shape == (1, 8, 8) and "toy" in repr(ds)
    with pytest.raises(DatasetError, match="train split is empty"):
        Dataset("toy", x[:0], y[:0], x, y, **common)
    with pytest.raises(DatasetError, match="uint8"):
        Dataset("toy", x.float(), y, x, y, **common)
    with pytest.raises(DatasetError, match="outside 0..1"):
        Dataset("toy", x, y + 2, x, y, **common)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion-mnist": (DEBIAN_FASHION,)})
    ds = load_dataset("fashion-mnist")
    assert ds.source == str(DEBIAN_FASHION)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    scaled = ds.train_x.float().div_(255)
    assert abs(scaled.mean().item() - ds.mean[0]) < 1e-3
    assert abs(scaled.std().item() - ds.std[0]) < 1e-3
