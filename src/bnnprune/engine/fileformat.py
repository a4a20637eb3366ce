"""The ``.bnn`` file: one self-checking file holding a compiled :class:`Program`.

Layout (all little-endian)::

    magic    8 bytes  b"\\x89BNN\\r\\n\\x1a\\n"
    version  uint32   FORMAT_VERSION
    hlen     uint64   length of the JSON header
    header   hlen bytes of UTF-8 JSON: input shape, values, ops (kind, inputs, output,
             attrs, arrays by name -> index), output, meta, and the array table
             [{"dtype", "shape", "offset", "nbytes"}] (offsets relative to the data start)
    padding  zeros up to a multiple of 64 bytes
    data     raw arrays, each starting at a multiple of 64 bytes
    sha256   32 bytes over everything before it

No pickle anywhere. :func:`load` checks magic, version, length, checksum, the header
schema, every array's bounds, and then validates the program (shapes, indices, kinds),
raising :class:`BnnFormatError` with a one-line message on the first fault.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from bnnprune.atomic import atomic_write_bytes
from bnnprune.engine.errors import BnnFormatError, EngineError
from bnnprune.engine.program import V2_KINDS, Op, Program, ValueInfo
from bnnprune.limits import memory_bytes

__all__ = ["FORMAT_VERSION", "MAGIC", "load", "pack_file", "required_version", "save",
           "unpack_file"]

MAGIC = b"\x89BNN\r\n\x1a\n"
FORMAT_VERSION = 2  # 2 added the op kinds in program.V2_KINDS; version 1 files still load
_DTYPES = {"<u8": np.uint64, "<f4": np.float32, "<i4": np.int32, "|u1": np.uint8}
_PRE = len(MAGIC) + 4 + 8
_ALIGN = 64
_SUM = 32


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def pack_file(header: dict[str, Any], arrays: list[np.ndarray],
              version: int = FORMAT_VERSION) -> bytes:
    """Serialize a header dict and its arrays (the header gets the array table)."""
    table, blobs, offset = [], [], 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("|", "<") else a.dtype
        raw = a.astype(dt, copy=False).tobytes()
        table.append({"dtype": dt.str, "shape": list(a.shape), "offset": offset,
                      "nbytes": len(raw)})
        blobs.append(raw + b"\0" * (_align(len(raw)) - len(raw)))
        offset += _align(len(raw))
    head = json.dumps({**header, "arrays": table}, separators=(",", ":")).encode("utf-8")
    pre = MAGIC + struct.pack("<IQ", version, len(head)) + head
    body = pre + b"\0" * (_align(len(pre)) - len(pre)) + b"".join(blobs)
    return body + hashlib.sha256(body).digest()


def _fail(msg: str) -> BnnFormatError:
    return BnnFormatError(msg.splitlines()[0] if msg else "invalid .bnn file")


def unpack_file(data: bytes) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Check magic, version, checksum and array table; return the header and arrays."""
    if len(data) < _PRE + _SUM:
        raise _fail(f"not a .bnn file: only {len(data)} bytes (truncated?)")
    if data[:len(MAGIC)] != MAGIC:
        raise _fail("not a .bnn file: wrong magic bytes")
    version, hlen = struct.unpack("<IQ", data[len(MAGIC):_PRE])
    if version > FORMAT_VERSION:
        raise _fail(f".bnn format version {version} is newer than this bnnprune supports "
                    f"({FORMAT_VERSION}); upgrade bnnprune")
    if version < 1:
        raise _fail(f"invalid .bnn format version {version}")
    body, digest = data[:-_SUM], data[-_SUM:]
    if hashlib.sha256(body).digest() != digest:
        raise _fail("checksum mismatch: the .bnn file is corrupted or truncated")
    if _PRE + hlen > len(body):
        raise _fail("header length exceeds the file size")
    try:
        header = json.loads(body[_PRE:_PRE + hlen].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise _fail("header must be an object with an 'arrays' table")
    start = _align(_PRE + hlen)
    arrays = []
    for i, ent in enumerate(header["arrays"]):
        arrays.append(_read_array(body, start, i, ent))
    return header, arrays


def _read_array(body: bytes, start: int, i: int, ent: Any) -> np.ndarray:
    if not isinstance(ent, dict):
        raise _fail(f"array {i}: table entry must be an object")
    dt, shape, off, nb = ent.get("dtype"), ent.get("shape"), ent.get("offset"), ent.get("nbytes")
    if not isinstance(dt, str) or dt not in _DTYPES:
        raise _fail(f"array {i}: unsupported dtype {dt!r}")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise _fail(f"array {i}: malformed shape {shape!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (off, nb)):
        raise _fail(f"array {i}: malformed offset/nbytes")
    dtype = np.dtype(dt)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * dtype.itemsize != nb:
        raise _fail(f"array {i}: {nb} bytes do not hold shape {shape} of {dt}")
    if start + off + nb > len(body) or off % _ALIGN:
        raise _fail(f"array {i}: data lies outside the file")
    a = np.frombuffer(body, dtype=dtype, count=count, offset=start + off)
    return a.reshape(shape).astype(_DTYPES[dt], copy=True)


def _program_header(program: Program) -> tuple[dict[str, Any], list[np.ndarray]]:
    arrays: list[np.ndarray] = []
    ops = []
    for op in program.ops:
        refs = {}
        for name, arr in op.arrays.items():
            refs[name] = len(arrays)
            arrays.append(arr)
        ops.append({"kind": op.kind, "inputs": list(op.inputs), "output": op.output,
                    "attrs": op.attrs, "arrays": refs, "name": op.name})
    header = {"format": "bnnprune-packed", "input_shape": list(program.input_shape),
              "values": [v.to_dict() for v in program.values], "ops": ops,
              "output": program.output, "meta": program.meta}
    return header, arrays


def required_version(program: Program) -> int:
    """The oldest format version that holds ``program`` (1 unless it uses a newer op kind)."""
    return 2 if any(op.kind in V2_KINDS for op in program.ops) else 1


def save(program: Program, path: str | os.PathLike[str]) -> int:
    """Write ``program`` to ``path`` atomically; returns the file size in bytes.

    The file gets the oldest format version that can hold the program, so a program
    without the newer op kinds stays readable by older bnnprune releases.
    """
    header, arrays = _program_header(program)
    data = pack_file(header, arrays, required_version(program))
    atomic_write_bytes(path, data)
    return len(data)


def _field(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    v = d.get(key)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise _fail(f"{where}: field {key!r} is missing or malformed")
    return v


def program_from_header(header: dict[str, Any], arrays: list[np.ndarray]) -> Program:
    """Build and validate a :class:`Program` from a parsed header and its arrays."""
    shape = _field(header, "input_shape", list, "header")
    values = []
    for i, v in enumerate(_field(header, "values", list, "header")):
        if not isinstance(v, dict):
            raise _fail(f"value {i}: must be an object")
        values.append(ValueInfo(v.get("kind"), v.get("h"), v.get("w"), v.get("c"),
                                v.get("flat", False), v.get("source", "")))
    ops = []
    for i, o in enumerate(_field(header, "ops", list, "header")):
        where = f"op {i}"
        if not isinstance(o, dict):
            raise _fail(f"{where}: must be an object")
        refs = _field(o, "arrays", dict, where)
        arrs = {}
        for name, idx in refs.items():
            if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(arrays):
                raise _fail(f"{where}: array reference {name!r} is out of range")
            arrs[str(name)] = arrays[idx]
        inputs = _field(o, "inputs", list, where)
        ops.append(Op(_field(o, "kind", str, where), inputs, _field(o, "output", int, where),
                      _field(o, "attrs", dict, where), arrs, str(o.get("name", ""))))
    meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
    try:
        if len(shape) != 3 or not all(isinstance(s, int) and 1 <= s <= 1 << 16 for s in shape):
            raise EngineError(f"input_shape must be three positive integers, got {shape}")
        return Program(tuple(shape), values, ops, _field(header, "output", int, "header"), meta)
    except EngineError as e:
        raise _fail(f"inconsistent program: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise _fail(f"inconsistent program: {type(e).__name__}: {e}") from None


def load(path: str | os.PathLike[str]) -> Program:
    """Read and fully validate a ``.bnn`` file; raises :class:`BnnFormatError` on any fault."""
    try:
        size = os.stat(path).st_size
        if size > memory_bytes():
            raise _fail(f"not a .bnn file bnnprune can load: {size} bytes, more than this "
                        f"machine's memory ({memory_bytes()} bytes)")
        data = Path(path).read_bytes()
    except OSError as e:
        raise _fail(f"cannot read {path}: {e.strerror or e}") from None
    header, arrays = unpack_file(data)
    return program_from_header(header, arrays)
