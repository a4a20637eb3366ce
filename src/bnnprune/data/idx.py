"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or raw).

Layout: two zero bytes, an element-type byte (0x08 = unsigned byte), the number of
dimensions, then one big-endian uint32 per dimension, then the data in C order.
Every size is checked against the file so a truncated or padded file is reported,
never silently reshaped.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from bnnprune.data.errors import DatasetError, one_line

__all__ = ["read_idx", "read_raw_or_gzip"]

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_OTHER_IDX_TYPES = {0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def read_raw_or_gzip(path: Path) -> bytes:
    """Return a file's bytes, decompressing it when it starts with the gzip magic."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
            fh.seek(0)
            if head != _GZIP_MAGIC:
                return fh.read()
            with gzip.GzipFile(fileobj=fh) as gz:
                return gz.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated file ({one_line(exc)})") from None


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with exactly ``ndim`` dimensions into a uint8 array."""
    path = Path(path)
    raw = read_raw_or_gzip(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, the header needs 4)")
    if raw[0:2] != b"\0\0" or (raw[2] != _UBYTE and raw[2] not in _OTHER_IDX_TYPES):
        raise DatasetError(f"{path}: not an IDX file (bad magic 0x{raw[:4].hex()})")
    if raw[2] != _UBYTE:
        kind = _OTHER_IDX_TYPES[raw[2]]
        raise DatasetError(f"{path}: IDX element type {kind} is unsupported, expected uint8")
    if raw[3] != ndim:
        raise DatasetError(f"{path}: IDX file has {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(shape)
    body = len(raw) - header
    if body < count:
        raise DatasetError(
            f"{path}: truncated IDX file: shape {shape} needs {count} data bytes, found {body}"
        )
    if body > count:
        raise DatasetError(
            f"{path}: IDX file has {body - count} unexpected bytes after shape {shape}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=count, offset=header).reshape(shape).copy()
