"""Bounded fuzzing of every reader of untrusted bytes: IDX files, CIFAR-10 batches (restricted
unpickler + batch parser), the `.bnn` loader, checkpoints (`load_model`) and TOML configs.

Each reader may accept an input or refuse it with its documented exception (DatasetError,
BnnFormatError, CheckpointError, ConfigError); anything else (another exception, a hang, a
crash) fails. The examples are derandomized so CI is reproducible; set
BNNPRUNE_FUZZ_EXAMPLES=N for a longer, random run.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import signal
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bnnprune import engine
from bnnprune.checkpoint import CheckpointError, load_model
from bnnprune.config import ConfigError, load_config
from bnnprune.data import DatasetError
from bnnprune.data.cifar import parse_batch, safe_unpickle
from bnnprune.data.idx import read_idx
from bnnprune.engine import BnnFormatError
from bnnprune.engine.fileformat import MAGIC
from bnnprune.models import build_model

_ENV_EXAMPLES = os.environ.get("BNNPRUNE_FUZZ_EXAMPLES")
EXAMPLES = int(_ENV_EXAMPLES or 200)
HANG_SECONDS = 10.0


def fuzz(examples: int = EXAMPLES):
    """Bounded settings: fixed examples and no shrinking in CI, random ones with shrinking
    when BNNPRUNE_FUZZ_EXAMPLES asks for a longer run."""
    ci = _ENV_EXAMPLES is None
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=ci,
        phases=[Phase.explicit, Phase.generate] if ci else list(Phase),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS):
    """Fail an example that runs longer than ``seconds`` (a reader must never loop forever)."""

    def alarm(*_):
        raise Hang(f"no answer within {seconds}s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """``base`` with a few byte edits, insertions, deletions and maybe a truncation."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["set", "xor", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "xor" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[pos : pos + draw(st.integers(1, 8))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------------------ IDX


def _idx(array: np.ndarray) -> bytes:
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


IDX_IMAGES = _idx(np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4))
IDX_LABELS = _idx(np.array([1, 7, 3], dtype=np.uint8))


def _read_idx_bytes(scratch, data: bytes, ndim: int, gz: bool) -> None:
    path = scratch / ("f.idx.gz" if gz else "f.idx")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    with no_hang():
        try:
            arr = read_idx(path, ndim)
        except DatasetError as e:
            assert "\n" not in str(e)
            return
    assert arr.dtype == np.uint8 and arr.ndim == ndim
    header = 4 + 4 * ndim
    assert arr.tobytes() == data[header:]  # accepted only when the sizes are exact


@fuzz()
@given(
    st.one_of(mutated(IDX_IMAGES), mutated(IDX_LABELS)),
    st.sampled_from([1, 3]),
    st.booleans(),
)
def test_idx_reader_mutations(scratch, data, ndim, gz):
    _read_idx_bytes(scratch, data, ndim, gz)


@fuzz(EXAMPLES // 2)
@given(
    st.sampled_from([0x08, 0x09, 0x0B, 0x0D, 0x00, 0xFF]),
    st.integers(0, 4),
    st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), min_size=0, max_size=4),
    st.binary(max_size=300),
    st.booleans(),
)
def test_idx_reader_headers(scratch, dtype, ndim, dims, body, gz):
    """Forged headers: huge or zero dimensions, wrong types, wrong ranks, short bodies."""
    data = bytes([0, 0, dtype, ndim]) + b"".join(struct.pack(">I", d) for d in dims) + body
    _read_idx_bytes(scratch, data, 3, gz)


@fuzz(EXAMPLES // 4)
@given(st.binary(max_size=200))
def test_idx_reader_random_gzip(scratch, payload):
    """Bytes that claim to be gzip (magic 1f 8b) but are anything."""
    _read_idx_bytes(scratch, b"\x1f\x8b" + payload, 1, False)


# ---------------------------------------------------------------------------- CIFAR


def _batch(n: int = 2) -> dict:
    rng = np.random.default_rng(0)
    return {
        b"batch_label": b"fuzz",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"a.png", b"b.png"][:n],
    }


CIFAR_PICKLES = [pickle.dumps(_batch(), protocol=p) for p in (2, 4)]


def _parse_cifar(data: bytes) -> None:
    with no_hang():
        try:
            images, labels = parse_batch(safe_unpickle(data, "fuzz"), "fuzz")
        except DatasetError as e:
            assert "\n" not in str(e)
            return
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
    assert labels.dtype == np.int64 and len(labels) == len(images)
    assert len(labels) == 0 or (labels.min() >= 0 and labels.max() <= 9)


@fuzz()
@given(st.sampled_from(CIFAR_PICKLES).flatmap(mutated))
def test_cifar_batch_mutations(data):
    _parse_cifar(data)


@fuzz(EXAMPLES // 4)
@given(st.binary(max_size=400))
def test_cifar_batch_random_bytes(data):
    _parse_cifar(b"\x80\x02" + data)


@fuzz(EXAMPLES // 4)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from([b"data", b"labels", "data", "labels"]), inner)
        ),
        max_leaves=12,
    )
)
def test_cifar_parser_odd_objects(obj):
    """Well-formed pickles of the wrong shape: parse_batch refuses them cleanly."""
    _parse_cifar(pickle.dumps(obj, protocol=2))


# ----------------------------------------------------------------------------- .bnn


@pytest.fixture(scope="module")
def bnn(scratch):
    """A real small compiled program (random BatchNorm so thresholds vary) and its bytes."""
    torch.manual_seed(0)
    model = build_model("small", width=0.25, in_channels=1, num_classes=4, image_size=12)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 2)
                m.running_var.uniform_(0.5, 4)
                m.weight.normal_()
                m.bias.normal_()
    path = scratch / "base.bnn"
    engine.save(engine.compile_model(model.eval(), (1, 12, 12)), path)
    x = np.random.default_rng(0).standard_normal((2, 1, 12, 12)).astype(np.float32)
    return _Base(path.read_bytes(), x)


class _Base(tuple):
    """(file bytes, input batch), with a short repr for hypothesis' failure reports."""

    def __new__(cls, data: bytes, x: np.ndarray):
        return super().__new__(cls, (data, x))

    def __repr__(self) -> str:
        return f"<base .bnn of {len(self[0])} bytes>"


def _reseal(data: bytes) -> bytes:
    """Fix the trailing SHA-256 so the fuzzed bytes reach the parser and validator."""
    if len(data) < 32:
        return data
    return data[:-32] + hashlib.sha256(data[:-32]).digest()


def _load_bnn(scratch, data: bytes, x: np.ndarray) -> None:
    path = scratch / "f.bnn"
    path.write_bytes(data)
    with no_hang():
        try:
            program = engine.load(path)
        except BnnFormatError as e:
            assert "\n" not in str(e)
            return
        out = program(x)  # a file the loader accepts must run safely
    assert out.shape[0] == len(x)


@fuzz(EXAMPLES // 2)
@given(st.data())
def test_bnn_loader_raw_mutations(scratch, bnn, data):
    base, x = bnn
    _load_bnn(scratch, data.draw(mutated(base)), x)


@pytest.mark.slow  # the longest fuzz campaign: every mutation compiles and runs a program
@fuzz()
@given(st.data())
def test_bnn_loader_resealed_mutations(scratch, bnn, data):
    """Mutations with a valid checksum: header JSON, array table and array data."""
    base, x = bnn
    _load_bnn(scratch, _reseal(data.draw(mutated(base))), x)


def _json_paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _json_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _json_paths(v, (*prefix, i))
    if prefix:
        yield prefix


JSON_VALUES = (
    st.integers(-(2**63), 2**64)
    | st.sampled_from([0, 1, -1, 2, 3, 64, 65, 2**31, 2**32 + 1])
    | st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.lists(st.integers(-2, 70), max_size=4)
    | st.just({})
)


@fuzz()
@given(st.data())
def test_bnn_loader_header_fields(scratch, bnn, data):
    """Well-formed files whose JSON header has fields replaced, removed or retyped."""
    base, x = bnn
    hlen = struct.unpack("<Q", base[len(MAGIC) + 4 : len(MAGIC) + 12])[0]
    start = len(MAGIC) + 12
    header = json.loads(base[start : start + hlen])
    pad_to = -(-(start + hlen) // 64) * 64
    payload = base[pad_to:-32]
    paths = sorted(_json_paths(header), key=str)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = header
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.integers(0, 9)) == 0 and isinstance(parent, dict):
                del parent[path[-1]]
            else:
                parent[path[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or retyped this path
    head = json.dumps(header).encode()
    pre = MAGIC + base[len(MAGIC) : len(MAGIC) + 4] + struct.pack("<Q", len(head)) + head
    body = pre + b"\0" * (-len(pre) % 64) + payload
    _load_bnn(scratch, body + hashlib.sha256(body).digest(), x)


def test_base_program_round_trips(scratch, bnn):
    base, x = bnn
    path = scratch / "same.bnn"
    path.write_bytes(base)
    assert engine.load(path)(x).shape == (2, 4)
    with io.BytesIO(base) as f:
        assert f.read(len(MAGIC)) == MAGIC


# ----------------------------------------------------------------------- checkpoints


def _checkpoint_bytes(payload: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": "bnnprune-checkpoint", "version": 1, **payload}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ckpt():
    """A real (tiny) checkpoint payload and its bytes."""
    model = build_model("small", width=0.125, in_channels=1, num_classes=3, image_size=8)
    payload = {
        "arch": model.arch,
        "state_dict": model.state_dict(),
        "dataset": {"name": "synthetic", "input_shape": [1, 8, 8], "num_classes": 3},
        "flips": None,
    }
    return _Base(_checkpoint_bytes(payload), payload)


def _load_ckpt(scratch, data: bytes) -> None:
    path = scratch / "f.pt"
    path.write_bytes(data)
    with no_hang():
        try:
            model, loaded = load_model(path)
        except CheckpointError as e:
            assert "\n" not in str(e)
            return
    # accepted: the rebuilt model holds exactly the stored weights
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded["state_dict"][key]), key


@fuzz(EXAMPLES // 2)
@given(st.data())
def test_checkpoint_reader_byte_mutations(scratch, ckpt, data):
    _load_ckpt(scratch, data.draw(mutated(ckpt[0])))


ODD_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.lists(st.integers(-3, 10**6), max_size=4)
    | st.just({})
    | st.builds(torch.zeros, st.lists(st.integers(0, 5), max_size=4).map(tuple))
)


@fuzz(EXAMPLES // 4)
@given(st.data())
def test_checkpoint_reader_field_edits(scratch, ckpt, data):
    """Well-formed checkpoints whose spec, weights or keys are replaced by odd values."""
    payload = {**ckpt[1], "arch": json.loads(json.dumps(ckpt[1]["arch"])),
               "state_dict": dict(ckpt[1]["state_dict"])}
    slots = [("arch", "name"), ("arch", "kwargs"), ("state_dict", None), ("top", "arch")]
    slots += [("kwargs", k) for k in payload["arch"]["kwargs"]]
    slots += [("state_dict", k) for k in payload["state_dict"]]
    for _ in range(data.draw(st.integers(1, 3))):
        where, key = data.draw(st.sampled_from(slots))
        value = data.draw(ODD_VALUES)
        if where == "top":
            payload[key] = value
        elif where == "arch" and isinstance(payload["arch"], dict):
            payload["arch"][key] = value
        elif where == "kwargs" and isinstance(payload["arch"], dict):
            if isinstance(payload["arch"].get("kwargs"), dict):
                payload["arch"]["kwargs"][key] = value
        elif where == "state_dict" and key is None:
            payload["state_dict"] = value
        elif isinstance(payload["state_dict"], dict):
            payload["state_dict"][key] = value
    _load_ckpt(scratch, _checkpoint_bytes(payload))


# ----------------------------------------------------------------------- TOML config

CONFIG = b'[model]\nname = "small"\nwidth = 0.25\n[data]\nname = "synthetic"\n[train]\nepochs = 2\n'


def _load_toml(scratch, data: bytes) -> None:
    path = scratch / "c.toml"
    path.write_bytes(data)
    with no_hang():
        try:
            cfg = load_config(path)
            cfg.validate()
        except (ConfigError, DatasetError) as e:
            assert "\n" not in str(e).strip()
            return
    assert cfg.train.epochs >= 1 and cfg.model.width > 0


@fuzz()
@given(mutated(CONFIG))
def test_config_loader_mutations(scratch, data):
    _load_toml(scratch, data)


@fuzz(EXAMPLES // 2)
@given(
    st.lists(
        st.sampled_from(["[", "]", "{", "}", "=", "a", " ", "\n", '"', "1", ",", ".", "#",
                         "[train]", "epochs", "[[x]]", "1e999", "0x", "inf", "nan"]),
        max_size=60,
    ).map("".join),
    st.integers(0, 20_000),
)
def test_config_loader_odd_text(scratch, text, depth):
    """Token soup, plus arrays nested ``depth`` deep (RecursionError must not escape)."""
    _load_toml(scratch, ("x = " + "[" * depth + "]" * depth + "\n" + text).encode())
