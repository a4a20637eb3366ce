"""Fetching the official dataset files, verified against their published checksums.

Nothing here runs unless the caller asked for a download. Without a network the first
request fails within ``DOWNLOAD_TIMEOUT_S`` seconds and raises a one-line DatasetError.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bnnprune.data.errors import DatasetError, one_line

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "RESOURCES",
    "RemoteFile",
    "download_file",
    "file_digest",
    "verify_checksum",
]

DOWNLOAD_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class RemoteFile:
    """One official file: where it lives and its published digest (md5 or sha256 hex)."""

    filename: str
    url: str
    digest: str


_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"

# Digests as published by the dataset authors (Fashion-MNIST README, CIFAR page) and by
# torchvision for its MNIST mirror.
RESOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "cifar10": (
        RemoteFile(
            "cifar-10-python.tar.gz",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
    ),
    "fashion-mnist": tuple(
        RemoteFile(name, _FASHION + name, md5)
        for name, md5 in (
            ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
            ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
            ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
        )
    ),
    "mnist": tuple(
        RemoteFile(name, _MNIST + name, md5)
        for name, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        )
    ),
}


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | Path, expected: str) -> None:
    """Raise DatasetError unless the file matches ``expected`` (32 hex = md5, 64 = sha256)."""
    expected = expected.strip().lower()
    algorithm = {32: "md5", 64: "sha256"}.get(len(expected))
    if algorithm is None:
        raise ValueError(f"not an md5 or sha256 hex digest: {expected!r}")
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DatasetError(
            f"{path}: {algorithm} checksum mismatch (expected {expected}, got {actual}); "
            "the file is corrupt or incomplete"
        )


def download_file(
    url: str, dest: str | Path, digest: str, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """Download ``url`` to ``dest`` and verify it; the file appears only once verified.

    The bytes go to ``dest + '.part'`` first, which is removed on any failure, so an
    interrupted or corrupt download never looks like a finished one.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        part.unlink(missing_ok=True)
        reason = one_line(getattr(exc, "reason", None) or exc)
        raise DatasetError(
            f"could not download {url} ({reason}); without network, "
            f"place the file at {dest} yourself"
        ) from None
    try:
        verify_checksum(part, digest)
    except DatasetError as exc:
        part.unlink(missing_ok=True)
        raise DatasetError(f"download of {url} rejected: {exc}") from None
    os.replace(part, dest)
    return dest
