"""Datasets as in-memory uint8 tensors, and batch augmentation on tensors.

``load_dataset(name, ...)`` gives a :class:`Dataset` (cifar10, fashion-mnist, mnist,
synthetic) read from the standard on-disk formats without torchvision; ``batches``,
``augment`` and ``normalize`` turn it into training batches on any device.
"""

from typing import Any

from bnnprune.data.datasets import (
    DATASETS,
    ENV_VAR,
    SYSTEM_DIRS,
    Dataset,
    cache_dir,
    canonical_name,
    dataset_shape,
    load_dataset,
    search_dirs,
)
from bnnprune.data.download import RESOURCES, download_file, verify_checksum
from bnnprune.data.errors import DatasetError
from bnnprune.data.transforms import augment, batches, normalize

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "RESOURCES",
    "SYSTEM_DIRS",
    "Dataset",
    "DatasetError",
    "augment",
    "batches",
    "cache_dir",
    "canonical_name",
    "dataset_shape",
    "download_file",
    "load_dataset",
    "load_from_config",
    "normalize",
    "search_dirs",
    "verify_checksum",
]


def load_from_config(cfg: Any, seed: int = 0) -> Dataset:
    """Load the dataset a :class:`bnnprune.config.DataConfig` names (subsets drawn with
    ``seed``; a subset of 0 or None means all images; ``val_subset`` training images held
    out as a validation split)."""
    return load_dataset(
        cfg.name,
        root=cfg.root,
        download=cfg.download,
        train_subset=cfg.train_subset or None,
        test_subset=cfg.test_subset or None,
        seed=seed,
        val_subset=cfg.val_subset or None,
    )
