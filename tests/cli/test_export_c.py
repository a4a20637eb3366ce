"""`bnnprune export --format c`: writes the C files, prints the footprint (pruned vs
unpruned with --baseline), and turns bad input into one line on stderr with exit code 2."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from bnnprune.checkpoint import save_checkpoint
from bnnprune.cli import main
from bnnprune.deploy.cexport import FILES
from bnnprune.models import build_model


def _checkpoint(path: Path, width: float, image_size: int = 28) -> Path:
    torch.manual_seed(0)
    model = build_model("small", width=width, image_size=image_size)
    save_checkpoint(path, {
        "arch": model.arch, "state_dict": model.state_dict(),
        "dataset": {"name": "synthetic", "input_shape": [1, image_size, image_size],
                    "num_classes": 10, "mean": [0.5], "std": [0.25]},
        "train_config": {}, "flips": None, "meta": {}})
    return path


@pytest.fixture(scope="module")
def pts(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pts")
    return {"big": _checkpoint(d / "big.pt", 0.5), "small": _checkpoint(d / "small.pt", 0.25),
            "other": _checkpoint(d / "other.pt", 0.25, image_size=32)}


def _fails(argv: list[str], capsys, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bnnprune: error:"), err
    assert match in err, err


def test_export_c_writes_files_and_prints_footprints(pts, tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["export", str(pts["small"]), "--format", "c", "-o", str(out),
                 "--baseline", str(pts["big"])]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    header = (out / "model.h").read_text()
    flash = int(re.search(r"MODEL_FLASH_BYTES (\d+)", header)[1])
    ram = int(re.search(r"MODEL_SCRATCH_BYTES (\d+)", header)[1])
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:] if line.strip()}
    assert rows["pruned"] == [f"{flash:,}", f"{ram:,}"]
    unpruned_flash = int(rows["unpruned"][0].replace(",", ""))
    assert unpruned_flash > flash  # the half-width model stores fewer weights
    assert float(rows["ratio"][0]) == pytest.approx(flash / unpruned_flash, abs=1e-3)
    assert main(["export", str(pts["small"]), "--format", "c", "-o", str(out)]) == 0
    assert "model" in capsys.readouterr().out.splitlines()[2]  # no baseline: one row


def test_export_c_bad_inputs(pts, tmp_path, capsys):
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    _fails(["export", str(pts["small"]), "--format", "c", "-o", str(a_file)], capsys,
           "is not a folder")
    _fails(["export", str(pts["small"]), "--format", "c", "-o", str(tmp_path / "o"),
            "--baseline", str(tmp_path / "missing.pt")], capsys, "checkpoint not found")
    _fails(["export", str(pts["small"]), "--format", "c", "-o", str(tmp_path / "o"),
            "--baseline", str(pts["other"])], capsys, "another input shape")
    _fails(["export", str(pts["small"]), "-o", str(tmp_path / "m.bnn"),
            "--baseline", str(pts["big"])], capsys, "--format c only")
    _fails(["export", str(pts["small"]), "--format", "cpp", "-o", str(tmp_path / "o")], capsys,
           "invalid choice")
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.bnn").exists()


@pytest.mark.slow  # under qemu-system-arm (scripts/setup.sh --devices)
def test_export_c_target_prints_instructions(pts, tmp_path, capsys):
    """--target cortex-m4: the board example is written and the table gains code bytes and
    instructions per inference (counted under qemu), pruned vs unpruned."""
    from bnnprune.deploy import mcu

    if mcu.missing_tools():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Cortex-M check: {mcu.missing_tools()} missing")
        pytest.skip(f"{mcu.missing_tools()} missing")
    out = tmp_path / "c"
    assert main(["export", str(pts["small"]), "--format", "c", "-o", str(out),
                 "--target", "cortex-m4", "--baseline", str(pts["big"])]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in (out / "mps2").iterdir()) == sorted(
        [*mcu.BOARD_FILES, "Makefile"])
    assert "-mcpu=cortex-m4" in (out / "mps2" / "Makefile").read_text()
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if "instructions" in line)
    assert "code (B)" in lines[head]
    rows = {line.split()[0]: line.split()[1:] for line in lines[head + 1:head + 4]}
    insns = {k: int(rows[k][3].replace(",", "")) for k in ("unpruned", "pruned")}
    assert 0 < insns["pruned"] < insns["unpruned"]  # the quarter-width model runs fewer
    assert float(rows["ratio"][3]) == pytest.approx(insns["pruned"] / insns["unpruned"],
                                                    abs=1e-3)
    assert "not cycles" in text and "bit for bit: yes" in text


def test_export_c_target_bad_inputs(pts, tmp_path, capsys, monkeypatch):
    _fails(["export", str(pts["small"]), "--format", "c", "-o", str(tmp_path / "o"),
            "--target", "cortex-m9"], capsys, "known: cortex-m0plus")
    _fails(["export", str(pts["small"]), "-o", str(tmp_path / "m.bnn"),
            "--target", "cortex-m4"], capsys, "--target applies to --format c only")
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    _fails(["export", str(pts["small"]), "--format", "c", "-o", str(tmp_path / "o"),
            "--target", "cortex-m4"], capsys, "apt-get install gcc-arm-none-eabi")
    assert not (tmp_path / "o").exists() and not (tmp_path / "m.bnn").exists()
