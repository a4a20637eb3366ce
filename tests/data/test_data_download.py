"""Downloads: checksum verification, atomic files, fast failure. No network is used."""

from __future__ import annotations

import hashlib
import time

import pytest

from bnnprune.data import DatasetError, download, load_dataset, verify_checksum
from bnnprune.data.download import RemoteFile, download_file


def test_verify_checksum(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"binary neural networks")
    verify_checksum(path, hashlib.md5(path.read_bytes()).hexdigest())
    verify_checksum(path, hashlib.sha256(path.read_bytes()).hexdigest().upper())
    with pytest.raises(DatasetError, match="md5 checksum mismatch") as err:
        verify_checksum(path, "0" * 32)
    assert str(path) in str(err.value)
    with pytest.raises(DatasetError, match="sha256 checksum mismatch"):
        verify_checksum(path, "f" * 64)


def test_official_digests_are_well_formed():
    for files in download.RESOURCES.values():
        for remote in files:
            assert len(remote.digest) == 32 and int(remote.digest, 16) >= 0
            assert remote.url.endswith(remote.filename)


def test_download_verifies_and_is_atomic(tmp_path):
    src = tmp_path / "src.gz"
    src.write_bytes(b"payload")
    good = hashlib.md5(b"payload").hexdigest()
    dest = download_file(src.as_uri(), tmp_path / "out" / "file.gz", good)
    assert dest.read_bytes() == b"payload"
    with pytest.raises(DatasetError, match="rejected.*checksum mismatch"):
        download_file(src.as_uri(), tmp_path / "out" / "bad.gz", "1" * 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.gz"]


def test_unreachable_server_fails_fast_in_one_line(tmp_path):
    start = time.monotonic()
    with pytest.raises(DatasetError, match="could not download") as err:
        download_file("http://127.0.0.1:1/x.gz", tmp_path / "x.gz", "0" * 32, timeout=5)
    assert time.monotonic() - start < 5
    assert "\n" not in str(err.value) and not (tmp_path / "x.gz.part").exists()


def test_load_with_download(tmp_path, formats, monkeypatch):
    mirror = tmp_path / "mirror"
    formats.write_idx_set(mirror, n_train=7, n_test=3, gz=True)
    files = tuple(
        RemoteFile(p.name, p.as_uri(), hashlib.md5(p.read_bytes()).hexdigest())
        for p in sorted(mirror.iterdir())
    )
    monkeypatch.setitem(download.RESOURCES, "mnist", files)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("mnist")
    ds = load_dataset("mnist", download=True)
    target = tmp_path / "xdg-cache" / "bnnprune" / "mnist"
    assert (ds.num_train, ds.source) == (7, str(target))
    assert len(list(target.glob("*.gz"))) == 4
    (target / "t10k-labels-idx1-ubyte.gz").unlink()
    assert load_dataset("mnist", download=True).num_test == 3


def test_cifar_download_into_root(tmp_path, formats, monkeypatch):
    formats.write_cifar_folder(tmp_path / "batches")
    archive = formats.tar_folder(tmp_path / "batches", tmp_path / "c.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    remote = RemoteFile("cifar-10-python.tar.gz", archive.as_uri(), digest)
    monkeypatch.setitem(download.RESOURCES, "cifar10", (remote,))
    ds = load_dataset("cifar10", root=tmp_path / "data", download=True)
    assert ds.source == str(tmp_path / "data" / "cifar-10-python.tar.gz")
    assert ds.num_train == 20
