import hashlib
import json
import struct

import numpy as np
import pytest

from bnnprune.engine import BnnFormatError, compile_model, load, save
from bnnprune.engine.fileformat import FORMAT_VERSION, MAGIC, pack_file, unpack_file
from bnnprune.models import build_model

from .conftest import dyadic_input, randomize_bn


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = randomize_bn(build_model("small", width=0.25), seed=5)
    program = compile_model(model, (1, 28, 28))
    path = tmp_path_factory.mktemp("bnn") / "model.bnn"
    size = save(program, path)
    return program, path, size


def _write(tmp_path, data: bytes):
    p = tmp_path / "bad.bnn"
    p.write_bytes(data)
    return p


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_round_trip(saved):
    program, path, size = saved
    assert path.stat().st_size == size
    assert path.read_bytes()[:8] == MAGIC
    loaded = load(path)
    x = dyadic_input((4, 1, 28, 28))
    assert np.array_equal(loaded(x), program(x))
    # one bit per binary weight: well below a float32 copy of the same parameters
    ideal = program.binary_params() / 8 + program.float_params() * 4
    assert ideal <= size < (program.binary_params() + program.float_params()) * 4


@pytest.mark.parametrize("where", [0.3, 0.6, 0.97])
def test_flipped_byte_is_rejected(saved, tmp_path, where):
    data = bytearray(saved[1].read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0x40
    with pytest.raises(BnnFormatError) as e:
        load(_write(tmp_path, bytes(data)))
    assert "checksum" in _one_line(e) or "magic" in _one_line(e)


@pytest.mark.parametrize("keep", [0, 10, 21, 500, -1])
def test_truncated_file_is_rejected(saved, tmp_path, keep):
    data = saved[1].read_bytes()
    with pytest.raises(BnnFormatError) as e:
        load(_write(tmp_path, data[:keep]))
    _one_line(e)


def test_wrong_magic(saved, tmp_path):
    data = b"PK\x03\x04" + saved[1].read_bytes()[4:]
    with pytest.raises(BnnFormatError, match="magic") as e:
        load(_write(tmp_path, data))
    _one_line(e)


def test_newer_version_has_clear_error(saved, tmp_path):
    data = bytearray(saved[1].read_bytes())
    data[8:12] = struct.pack("<I", FORMAT_VERSION + 1)
    with pytest.raises(BnnFormatError, match="newer") as e:
        load(_write(tmp_path, bytes(data)))
    _one_line(e)


def _tamper(path, edit):
    header, arrays = unpack_file(path.read_bytes())
    header.pop("arrays")
    edit(header, arrays)
    return pack_file(header, arrays)


def _first_bconv(header):
    return next(o for o in header["ops"] if o["kind"] == "bconv")


@pytest.mark.parametrize("edit", [
    # weight array shape disagrees with cin/cout (valid checksum)
    lambda h, a: a.__setitem__(_first_bconv(h)["arrays"]["w"],
                               a[_first_bconv(h)["arrays"]["w"]][:-1]),
    # declared channel count disagrees with the input value
    lambda h, a: _first_bconv(h)["attrs"].__setitem__("cin", 7),
    # output value shape disagrees with the convolution
    lambda h, a: h["values"][_first_bconv(h)["output"]].__setitem__("h", 99),
    # a stride that would walk the kernel off the input
    lambda h, a: _first_bconv(h)["attrs"].__setitem__("stride", [0, 1]),
    # reference to an array that does not exist
    lambda h, a: _first_bconv(h)["arrays"].__setitem__("thr", 10_000),
    # input value used before it is defined
    lambda h, a: _first_bconv(h).__setitem__("inputs", [len(h["values"]) - 1]),
    # stray bits beyond the input channels in a weight word
    lambda h, a: a[_first_bconv(h)["arrays"]["w"]].__setitem__((0, 0, 0), ~np.uint64(0)),
    # an op kind this version does not know
    lambda h, a: _first_bconv(h).__setitem__("kind", "conv3d"),
    # the input shape and the first value disagree
    lambda h, a: h.__setitem__("input_shape", [1, 28, 27]),
])
def test_inconsistent_program_is_rejected(saved, tmp_path, edit):
    data = _tamper(saved[1], edit)
    with pytest.raises(BnnFormatError, match="inconsistent|out of range") as e:
        load(_write(tmp_path, data))
    _one_line(e)


def test_array_table_outside_file_is_rejected(saved, tmp_path):
    data = saved[1].read_bytes()
    header, arrays = unpack_file(data)
    header["arrays"][0]["offset"] = 1 << 40
    head = json.dumps(header).encode()
    pre = MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(head)) + head
    body = pre + b"\0" * (-len(pre) % 64) + b"\0" * 4096
    with pytest.raises(BnnFormatError, match="outside") as e:
        load(_write(tmp_path, body + hashlib.sha256(body).digest()))
    _one_line(e)


def test_missing_file(tmp_path):
    with pytest.raises(BnnFormatError, match="cannot read"):
        load(tmp_path / "nope.bnn")
