"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or raw).

Layout: two zero bytes, an element-type byte (0x08 = unsigned byte), the number of
dimensions, then one big-endian uint32 per dimension, then the data in C order.
Every size is checked against the file so a truncated or padded file is reported,
never silently reshaped.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from bnnprune.data.errors import DatasetError, one_line
from bnnprune.limits import CHUNK, memory_bytes, read_at_most

__all__ = ["read_idx", "read_raw_or_gzip"]

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_OTHER_IDX_TYPES = {0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def read_raw_or_gzip(path: Path) -> bytes:
    """Return a file's bytes, decompressing it when it starts with the gzip magic."""
    with _stream(path) as fh:
        return _checked(path, lambda: read_at_most(fh, memory_bytes() + 1))


@contextlib.contextmanager
def _stream(path: Path) -> Iterator[BinaryIO]:
    """The file's (decompressed) byte stream; open errors become DatasetError."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != _GZIP_MAGIC:
                fh.seek(0)
                yield fh
                return
            fh.seek(0)
            with gzip.GzipFile(fileobj=fh) as gz:
                yield gz  # type: ignore[misc]
    except OSError as exc:
        raise DatasetError(f"{path}: corrupt or truncated file ({one_line(exc)})") from None


def _checked(path: Path, read: Callable[[], bytes]) -> bytes:
    """Run one read of a (possibly gzipped) stream, turning decompression faults into
    DatasetError."""
    try:
        return read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated file ({one_line(exc)})") from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with exactly ``ndim`` dimensions into a uint8 array.

    The header is checked before the data is read, and the data is read piecewise, so a
    header declaring more images than the file holds (or than memory could) costs nothing.
    """
    path = Path(path)
    with _stream(path) as fh:
        head = _checked(path, lambda: read_at_most(fh, 4))
        if len(head) < 4:
            raise DatasetError(
                f"{path}: truncated IDX file ({len(head)} bytes, the header needs 4)"
            )
        if head[0:2] != b"\0\0" or (head[2] != _UBYTE and head[2] not in _OTHER_IDX_TYPES):
            raise DatasetError(f"{path}: not an IDX file (bad magic 0x{head.hex()})")
        if head[2] != _UBYTE:
            kind = _OTHER_IDX_TYPES[head[2]]
            raise DatasetError(f"{path}: IDX element type {kind} is unsupported, expected uint8")
        if head[3] != ndim:
            raise DatasetError(f"{path}: IDX file has {head[3]} dimensions, expected {ndim}")
        header = 4 + 4 * ndim
        dims = _checked(path, lambda: read_at_most(fh, 4 * ndim))
        if len(dims) < 4 * ndim:
            raise DatasetError(
                f"{path}: truncated IDX header ({4 + len(dims)} of {header} bytes)"
            )
        shape = struct.unpack(f">{ndim}I", dims)
        count = math.prod(shape)
        if count > memory_bytes():
            raise DatasetError(
                f"{path}: IDX header declares shape {shape} ({count} bytes), more than this "
                f"machine's memory ({memory_bytes()} bytes)"
            )
        raw = _checked(path, lambda: read_at_most(fh, count))
        if len(raw) < count:
            raise DatasetError(
                f"{path}: truncated IDX file: shape {shape} needs {count} data bytes, "
                f"found {len(raw)}"
            )
        extra = len(_checked(path, lambda: read_at_most(fh, CHUNK)))
    if extra:
        more = "" if extra < CHUNK else "at least "
        raise DatasetError(
            f"{path}: IDX file has {more}{extra} unexpected bytes after shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=count).reshape(shape).copy()
