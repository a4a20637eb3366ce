"""The bad-input table (docs/bad-inputs.md): every case, run through the CLI, ends with exit
code 2, exactly one line on stderr starting with ``bnnprune: error:``, no traceback, and no
partial output (no new file or folder anywhere)."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from bnnprune import engine
from bnnprune.checkpoint import save_checkpoint
from bnnprune.cli import main
from bnnprune.config import TrainConfig
from bnnprune.engine.fileformat import FORMAT_VERSION, MAGIC, pack_file, unpack_file
from bnnprune.flips import FlipTracker
from bnnprune.models import build_model

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
TINY = "--dataset synthetic --model small --width 0.25 --train-subset 64 --test-subset 32"
TINY += " --batch-size 32 --epochs 1 --track-last 1 --device cpu"

# id, command ({name} = a prepared file or folder, see `files`), expected message part
CASES: list[tuple[str, str, str]] = [
    (
        "missing-dataset-folder",
        "train --dataset fashion-mnist --data-dir {tmp}/missing -o {tmp}/out",
        "fashion-mnist not found",
    ),
    (
        "idx-bad-magic",
        "train --dataset fashion-mnist --data-dir {idx_bad_magic} -o {tmp}/out",
        "not an IDX file (bad magic",
    ),
    (
        "idx-short-file",
        "train --dataset fashion-mnist --data-dir {idx_short} -o {tmp}/out",
        "truncated IDX file",
    ),
    (
        "idx-empty-split",
        "train --dataset fashion-mnist --data-dir {idx_empty} -o {tmp}/out",
        "the test split is empty",
    ),
    (
        "cifar-missing-batch",
        "train --dataset cifar10 --data-dir {cifar_missing} -o {tmp}/out",
        "missing data_batch_3",
    ),
    ("truncated-checkpoint", "eval {truncated_pt}", "truncated or corrupt"),
    ("missing-checkpoint", "eval {tmp}/nope.pt", "checkpoint not found"),
    (
        "checkpoint-other-architecture",
        f"train {TINY} --resume -o {{resume_other}}",
        "written by another model or training config",
    ),
    ("weights-do-not-fit-architecture", "eval {mismatched_pt}", "weights do not fit model"),
    ("resume-without-checkpoint", f"train {TINY} --resume -o {{tmp}}/out", "nothing to resume"),
    ("flip-data-of-another-model", "flips {foreign_flips_pt}", "flip data does not match"),
    (
        "prune-with-flip-data-of-another-model",
        "prune {foreign_flips_pt} --target-bops 0.3 --criterion wff -o {tmp}/out",
        "flip",
    ),
    ("bnn-random-bytes", "bench {random_bnn}", "not a .bnn file"),
    ("bnn-shapes-do-not-match", "bench {bad_shape_bnn}", "inconsistent program"),
    ("bnn-newer-format-version", "bench {newer_bnn}", "newer than this bnnprune supports"),
    (
        "bnn-and-compared-model-differ",
        "bench {good_bnn} --compare {other_input_pt}",
        "input shape",
    ),
    ("unknown-config-key", "train --config {unknown_key_toml} -o {tmp}/out", "train.epoch'"),
    ("wrong-value-type", "train --config {wrong_type_toml} -o {tmp}/out", "must be of type int"),
    ("invalid-toml", "train --config {invalid_toml} -o {tmp}/out", "not valid TOML"),
    ("flag-not-a-number", f"train {TINY} --epochs three -o {{tmp}}/out", "invalid int value"),
    ("negative-epochs", f"train {TINY} --epochs -1 -o {{tmp}}/out", "train.epochs must be >= 1"),
    ("zero-epochs-run", "run --epochs 0 -o {tmp}/out", "train.epochs must be >= 1"),
    ("target-above-one", "run --target-bops 1.5 -o {tmp}/out", "(0, 1)"),
    (
        "target-zero-prune",
        "prune {model_pt} --policy uniform --criterion magnitude --target-bops 0 -o {tmp}/out",
        "between 0 and 1",
    ),
    ("width-zero", f"train {TINY} --width 0 -o {{tmp}}/out", "model.width must be > 0"),
    ("width-negative", f"run {TINY} --width -0.5 -o {{tmp}}/out", "model.width must be > 0"),
    ("unknown-model", f"train {TINY} --model nope -o {{tmp}}/out", "unknown model 'nope'"),
    ("output-not-writable", f"train {TINY} -o {{a_file}}/sub", "is not writable"),
    (
        "run-output-left-clean",
        "run --dataset cifar10 --data-dir {tmp}/missing -o {tmp}/out/deeper",
        "cifar10 not found",
    ),
    ("export-to-missing-folder", "export {model_pt} -o {tmp}/none/m.bnn", "does not exist"),
]
IN_SUBPROCESS = {"missing-dataset-folder", "bnn-newer-format-version"}


def _idx(array: np.ndarray) -> bytes:
    a = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def _idx_folder(folder: Path, n_train: int = 8, n_test: int = 4) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
            _idx(rng.integers(0, 256, (n, 28, 28)))
        )
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(rng.integers(0, 10, n)))
    return folder


def _tiny_checkpoint(path: Path, model, shape=(3, 32, 32), flips=None, train_config=None) -> Path:
    save_checkpoint(
        path,
        {
            "arch": model.arch,
            "state_dict": model.state_dict(),
            "dataset": {
                "name": "synthetic",
                "input_shape": list(shape),
                "num_classes": 10,
                "mean": [0.5] * shape[0],
                "std": [0.25] * shape[0],
            },
            "train_config": train_config or {},
            "flips": flips,
            "meta": {},
        },
    )
    return path


def _reseal(data: bytes, edit) -> bytes:
    header, arrays = unpack_file(data)
    header.pop("arrays")
    edit(header, arrays)
    return pack_file(header, arrays)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every malformed input of the table, written once."""
    d = tmp_path_factory.mktemp("inputs")
    f: dict[str, Path] = {}

    f["idx_bad_magic"] = _idx_folder(d / "idx-magic")
    raw = (f["idx_bad_magic"] / "train-images-idx3-ubyte").read_bytes()
    (f["idx_bad_magic"] / "train-images-idx3-ubyte").write_bytes(b"\x12\x34" + raw[2:])
    f["idx_short"] = _idx_folder(d / "idx-short")
    (f["idx_short"] / "train-images-idx3-ubyte").write_bytes(raw[: len(raw) // 2])
    f["idx_empty"] = _idx_folder(d / "idx-empty", n_test=0)

    cifar = d / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch"):
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=2))
    f["cifar_missing"] = cifar

    model = build_model("small", width=0.25, in_channels=3, num_classes=10, image_size=32)
    f["model_pt"] = _tiny_checkpoint(d / "model.pt", model, flips=FlipTracker(model).state_dict())
    data = f["model_pt"].read_bytes()
    (d / "trunc.pt").write_bytes(data[: len(data) // 3])
    f["truncated_pt"] = d / "trunc.pt"

    other = build_model("small", width=0.5, in_channels=3, num_classes=10, image_size=32)
    foreign = FlipTracker(other).state_dict()
    f["foreign_flips_pt"] = _tiny_checkpoint(d / "foreign-flips.pt", model, flips=foreign)
    # NIN weights under the small model's architecture spec
    nin = build_model("nin", width=0.25, in_channels=3, num_classes=10)
    nin.arch = model.arch
    f["mismatched_pt"] = _tiny_checkpoint(d / "mismatched.pt", nin)
    # a run folder whose checkpoint.pt has the same training config as TINY but another
    # architecture (width 0.5)
    f["resume_other"] = d / "resume-other"
    same = TrainConfig(epochs=1, batch_size=32, track_last=1, device="cpu")
    _tiny_checkpoint(f["resume_other"] / "checkpoint.pt", other, train_config=asdict(same))

    fm = build_model("small", width=0.25, in_channels=1, num_classes=10, image_size=28)
    f["other_input_pt"] = _tiny_checkpoint(d / "fm.pt", fm, shape=(1, 28, 28))
    f["good_bnn"] = d / "good.bnn"
    engine.save(engine.compile_model(model.eval(), (3, 32, 32)), f["good_bnn"])
    good = f["good_bnn"].read_bytes()
    (d / "random.bnn").write_bytes(np.random.default_rng(0).bytes(4096))
    f["random_bnn"] = d / "random.bnn"

    def grow_cin(header, arrays):
        op = next(o for o in header["ops"] if o["kind"] == "bconv")
        op["attrs"]["cin"] += 5

    (d / "shapes.bnn").write_bytes(_reseal(good, grow_cin))
    f["bad_shape_bnn"] = d / "shapes.bnn"
    newer = bytearray(good)
    newer[len(MAGIC) : len(MAGIC) + 4] = struct.pack("<I", FORMAT_VERSION + 1)
    body = bytes(newer[:-32])
    (d / "newer.bnn").write_bytes(body + hashlib.sha256(body).digest())
    f["newer_bnn"] = d / "newer.bnn"

    (d / "unknown.toml").write_text("[train]\nepoch = 3\n")
    f["unknown_key_toml"] = d / "unknown.toml"
    (d / "type.toml").write_text('[train]\nepochs = "three"\n')
    f["wrong_type_toml"] = d / "type.toml"
    (d / "invalid.toml").write_text("[train\nepochs = 3\n")
    f["invalid_toml"] = d / "invalid.toml"
    (d / "a-file").write_text("")
    f["a_file"] = d / "a-file"
    return f


@pytest.fixture(autouse=True)
def no_user_data(tmp_path_factory, monkeypatch):
    """No dataset from the user's cache or $BNNPRUNE_DATA can stand in for a missing one."""
    monkeypatch.delenv("BNNPRUNE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))


def _snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _argv(command: str, files: dict[str, Path], tmp: Path) -> list[str]:
    return [part.format(tmp=tmp, **files) for part in command.split()]


def _check(code: int, out: str, err: str, match: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bnnprune: error:"), err
    assert "Traceback" not in err and "Traceback" not in out
    assert match in lines[0], lines[0]


@pytest.mark.parametrize(("case", "command", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, command, match, files, tmp_path, capsys):
    argv = _argv(command, files, tmp_path)
    inputs = files["model_pt"].parent
    before = _snapshot(tmp_path, inputs)
    if case in IN_SUBPROCESS:  # the real process: exit status, streams, no traceback
        r = subprocess.run(
            [sys.executable, "-m", "bnnprune", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ),
        )
        code, out, err = r.returncode, r.stdout, r.stderr
    else:
        code = main(argv)
        out, err = capsys.readouterr()
    _check(code, out, err, match)
    assert "wrote" not in out and "epoch " not in out
    assert _snapshot(tmp_path, inputs) == before, "the failed command left files behind"


def test_table_is_documented():
    doc = DOC.read_text()
    for case, _command, _match in CASES:
        assert f"| {case} |" in doc, f"docs/bad-inputs.md lacks {case}"
    assert len(CASES) >= 15


def test_bnn_loader_refuses_damage_without_cli(files, tmp_path):
    """The same .bnn faults through the library: BnnFormatError with one line."""
    for key in ("random_bnn", "bad_shape_bnn", "newer_bnn"):
        with pytest.raises(engine.BnnFormatError) as e:
            engine.load(files[key])
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------ untrusted checkpoints


class _Planted:
    """Pickles to a call that creates a marker file when (and only when) it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _PlantedExec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _evil_files(folder: Path, marker: Path) -> dict[str, Path]:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    zip_pt = folder / "evil-zip.pt"  # torch.save's zip format with a code-carrying pickle
    torch.save({"format": "bnnprune-checkpoint", "arch": _Planted(marker)}, zip_pt)
    legacy = folder / "evil-legacy.pt"  # a bare pickle, as old torch.save wrote
    legacy.write_bytes(pickle.dumps({"state_dict": _PlantedExec(marker)}, protocol=2))
    return {"zip": zip_pt, "legacy": legacy}


@pytest.mark.parametrize("kind", ["zip", "legacy"])
@pytest.mark.parametrize(
    "command",
    ["eval {pt}", "summary {pt}", "flips {pt}", "prune {pt} -o {tmp}/p", "export {pt} -o {tmp}/m"],
)
def test_pickle_with_code_is_refused(kind, command, tmp_path, capsys):
    marker = tmp_path / "pwned"
    pt = _evil_files(tmp_path / "evil", marker)[kind]
    code = main(command.format(pt=pt, tmp=tmp_path).split())
    out, err = capsys.readouterr()
    _check(code, out, err, "refused")
    assert not marker.exists(), "the pickle's code ran"


def test_pickle_with_code_is_refused_on_resume_and_in_a_real_process(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_files(tmp_path / "evil", marker)
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(evil["zip"].read_bytes())
    assert main(["train", *TINY.split(), "--resume", "-o", str(run)]) == 2
    r = subprocess.run(
        [sys.executable, "-m", "bnnprune", "eval", str(evil["legacy"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check(r.returncode, r.stdout, r.stderr, "refused")
    assert not marker.exists(), "the pickle's code ran"
    # the marker mechanism itself works: plain pickle would have run it
    pickle.loads(pickle.dumps(_Planted(marker)))
    assert marker.exists()
