"""CIFAR-10 from its official python batches, with a restricted unpickler.

The batches are Python pickles, and a plain ``pickle.load`` runs whatever code a file
names. ``SafeUnpickler`` resolves only the globals that numpy arrays need, so a planted
file is refused before any of its code runs.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from bnnprune.data.errors import DatasetError, one_line

__all__ = [
    "BATCHES_DIR",
    "CIFAR10_CLASSES",
    "ForbiddenGlobalError",
    "SafeUnpickler",
    "TAR_NAME",
    "TEST_FILE",
    "TRAIN_FILES",
    "find_cifar10",
    "load_cifar10",
    "parse_batch",
    "safe_unpickle",
]

BATCHES_DIR = "cifar-10-batches-py"
TAR_NAME = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_IMAGE_BYTES = 3 * 32 * 32
# an official batch file is about 31 MB (10,000 images); anything far larger is refused unread
MAX_BATCH_BYTES = 64 << 20


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's array-reconstruction globals, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise ForbiddenGlobalError(f"forbidden global {module}.{name}")


def safe_unpickle(data: bytes, source: str) -> Any:
    """Unpickle CIFAR bytes (Python 2 strings decoded as latin-1, as torchvision does)."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except ForbiddenGlobalError as exc:
        raise DatasetError(
            f"{source}: refused unsafe pickle ({exc}); CIFAR batches hold only dicts, lists, "
            "strings, numbers and numpy arrays"
        ) from None
    except Exception as exc:  # a malformed pickle can fail in many ways; all mean corrupt
        raise DatasetError(f"{source}: unreadable pickle ({one_line(exc)})") from None


def _get(batch: dict, key: str) -> Any:
    """Look a key up as str (Python 2 pickles read as latin-1) or bytes (Python 3 pickles)."""
    if key in batch:
        return batch[key]
    return batch.get(key.encode(), None)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def parse_batch(obj: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one unpickled batch; return images (N, 3, 32, 32) uint8 and labels int64."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{source}: expected a dict batch, got {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        keys = sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in obj)
        raise DatasetError(f"{source}: CIFAR batch needs keys 'data' and 'labels', found {keys}")
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _IMAGE_BYTES
    ):
        raise DatasetError(
            f"{source}: 'data' must be a uint8 array of shape (N, {_IMAGE_BYTES}), "
            f"got {_describe(data)}"
        )
    try:
        lab = np.asarray(labels)
    except Exception as exc:
        raise DatasetError(f"{source}: 'labels' is not a list of integers ({exc})") from None
    if lab.ndim != 1 or lab.dtype.kind not in "iu" or len(lab) != len(data):
        raise DatasetError(f"{source}: 'labels' must be {len(data)} integers, got {_describe(lab)}")
    if len(lab) and (lab.min() < 0 or lab.max() >= len(CIFAR10_CLASSES)):
        raise DatasetError(
            f"{source}: label values must lie in 0..9, found {lab.min()}..{lab.max()}"
        )
    return data.reshape(-1, 3, 32, 32).copy(), lab.astype(np.int64)


def _parse_meta(obj: Any, source: str) -> tuple[str, ...]:
    names = _get(obj, "label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list) or len(names) != len(CIFAR10_CLASSES):
        raise DatasetError(f"{source}: expected a dict with 10 'label_names'")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def find_cifar10(base: Path) -> Path | None:
    """Return the batches folder or the archive that ``base`` is or holds, else None."""
    if base.is_file():
        return base if base.name.endswith((".tar.gz", ".tgz", ".tar")) else None
    if not base.is_dir():
        return None
    markers = (*TRAIN_FILES, TEST_FILE, META_FILE)
    if any((base / m).exists() for m in markers):
        return base
    if (base / BATCHES_DIR).is_dir():
        return base / BATCHES_DIR
    if (base / TAR_NAME).is_file():
        return base / TAR_NAME
    return None


def _read_folder(folder: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name in (*TRAIN_FILES, TEST_FILE):
        path = folder / name
        if not path.is_file():
            raise DatasetError(
                f"{folder}: CIFAR-10 folder is missing {name} "
                "(it needs data_batch_1..5 and test_batch)"
            )
        files[name] = _read_batch_file(path)
    if (folder / META_FILE).is_file():
        files[META_FILE] = _read_batch_file(folder / META_FILE)
    return files


def _too_large(source: str, size: int) -> DatasetError:
    return DatasetError(
        f"{source}: {size} bytes is far more than a CIFAR-10 batch holds (about 31 MB; "
        f"limit {MAX_BATCH_BYTES}); refusing to read it"
    )


def _read_batch_file(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_BATCH_BYTES:
        raise _too_large(str(path), size)
    return path.read_bytes()


def _read_archive(archive: Path) -> dict[str, bytes]:
    wanted = {*TRAIN_FILES, TEST_FILE, META_FILE}
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one sequential pass: no re-decompression
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in files:
                    if member.size > MAX_BATCH_BYTES:
                        raise _too_large(f"{archive}:{member.name}", member.size)
                    fh = tar.extractfile(member)
                    if fh is not None:
                        files[base] = fh.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{archive}: corrupt or truncated archive ({one_line(exc)})") from None
    for name in (*TRAIN_FILES, TEST_FILE):
        if name not in files:
            raise DatasetError(f"{archive}: archive lacks {BATCHES_DIR}/{name}")
    return files


def load_cifar10(
    location: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Load CIFAR-10 from a batches folder or the official archive.

    Returns train images, train labels, test images, test labels and class names.
    """
    archive = location.is_file()
    files = _read_archive(location) if archive else _read_folder(location)

    def source(name: str) -> str:
        return f"{location}:{BATCHES_DIR}/{name}" if archive else str(location / name)

    parts = [parse_batch(safe_unpickle(files[n], source(n)), source(n)) for n in TRAIN_FILES]
    test_src = source(TEST_FILE)
    test_x, test_y = parse_batch(safe_unpickle(files[TEST_FILE], test_src), test_src)
    classes = CIFAR10_CLASSES
    if META_FILE in files:
        classes = _parse_meta(safe_unpickle(files[META_FILE], source(META_FILE)), source(META_FILE))
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return train_x, train_y, test_x, test_y, classes
