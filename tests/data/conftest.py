"""Writers for tiny files in the real on-disk formats (IDX, CIFAR-10 python batches).

The writers follow the format specs directly (struct, pickle, tarfile), independent of
the loaders under test.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bnnprune.data import datasets


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: 0x00 0x00 0x08 ndim, big-endian dims, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data``, gzipped when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_idx_set(
    folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, size: int = 28, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four MNIST-style files; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_bytes(folder / (stem + (".gz" if gz else "")), idx_bytes(array))
    return arrays


class _Py2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as the real files do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    """A protocol-2 pickle shaped like the ones Python 2 and numpy 1 wrote for CIFAR-10."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
CIFAR_NAMES += [b"dog", b"frog", b"horse", b"ship", b"truck"]


def cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"batch %d" % seed,
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def write_cifar_folder(
    folder: Path, n: int = 4, n_test: int = 3, style: str = "py2"
) -> dict[str, dict[bytes, object]]:
    """Write data_batch_1..5, test_batch and batches.meta; return the batches written."""
    dump = py2_pickle if style == "py2" else (lambda obj: pickle.dumps(obj, protocol=4))
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate(CIFAR_BATCHES):
        batches[name] = cifar_batch(n_test if name == "test_batch" else n, seed=i)
        (folder / name).write_bytes(dump(batches[name]))
    meta = {b"label_names": CIFAR_NAMES, b"num_cases_per_batch": n, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dump(meta))
    return batches


def tar_folder(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` as ``cifar-10-batches-py/`` into a .tar.gz, like the official one."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


class Formats:
    """The writers above, handed to tests through the ``formats`` fixture."""

    idx_bytes = staticmethod(idx_bytes)
    write_bytes = staticmethod(write_bytes)
    write_idx_set = staticmethod(write_idx_set)
    py2_pickle = staticmethod(py2_pickle)
    cifar_batch = staticmethod(cifar_batch)
    write_cifar_folder = staticmethod(write_cifar_folder)
    tar_folder = staticmethod(tar_folder)
    CIFAR_BATCHES = CIFAR_BATCHES
    CIFAR_NAMES = CIFAR_NAMES


@pytest.fixture
def formats() -> type[Formats]:
    return Formats


@pytest.fixture(autouse=True)
def isolated_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tests away from the user's data: no env folder, a private cache, no system dirs."""
    monkeypatch.delenv("BNNPRUNE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
