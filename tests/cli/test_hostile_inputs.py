"""Hostile and huge inputs (docs/bad-inputs.md, "Hostile and huge inputs"): files whose headers
declare terabytes, gzip bombs, sparse giant files, absurd pickles and forged checkpoints are
refused by the CLI with one line and exit code 2 before any large allocation.

All commands run in one real process (hostile_driver.py) under an address-space limit of
1.5 GiB above its start; each command's peak Python-level allocation (tracemalloc, which
also counts memory only reserved for a declared size) must stay under PEAK_LIMIT."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from bnnprune import engine
from bnnprune.checkpoint import save_checkpoint
from bnnprune.engine.fileformat import MAGIC
from bnnprune.limits import memory_bytes
from bnnprune.models import build_model

DRIVER = Path(__file__).with_name("hostile_driver.py")
PEAK_LIMIT = 32 << 20
CONTROL_BYTES = 200 << 20

# id -> (command with {f} = the case's file or folder and {out} = a fresh folder, message part)
CASES: dict[str, tuple[str, str]] = {
    "bnn-array-of-a-terabyte": ("bench {f}", "data lies outside the file"),
    "bnn-header-length-of-a-terabyte": ("bench {f}", "header length exceeds the file size"),
    "bnn-file-larger-than-memory": ("bench {f}", "more than this machine's memory"),
    "idx-declares-2^31-images": (
        "train --dataset fashion-mnist --data-dir {f} -o {out}",
        "more than this machine's memory",
    ),
    "idx-declares-800-MB-holds-10-MB": (
        "train --dataset fashion-mnist --data-dir {f} -o {out}",
        "needs 822083584 data bytes, found 10485760",
    ),
    "idx-gzip-bomb-after-the-data": (
        "train --dataset fashion-mnist --data-dir {f} -o {out}",
        "at least 1048576 unexpected bytes",
    ),
    "cifar-batch-file-of-a-gigabyte": (
        "train --dataset cifar10 --data-dir {f} -o {out}",
        "far more than a CIFAR-10 batch holds",
    ),
    "cifar-archive-member-of-64-GiB": (
        "train --dataset cifar10 --data-dir {f} -o {out}",
        "far more than a CIFAR-10 batch holds",
    ),
    "cifar-array-of-2^31-images": (
        "train --dataset cifar10 --data-dir {f} -o {out}",
        "unreadable pickle",
    ),
    "cifar-pickle-string-of-16-GiB": (
        "train --dataset cifar10 --data-dir {f} -o {out}",
        "unreadable pickle",
    ),
    "toml-of-5-MB": ("train --config {f} -o {out}", "larger than 1048576 bytes"),
    "toml-nested-100000-deep": ("train --config {f} -o {out}", "nested too deeply"),
    "toml-integer-of-5000-digits": ("train --config {f} -o {out}", "not valid TOML"),
    "checkpoint-tensor-of-a-terabyte-on-one-float": ("eval {f}", "claims 4398046511104 bytes"),
    "checkpoint-model-spec-width-10000": ("eval {f}", "its model spec needs"),
    "checkpoint-storage-of-2^62-elements": ("eval {f}", "malformed: TypeError"),
    "checkpoint-view-beyond-its-storage": ("eval {f}", "truncated or corrupt: RuntimeError"),
}


# ------------------------------------------------------------------------------ builders


def _small(width: float = 0.25):
    return build_model("small", width=width, in_channels=3, num_classes=10, image_size=32)


def _bnn_parts(path: Path) -> tuple[bytes, dict, bytes]:
    """(version bytes, header dict, data payload) of a real .bnn file."""
    data = path.read_bytes()
    hlen = struct.unpack("<Q", data[len(MAGIC) + 4 : len(MAGIC) + 12])[0]
    start = len(MAGIC) + 12
    pad_to = -(-(start + hlen) // 64) * 64
    return data[len(MAGIC) : len(MAGIC) + 4], json.loads(data[start : start + hlen]), data[
        pad_to:-32
    ]


def _bnn(version: bytes, header: dict, payload: bytes, hlen: int | None = None) -> bytes:
    head = json.dumps(header).encode()
    pre = MAGIC + version + struct.pack("<Q", len(head) if hlen is None else hlen) + head
    body = pre + b"\0" * (-len(pre) % 64) + payload
    return body + hashlib.sha256(body).digest()


def _idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def _gzip_file(path: Path, head: bytes, zeros: int) -> None:
    """A gzip stream of ``head`` and ``zeros`` zero bytes, written without holding them."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(comp.compress(head))
        chunk = bytes(1 << 20)
        for _ in range(zeros // len(chunk)):
            f.write(comp.compress(chunk))
        f.write(comp.flush())


def _idx_folder(folder: Path, train_images: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        imgs = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8).tobytes()
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_header(4, 28, 28) + imgs)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_header(4) + bytes([1, 2, 3, 4]))
    if train_images is not None:
        (folder / "train-images-idx3-ubyte").write_bytes(train_images)
    return folder


BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _cifar_folder(folder: Path, first: bytes | None = None) -> Path:
    folder.mkdir(parents=True)
    for name in BATCHES:
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    if first is not None:
        (folder / BATCHES[0]).write_bytes(first)
    return folder


class _HugeArray:
    """Pickles as numpy's own array reconstruction, declaring 2**31 images of 3072 bytes."""

    def __reduce__(self):
        real = np.zeros((1, 3072), np.uint8).__reduce__()
        state = (1, (2**31, 3072), np.dtype(np.uint8), False, bytes(3072))
        return real[0], real[1], state


def _ckpt_zip(model, edit) -> bytes:
    """A real checkpoint whose data.pkl bytes are passed through ``edit``."""
    buf = io.BytesIO()
    save_checkpoint_buf(buf, model)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for n in src.namelist():
            z.writestr(n, edit(src.read(n)) if n.endswith("data.pkl") else src.read(n))
    return out.getvalue()


def save_checkpoint_buf(buf, model) -> None:
    torch.save({"format": "bnnprune-checkpoint", "version": 1, "arch": model.arch,
                "state_dict": {"w": torch.zeros(4)}, "dataset": {"name": "synthetic"}}, buf)


def _checkpoint(path: Path, model, state_dict=None, arch=None) -> Path:
    save_checkpoint(path, {"arch": arch or model.arch,
                           "state_dict": model.state_dict() if state_dict is None else state_dict,
                           "dataset": {"name": "synthetic", "input_shape": [3, 32, 32],
                                       "num_classes": 10}})
    return path


def _build(case: str, d: Path) -> Path | None:  # noqa: C901 (one branch per case)
    f = d / case
    if case.startswith("bnn-"):
        good = d / "good.bnn"
        if not good.exists():
            engine.save(engine.compile_model(_small().eval(), (3, 32, 32)), good)
        version, header, payload = _bnn_parts(good)
        if case == "bnn-array-of-a-terabyte":
            header["arrays"][0].update(dtype="<u8", shape=[2**37], nbytes=2**40)
            f.write_bytes(_bnn(version, header, payload))
        elif case == "bnn-header-length-of-a-terabyte":
            f.write_bytes(_bnn(version, header, payload, hlen=2**40))
        else:
            with open(f, "wb") as fh:
                fh.write(MAGIC)
            try:
                os.truncate(f, memory_bytes() + 1)  # sparse: no disk space used
            except OSError:
                return None
        return f
    if case == "idx-declares-2^31-images":
        return _idx_folder(f, _idx_header(2**31, 28, 28) + bytes(100))
    if case == "idx-declares-800-MB-holds-10-MB":
        _idx_folder(f)
        _gzip_file(f / "train-images-idx3-ubyte", _idx_header(2**20, 28, 28), 10 << 20)
        return f
    if case == "idx-gzip-bomb-after-the-data":
        _idx_folder(f)
        head = _idx_header(4, 28, 28) + bytes(4 * 784)
        _gzip_file(f / "train-images-idx3-ubyte", head, 256 << 20)
        return f
    if case == "cifar-batch-file-of-a-gigabyte":
        _cifar_folder(f)
        os.truncate(f / BATCHES[0], 1 << 30)
        return f
    if case == "cifar-archive-member-of-64-GiB":
        folder = _cifar_folder(d / "cifar-for-tar")
        tar_path = d / f"{case}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name in BATCHES:
                tar.add(folder / name, arcname=f"cifar-10-batches-py/{name}")
        raw = bytearray(tar_path.read_bytes())  # first member's size field -> 64 GiB
        raw[124:136] = b"%011o\0" % (64 << 30)
        raw[148:156] = b" " * 8
        raw[148:156] = b"%06o\0 " % sum(raw[:512])
        tar_path.write_bytes(bytes(raw))
        return tar_path
    if case == "cifar-array-of-2^31-images":
        return _cifar_folder(f, pickle.dumps({b"data": _HugeArray(), b"labels": [0]}, protocol=4))
    if case == "cifar-pickle-string-of-16-GiB":
        return _cifar_folder(f, b"\x80\x04\x8e" + struct.pack("<Q", 16 << 30) + b"abc.")
    if case == "toml-of-5-MB":
        f.write_text("[train]\nepochs = 1\n" + "# padding\n" * (5 << 17))
        return f
    if case == "toml-nested-100000-deep":
        f.write_text("[train]\nepochs = " + "[" * 100_000 + "]" * 100_000 + "\n")
        return f
    if case == "toml-integer-of-5000-digits":
        f.write_text("[train]\nepochs = " + "1" * 5000 + "\n")
        return f
    model = _small()
    if case == "checkpoint-tensor-of-a-terabyte-on-one-float":
        sd = dict(model.state_dict())
        sd["fc.weight"] = torch.zeros(1).expand(2**20, 2**20)  # stride 0: 4 bytes stored
        return _checkpoint(f, model, state_dict=sd)
    if case == "checkpoint-model-spec-width-10000":
        arch = {**model.arch, "kwargs": {**model.arch["kwargs"], "width": 10000.0}}
        return _checkpoint(f, model, arch=arch)
    if case == "checkpoint-storage-of-2^62-elements":
        f.write_bytes(_ckpt_zip(model, lambda pk: pk.replace(
            b"K\x04t", b"\x8a\x08" + struct.pack("<q", 2**62) + b"t", 1)))
        return f
    if case == "checkpoint-view-beyond-its-storage":
        f.write_bytes(_ckpt_zip(model, lambda pk: pk.replace(
            b"K\x00K\x04\x85", b"K\x00\x8a\x08" + struct.pack("<q", 2**40) + b"\x85", 1)))
        return f
    raise AssertionError(case)


# --------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    d = tmp_path_factory.mktemp("hostile")
    cases, skipped = [{"id": "control", "argv": ["--control", str(CONTROL_BYTES)]}], set()
    for case, (command, _match) in CASES.items():
        target = _build(case, d)
        if target is None:
            skipped.add(case)
            continue
        argv = command.format(f=target, out=d / "out" / case).split()
        cases.append({"id": case, "argv": argv})
    (d / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(d / "xdg")}
    env.pop("BNNPRUNE_DATA", None)
    r = subprocess.run([sys.executable, str(DRIVER), str(d / "cases.json"), str(d / "res.json")],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = {res["id"]: res for res in json.loads((d / "res.json").read_text())}
    out["_skipped"] = skipped
    out["_dir"] = d
    return out


def test_the_peak_measurement_sees_an_allocation(results):
    assert results["control"]["code"] == 0
    assert results["control"]["peak"] >= CONTROL_BYTES


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_refused_without_a_large_allocation(case, results):
    if case in results["_skipped"]:
        pytest.skip("this file system cannot hold a sparse file larger than memory")
    res = results[case]
    lines = res["stderr"].strip().splitlines()
    assert res["code"] == 2, res["stderr"]
    assert len(lines) == 1 and lines[0].startswith("bnnprune: error:"), res["stderr"]
    assert "Traceback" not in res["stderr"]
    assert CASES[case][1] in lines[0], lines[0]
    assert res["peak"] < PEAK_LIMIT, f"{case}: peak allocation {res['peak']} bytes"
    assert not (results["_dir"] / "out" / case).exists()


def test_hostile_cases_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md").read_text()
    for case in CASES:
        assert f"| {case} |" in doc, f"docs/bad-inputs.md lacks {case}"
