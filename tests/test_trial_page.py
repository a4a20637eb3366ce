"""The committed near-convergence page is exactly what its committed cell records give:
`bnnprune sweep ... --report-only` regenerates it byte for byte without training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bnnprune.cli import main

ROOT = Path(__file__).parents[1]
CONFIG = "experiments/trial_fashion_mnist.toml"
RECORDS = "docs/results/near-convergence"


def test_committed_page_regenerates_from_committed_records(tmp_path, monkeypatch) -> None:
    if not (ROOT / RECORDS).is_dir():
        pytest.fail(f"{RECORDS} is missing: the page is generated from it")
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / CONFIG, tmp_path / CONFIG)
    shutil.copytree(ROOT / RECORDS, tmp_path / RECORDS)
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--config", CONFIG, "--docs", "docs", "--report-only", "-o", "run"]
    assert main(args) == 0
    assert (tmp_path / "docs" / "results.md").read_text() == \
        (ROOT / "docs" / "results.md").read_text()
    for png in sorted((tmp_path / "docs" / "results").glob("*.png")):
        assert png.read_bytes() == (ROOT / "docs" / "results" / png.name).read_bytes(), png.name
    assert not list((tmp_path / "run").rglob("*.pt"))  # nothing was trained
    records = sorted(p.relative_to(tmp_path) for p in (tmp_path / RECORDS).rglob("*.json"))
    assert records == sorted(p.relative_to(ROOT) for p in (ROOT / RECORDS).rglob("*.json"))
