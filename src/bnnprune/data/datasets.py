"""The ``Dataset`` container and ``load_dataset``: find, read, validate and subset.

Where the files are looked for, in order: the explicit ``root``, then
``$BNNPRUNE_DATA/<name>``, then ``$XDG_CACHE_HOME/bnnprune/<name>`` (default
``~/.cache/bnnprune/<name>``), then system folders (Debian's ``dataset-fashion-mnist``
package installs Fashion-MNIST under ``/usr/share/datasets/fashion-mnist``). Each of those
may also be a torchvision root (``FashionMNIST/raw``, ``MNIST/raw``, ``cifar-10-batches-py``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnnprune.data import cifar
from bnnprune.data.download import RESOURCES, download_file
from bnnprune.data.errors import DatasetError
from bnnprune.data.idx import read_idx
from bnnprune.data.synthetic import SYNTHETIC_DEFAULTS, make_synthetic, stream_generator

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "SYSTEM_DIRS",
    "Dataset",
    "cache_dir",
    "canonical_name",
    "load_dataset",
    "search_dirs",
    "dataset_shape",
]

DATASETS: tuple[str, ...] = ("cifar10", "fashion-mnist", "mnist", "synthetic")
ENV_VAR = "BNNPRUNE_DATA"

_ALIASES = {
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "mnist": "mnist",
    "synthetic": "synthetic",
}

# Known folders outside the user's control where a packaged copy may live.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


@dataclass(frozen=True)
class _Spec:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pad: int
    hflip: bool
    classes: tuple[str, ...]
    subdirs: tuple[str, ...]
    hint: str


_DOWNLOAD_HINT = "or use download=True (--download)"
_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        crop_pad=4,
        hflip=True,
        classes=cifar.CIFAR10_CLASSES,
        subdirs=("cifar10", "cifar-10"),
        hint="pass --data-dir pointing to cifar-10-batches-py or cifar-10-python.tar.gz, "
        + _DOWNLOAD_HINT,
    ),
    "fashion-mnist": _Spec(
        mean=(0.2860,),
        std=(0.3530,),
        crop_pad=2,
        hflip=True,
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST"),
        hint="install it with `apt-get install dataset-fashion-mnist`, pass --data-dir DIR "
        "holding its IDX files, " + _DOWNLOAD_HINT,
    ),
    "mnist": _Spec(
        mean=(0.1307,),
        std=(0.3081,),
        crop_pad=2,
        hflip=False,
        classes=tuple(str(d) for d in range(10)),
        subdirs=("mnist", "MNIST"),
        hint="pass --data-dir DIR holding train-images-idx3-ubyte[.gz] and the other IDX "
        "files, " + _DOWNLOAD_HINT,
    ),
}


_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "cifar10": (3, 32, 32, 10),
    "fashion-mnist": (1, 28, 28, 10),
    "mnist": (1, 28, 28, 10),
}


def dataset_shape(name: str) -> tuple[int, int, int, int]:
    """(channels, height, width, classes) of a file-backed dataset, without loading it."""
    key = canonical_name(name)
    if key not in _SHAPES:
        raise DatasetError(f"{name!r} has no fixed shape; choose from {', '.join(_SHAPES)}")
    return _SHAPES[key]


@dataclass(eq=False, repr=False)
class Dataset:
    """A whole dataset in memory: uint8 images (N, C, H, W) and int64 labels per split.

    ``mean``/``std`` are per channel on the [0, 1] scale (for :func:`normalize`);
    ``crop_pad``/``hflip`` are the augmentation this dataset suits (for :func:`augment`).
    ``source`` records where the data was read from. Construction validates everything,
    so a Dataset that exists is consistent.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pad: int
    hflip: bool
    classes: tuple[str, ...] | None = None
    source: str | None = None
    # a validation split held out of the training images (None: no validation split)
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        if (self.val_x is None) != (self.val_y is None):
            raise DatasetError(f"{self.name}: validation images and labels come together")
        splits = [("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)]
        if self.val_x is not None:
            splits.append(("val", self.val_x, self.val_y))
        for split, x, y in splits:
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DatasetError(
                    f"{self.name}: {split} images must be uint8 (N, C, H, W), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise DatasetError(
                    f"{self.name}: {split} labels must be int64 (N,) with N={len(x)}, "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
            if len(x) == 0:
                raise DatasetError(f"{self.name}: the {split} split is empty")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise DatasetError(
                    f"{self.name}: {split} labels span {int(y.min())}..{int(y.max())}, "
                    f"outside 0..{self.num_classes - 1}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DatasetError(
                f"{self.name}: train images {tuple(self.train_x.shape[1:])} and test images "
                f"{tuple(self.test_x.shape[1:])} differ in shape"
            )
        c = self.in_channels
        if len(self.mean) != c or len(self.std) != c or min(self.std) <= 0:
            raise DatasetError(
                f"{self.name}: need {c} means and {c} positive stds, got {self.mean}, {self.std}"
            )
        if self.crop_pad < 0:
            raise DatasetError(f"{self.name}: crop_pad must be >= 0, got {self.crop_pad}")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise DatasetError(
                f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes"
            )

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        """Height of the images (all loaders here produce square images)."""
        return int(self.train_x.shape[2])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_train(self) -> int:
        return len(self.train_x)

    @property
    def num_test(self) -> int:
        return len(self.test_x)

    @property
    def num_val(self) -> int:
        return 0 if self.val_x is None else len(self.val_x)

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0,
               val: int | None = None) -> Dataset:
        """A copy keeping ``train``/``test`` samples per split, drawn at random with ``seed``,
        and ``val`` further training images held out as a validation split.

        The kept samples stay in their original order; each split has its own random
        stream, so the train subset does not depend on the test size or vice versa. The
        validation images come from the same shuffle of the training images as the train
        subset, right after it: disjoint from it, and the train subset is the same with
        or without a validation split.
        """
        if self.val_x is not None and val:
            raise DatasetError(f"{self.name} already has a validation split")
        if val:
            n_train = train if train is not None else len(self.train_x) - val
            if n_train < 1 or n_train + val > len(self.train_x):
                raise DatasetError(
                    f"{self.name}: {n_train} training + {val} validation images exceed the "
                    f"{len(self.train_x)} training images available"
                )
        tx, ty, hx, hy = _take(self, "train", self.train_x, self.train_y,
                               n_train if val else train, seed, stream=11, held_out=val or 0)
        vx, vy = _take(self, "test", self.test_x, self.test_y, test, seed, stream=12)[:2]
        if val:
            return dataclasses.replace(self, train_x=tx, train_y=ty, test_x=vx, test_y=vy,
                                       val_x=hx, val_y=hy)
        return dataclasses.replace(self, train_x=tx, train_y=ty, test_x=vx, test_y=vy)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"source={self.source!r})"
        )


def _take(
    ds: Dataset, split: str, x: torch.Tensor, y: torch.Tensor, n: int | None, seed: int,
    stream: int, held_out: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``n`` samples drawn with ``seed`` (all when None), and the ``held_out`` samples that
    follow them in the same shuffle (None when 0)."""
    if n is None:
        return x, y, None, None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DatasetError(f"{ds.name}: {split}_subset must be a positive integer, got {n!r}")
    if isinstance(held_out, bool) or not isinstance(held_out, int) or held_out < 0:
        raise DatasetError(f"{ds.name}: a validation split must be an integer >= 0, "
                           f"got {held_out!r}")
    if n + held_out > len(x):
        raise DatasetError(
            f"{ds.name}: {split}_subset={n} exceeds the {len(x) - held_out} {split} samples "
            "available"
        )
    if n == len(x):
        return x, y, None, None
    perm = torch.randperm(len(x), generator=stream_generator(seed, stream))
    idx = perm[:n].sort().values
    kept = x[idx.to(x.device)], y[idx.to(y.device)]
    if not held_out:
        return (*kept, None, None)
    hidx = perm[n:n + held_out].sort().values
    return (*kept, x[hidx.to(x.device)], y[hidx.to(y.device)])


def canonical_name(name: str) -> str:
    """Map a dataset name or alias (case, ``_`` or ``-`` free) to one of ``DATASETS``."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise DatasetError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    return _ALIASES[key]


def cache_dir() -> Path:
    """Per-user download folder: ``$XDG_CACHE_HOME/bnnprune`` or ``~/.cache/bnnprune``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnnprune"


def search_dirs(name: str, root: str | Path | None = None) -> list[Path]:
    """The folders searched for a dataset, in order (see the module docstring)."""
    key = canonical_name(name)
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [Path(env).expanduser() / sub for sub in _SPECS[key].subdirs]
    dirs.append(cache_dir() / key)
    dirs += SYSTEM_DIRS.get(key, ())
    return dirs


def _download_dir(key: str, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() / key if env else cache_dir() / key


def _variants(base: Path, subdirs: Sequence[str]) -> list[Path]:
    """``base`` plus the layouts torchvision and we use below it."""
    out = [base, base / "raw"]
    for sub in subdirs:
        out += [base / sub, base / sub / "raw"]
    return out


def _not_found(key: str, root: str | Path | None) -> DatasetError:
    searched = ", ".join(str(d) for d in search_dirs(key, root))
    return DatasetError(f"{key} not found (searched {searched}); {_SPECS[key].hint}")


# --- IDX datasets (MNIST, Fashion-MNIST) -------------------------------------------------

_IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def _idx_path(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # e.g. Kaggle's train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_idx(base: Path, subdirs: Sequence[str]) -> Path | None:
    for folder in _variants(base, subdirs):
        if _idx_path(folder, _IDX_FILES[("train", "images")]) is not None:
            return folder
    return None


def _idx_complete(folder: Path) -> bool:
    return all(_idx_path(folder, stem) is not None for stem in _IDX_FILES.values())


def _load_idx(folder: Path, num_classes: int) -> list[torch.Tensor]:
    paths: dict[tuple[str, str], Path] = {}
    for key, stem in _IDX_FILES.items():
        path = _idx_path(folder, stem)
        if path is None:
            raise DatasetError(f"{folder}: missing {stem}[.gz] (the IDX set needs all four files)")
        paths[key] = path
    out: list[torch.Tensor] = []
    for split in ("train", "test"):
        ipath, lpath = paths[(split, "images")], paths[(split, "labels")]
        images, labels = read_idx(ipath, 3), read_idx(lpath, 1)
        if len(images) != len(labels):
            raise DatasetError(
                f"{lpath}: {len(labels)} labels but {ipath.name} holds {len(images)} images"
            )
        if len(labels) and int(labels.max()) >= num_classes:
            raise DatasetError(
                f"{lpath}: label {int(labels.max())} is out of range for {num_classes} classes"
            )
        out += [torch.from_numpy(images[:, None]), torch.from_numpy(labels.astype(np.int64))]
    return out


def _find(key: str, base: Path) -> Path | None:
    """The dataset's folder (IDX) or folder/archive (CIFAR) at or below ``base``, if any."""
    subdirs = _SPECS[key].subdirs
    if key != "cifar10":
        return _find_idx(base, subdirs)
    for candidate in (base, *(base / sub for sub in subdirs)):
        found = cifar.find_cifar10(candidate)
        if found is not None:
            return found
    return None


def _resolve(key: str, root: str | Path | None, download: bool) -> Path:
    """Find the dataset's folder or archive; download into the download folder if asked."""
    if root is not None and not download and not Path(root).expanduser().exists():
        raise _not_found(key, root)  # an explicit folder that is not there: never fall back
    found: Path | None = None
    for base in search_dirs(key, root):
        found = _find(key, base)
        if found is not None:
            break
    complete = found is not None and (key == "cifar10" or _idx_complete(found))
    if found is not None and (complete or not download):
        return found
    if not download:
        raise _not_found(key, root)
    target = _download_dir(key, root)
    if target.is_file():
        raise DatasetError(f"{target}: cannot download into a file; pass a folder")
    for remote in RESOURCES[key]:
        if not (target / remote.filename).is_file():
            download_file(remote.url, target / remote.filename, remote.digest)
    return target / RESOURCES[key][0].filename if key == "cifar10" else target


def _load_files(key: str, root: str | Path | None, download: bool) -> Dataset:
    spec = _SPECS[key]
    location = _resolve(key, root, download)
    if key == "cifar10":
        tx, ty, vx, vy, classes = cifar.load_cifar10(location)
        tensors = [torch.from_numpy(a) for a in (tx, ty, vx, vy)]
    else:
        tensors = _load_idx(location, len(spec.classes))
        classes = spec.classes
    return Dataset(
        key,
        *tensors,
        num_classes=len(spec.classes),
        mean=spec.mean,
        std=spec.std,
        crop_pad=spec.crop_pad,
        hflip=spec.hflip,
        classes=classes,
        source=str(location),
    )


def _load_synthetic(seed: int, options: dict[str, Any]) -> Dataset:
    unknown = sorted(set(options) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise DatasetError(
            f"unknown synthetic option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(SYNTHETIC_DEFAULTS)}"
        )
    settings = {**SYNTHETIC_DEFAULTS, **options}
    tx, ty, vx, vy = make_synthetic(**settings, seed=seed)
    scaled = tx.to(torch.float32).div_(255.0)
    mean = scaled.mean(dim=(0, 2, 3)).tolist()
    std = scaled.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    desc = ", ".join(f"{k}={v}" for k, v in settings.items())
    return Dataset(
        "synthetic",
        tx,
        ty,
        vx,
        vy,
        num_classes=int(settings["num_classes"]),
        mean=tuple(mean),
        std=tuple(std),
        crop_pad=0,
        hflip=False,
        source=f"synthetic({desc}, seed={seed})",
    )


def load_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = False,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    val_subset: int | None = None,
    crop_pad: int | None = None,
    hflip: bool | None = None,
    **synthetic_kwargs: Any,
) -> Dataset:
    """Load a dataset by name into memory, optionally subsampled.

    ``root`` is searched first (a folder, or for cifar10 also the .tar.gz itself; a ``root``
    that does not exist is an error, never a silent fall-back to another copy);
    ``download=True`` fetches missing official files (checksum-verified) into ``root`` or
    the cache. ``train_subset``/``test_subset`` keep that many samples drawn with ``seed``,
    which also seeds the synthetic data; ``val_subset`` holds that many further training
    images out as a validation split (``Dataset.val_x``). ``crop_pad``/``hflip`` override
    the dataset's default augmentation. Extra keyword arguments configure ``synthetic``:
    n_train, n_test, channels, image_size, num_classes, noise.
    """
    key = canonical_name(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"seed must be an integer >= 0, got {seed!r}")
    if key == "synthetic":
        ds = _load_synthetic(seed, synthetic_kwargs)
    elif synthetic_kwargs:
        raise DatasetError(
            f"option(s) {', '.join(sorted(synthetic_kwargs))} apply only to the synthetic "
            f"dataset, not {key}"
        )
    else:
        ds = _load_files(key, root, download)
    if crop_pad is not None or hflip is not None:
        ds = dataclasses.replace(
            ds,
            crop_pad=ds.crop_pad if crop_pad is None else crop_pad,
            hflip=ds.hflip if hflip is None else hflip,
        )
    return ds.subset(train_subset, test_subset, seed, val_subset)
