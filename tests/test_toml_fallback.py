"""Python 3.10 has no tomllib: bnnprune.config falls back to the tomli package (same API)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tomli", reason="the test extra installs tomli")

CODE = """
import sys
sys.modules["tomllib"] = None  # as on Python 3.10: importing tomllib fails
import bnnprune.config as c
assert c.tomllib.__name__ == "tomli", c.tomllib
cfg = c.load_config(sys.argv[1])
print(cfg.train.epochs, cfg.model.name)
try:
    c.load_config(sys.argv[2])
except c.ConfigError as e:
    print("error:", str(e).split(":")[0])
"""


def test_config_loads_through_tomli_when_tomllib_is_missing(tmp_path: Path) -> None:
    good = tmp_path / "a.toml"
    good.write_text('[model]\nname = "small"\n[train]\nepochs = 7\n')
    bad = tmp_path / "b.toml"
    bad.write_text("[train\n")
    src = Path(__file__).resolve().parents[1] / "src"
    r = subprocess.run(
        [sys.executable, "-c", CODE, str(good), str(bad)],
        capture_output=True, text=True, env={"PYTHONPATH": str(src)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["7 small", f"error: config file {bad} is not valid TOML"]
