"""IDX reading (MNIST / Fashion-MNIST) from files written in the real format."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from bnnprune.data import DatasetError, load_dataset
from bnnprune.data.idx import read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, formats, gz):
    arrays = formats.write_idx_set(tmp_path, n_train=12, n_test=5, gz=gz)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_x.shape == (5, 1, 28, 28)
    assert np.array_equal(ds.train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.train_y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.test_x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.source == str(tmp_path)


def test_read_idx_raw_and_gz_agree(tmp_path, formats):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = formats.write_bytes(tmp_path / "a-idx3-ubyte", formats.idx_bytes(array))
    gz = formats.write_bytes(tmp_path / "a-idx3-ubyte.gz", formats.idx_bytes(array))
    assert np.array_equal(read_idx(raw, 3), array)
    assert np.array_equal(read_idx(gz, 3), array)


@pytest.mark.parametrize(
    "layout", ["MNIST/raw", "mnist", "raw"], ids=["torchvision", "subfolder", "raw"]
)
def test_finds_common_layouts_below_root(tmp_path, formats, layout):
    formats.write_idx_set(tmp_path / layout)
    assert load_dataset("mnist", root=tmp_path).num_train == 12


def test_kaggle_dotted_names(tmp_path, formats):
    formats.write_idx_set(tmp_path, gz=False)
    for path in list(tmp_path.iterdir()):
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    assert load_dataset("fashion-mnist", root=tmp_path).num_test == 5


def test_bad_magic(tmp_path, formats):
    formats.write_idx_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[0:4] = b"\x12\x34\x08\x03"
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="bad magic") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_wrong_element_type_and_ndim(tmp_path, formats):
    path = tmp_path / "x-idx3-ubyte"
    data = bytearray(formats.idx_bytes(np.zeros((2, 3, 3), np.uint8)))
    data[2] = 0x0D  # float32
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="float32 is unsupported"):
        read_idx(path, 3)
    formats.write_bytes(path, formats.idx_bytes(np.zeros((2, 3), np.uint8)))
    with pytest.raises(DatasetError, match="2 dimensions, expected 3"):
        read_idx(path, 3)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path, formats, gz):
    formats.write_idx_set(tmp_path, gz=gz)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(err.value)


def test_truncated_payload_inside_valid_gzip(tmp_path, formats):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(formats.idx_bytes(np.arange(10, dtype=np.uint8))[:-3]))
    with pytest.raises(DatasetError, match="needs 10 data bytes, found 7"):
        read_idx(path, 1)


def test_trailing_bytes(tmp_path, formats):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(formats.idx_bytes(np.arange(4, dtype=np.uint8)) + b"\0\0")
    with pytest.raises(DatasetError, match="2 unexpected bytes"):
        read_idx(path, 1)


def test_header_only_and_tiny_files(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(b"\0\0")
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path, 3)
    path.write_bytes(b"\0\0\x08\x03\0\0\0\x02")
    with pytest.raises(DatasetError, match="truncated IDX header"):
        read_idx(path, 3)


def test_label_image_count_mismatch(tmp_path, formats):
    formats.write_idx_set(tmp_path, gz=True)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    formats.write_bytes(labels, formats.idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(DatasetError, match="11 labels but train-images-idx3-ubyte.gz holds 12"):
        load_dataset("mnist", root=tmp_path)


def test_label_out_of_range(tmp_path, formats):
    formats.write_idx_set(tmp_path, gz=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    formats.write_bytes(labels, formats.idx_bytes(np.array([0, 1, 2, 3, 10], np.uint8)))
    with pytest.raises(DatasetError, match="label 10 is out of range"):
        load_dataset("mnist", root=tmp_path)


def test_missing_file_is_named(tmp_path, formats):
    formats.write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist", root=tmp_path)


def test_empty_split(tmp_path, formats):
    formats.write_idx_set(tmp_path, n_test=0)
    with pytest.raises(DatasetError, match="test split is empty"):
        load_dataset("mnist", root=tmp_path)
