"""CIFAR-10 python batches: folder, parent folder, archive, validation, unsafe pickles."""

from __future__ import annotations

import builtins
import os
import pickle

import numpy as np
import pytest
import torch

from bnnprune.data import DatasetError, load_dataset
from bnnprune.data.cifar import safe_unpickle


def _expected(batches, names):
    x = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
    y = np.concatenate([batches[n][b"labels"] for n in names])
    return x, y


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_batches_folder(tmp_path, formats, style):
    folder = tmp_path / "cifar-10-batches-py"
    batches = formats.write_cifar_folder(folder, n=4, n_test=3, style=style)
    ds = load_dataset("cifar10", root=folder)
    train_x, train_y = _expected(batches, formats.CIFAR_BATCHES[:5])
    test_x, test_y = _expected(batches, ["test_batch"])
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert np.array_equal(ds.train_x.numpy(), train_x)
    assert np.array_equal(ds.train_y.numpy(), train_y) and ds.train_y.dtype == torch.int64
    assert np.array_equal(ds.test_x.numpy(), test_x)
    assert np.array_equal(ds.test_y.numpy(), test_y)
    assert ds.classes == tuple(n.decode() for n in formats.CIFAR_NAMES)
    assert (ds.crop_pad, ds.hflip, ds.num_classes) == (4, True, 10)


def test_parent_folder_and_archive(tmp_path, formats):
    folder = tmp_path / "src" / "cifar-10-batches-py"
    batches = formats.write_cifar_folder(folder)
    from_parent = load_dataset("cifar10", root=folder.parent)
    archive = formats.tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    from_tar = load_dataset("cifar10", root=archive)
    (tmp_path / "holder").mkdir()
    archive.rename(tmp_path / "holder" / archive.name)
    from_tar_dir = load_dataset("cifar10", root=tmp_path / "holder")
    x, y = _expected(batches, formats.CIFAR_BATCHES[:5])
    for ds in (from_parent, from_tar, from_tar_dir):
        assert np.array_equal(ds.train_x.numpy(), x) and np.array_equal(ds.train_y.numpy(), y)
        assert ds.num_test == 3
    assert from_tar_dir.source.endswith("cifar-10-python.tar.gz")


def test_missing_meta_falls_back_to_known_names(tmp_path, formats):
    formats.write_cifar_folder(tmp_path)
    (tmp_path / "batches.meta").unlink()
    assert load_dataset("cifar10", root=tmp_path).classes[0] == "airplane"


def test_missing_batch_is_named(tmp_path, formats):
    folder = tmp_path / "cifar-10-batches-py"
    formats.write_cifar_folder(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="missing data_batch_3"):
        load_dataset("cifar10", root=folder)
    formats.tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DatasetError, match="lacks cifar-10-batches-py/data_batch_3"):
        load_dataset("cifar10", root=tmp_path / "cifar-10-python.tar.gz")


def test_truncated_archive(tmp_path, formats):
    folder = tmp_path / "cifar-10-batches-py"
    formats.write_cifar_folder(folder)
    archive = formats.tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated archive"):
        load_dataset("cifar10", root=archive)


def _rewrite(folder, name, batch, formats):
    (folder / name).write_bytes(formats.py2_pickle(batch))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop(b"labels"), "needs keys 'data' and 'labels'"),
        (lambda b: b.pop(b"data"), "needs keys 'data' and 'labels'"),
        (lambda b: b.update({b"data": b[b"data"].astype(np.int32)}), "uint8 array"),
        (lambda b: b.update({b"data": b[b"data"][:, :100]}), r"shape \(N, 3072\)"),
        (lambda b: b[b"labels"].pop(), "'labels' must be 4 integers"),
        (lambda b: b.update({b"labels": [b"cat"] * 4}), "'labels' must be 4 integers"),
        (lambda b: b[b"labels"].__setitem__(0, 10), "must lie in 0..9"),
    ],
    ids=["no-labels", "no-data", "dtype", "size", "count", "label-type", "label-range"],
)
def test_bad_batch_contents(tmp_path, formats, mutate, message):
    formats.write_cifar_folder(tmp_path)
    batch = formats.cifar_batch(4, seed=1)
    mutate(batch)
    _rewrite(tmp_path, "data_batch_2", batch, formats)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_2" in str(err.value) and "\n" not in str(err.value)


def test_not_a_dict_and_garbage(tmp_path, formats):
    formats.write_cifar_folder(tmp_path)
    _rewrite(tmp_path, "test_batch", [1, 2, 3], formats)
    with pytest.raises(DatasetError, match="test_batch: expected a dict"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(U\x04da")
    with pytest.raises(DatasetError, match="test_batch: unreadable pickle"):
        load_dataset("cifar10", root=tmp_path)


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_SystemPayload, _EvalPayload])
def test_malicious_pickle_is_refused_without_running(tmp_path, formats, payload):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    formats.write_cifar_folder(folder)
    batch = formats.cifar_batch(4, seed=0)
    batch[b"labels"] = payload(marker)
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DatasetError, match="refused unsafe pickle") as err:
        load_dataset("cifar10", root=folder)
    assert "data_batch_1" in str(err.value)
    assert not marker.exists()


def test_malicious_meta_in_archive_is_refused(tmp_path, formats):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    formats.write_cifar_folder(folder)
    (folder / "batches.meta").write_bytes(pickle.dumps(_SystemPayload(marker)))
    archive = formats.tar_folder(folder, tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DatasetError, match=r"batches\.meta: refused unsafe pickle"):
        load_dataset("cifar10", root=archive)
    assert not marker.exists()


@pytest.mark.parametrize(
    "global_name", [b"numpy\nload\n", b"numpy.core.multiarray\nscalar\n", b"builtins\nopen\n"]
)
def test_only_the_array_globals_are_allowed(global_name):
    with pytest.raises(DatasetError, match="forbidden global"):
        safe_unpickle(b"\x80\x02c" + global_name + b".", "x")
