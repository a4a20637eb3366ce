"""Your own model: a factory ``package.module:function`` builds it, checkpoints store the
reference (no code), and every command rebuilds it, pruned or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bnnprune.checkpoint import load_checkpoint, save_checkpoint
from bnnprune.cli import main
from bnnprune.config import ConfigError, ExperimentConfig, apply_sections, load_config
from bnnprune.data import load_dataset
from bnnprune.models import build_from_config, build_model, model_from_arch
from bnnprune.prune import apply_plan, make_plan
from bnnprune.train import CheckpointError, load_model

PKG = "ownnets_for_tests"
SPEC = f"{PKG}.nets:build_bnn"
SRC = Path(__file__).resolve().parents[2] / "src"

NETS = '''
import torch
import torch.nn.functional as F
from torch import nn

from bnnprune.models import model_factory
from bnnprune.nn import BinaryConv2d


class Net(nn.Module):
    """Not a Sequential: functional pooling and flatten in its own forward."""

    def __init__(self, width: int = 1, in_channels: int = 3, num_classes: int = 10,
                 image_size: int = 32) -> None:
        super().__init__()
        c = 4 * width
        self.stem = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.b1 = BinaryConv2d(c, 2 * c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.b2 = BinaryConv2d(2 * c, 2 * c, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.fc = nn.Linear(2 * c * (image_size // 4) ** 2, num_classes)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = F.max_pool2d(self.bn1(self.b1(x)), 2)
        x = F.max_pool2d(self.bn2(self.b2(x)), 2)
        return self.fc(torch.flatten(x, 1))


def build_bnn(width: int = 1, in_channels: int = 3, num_classes: int = 10,
              image_size: int = 32) -> nn.Module:
    return Net(width, in_channels, num_classes, image_size)


def fixed_input(width: int = 1) -> Net:
    return Net(width, 3, 10, 32)


@model_factory
def marked(width=1):
    return Net(width)


def unannotated(width=1):
    return Net(width)


def returns_dict(width: int = 1) -> nn.Module:
    return {"width": width}


def raises(width: int = 1) -> nn.Module:
    raise RuntimeError("no GPU here")
'''


@pytest.fixture
def own_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's package in tmp_path, importable (sys.path) for this test only."""
    root = tmp_path / "userlib"
    (root / PKG).mkdir(parents=True)
    (root / PKG / "__init__.py").write_text("")
    (root / PKG / "nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m.startswith(PKG)]:
        monkeypatch.delitem(sys.modules, name)
    return root


def _cfg(name: str, kwargs: dict) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.model.name, cfg.model.kwargs = name, kwargs
    cfg.data.name = "synthetic"
    return cfg


def test_factory_gets_its_kwargs_and_the_data_shape_it_names(own_pkg) -> None:
    ds = load_dataset("synthetic", train_subset=8, test_subset=8)
    model = build_from_config(_cfg(SPEC, {"width": 2}).model, ds, seed=0)
    assert model.arch == {"name": SPEC, "kwargs": {"width": 2, "in_channels": 3,
                                                    "num_classes": 10, "image_size": 32}}
    assert model.b1.weight.shape == (16, 8, 3, 3)
    # kwargs win over the dataset; a factory that names no data argument gets none
    model = build_from_config(_cfg(SPEC, {"width": 1, "num_classes": 4}).model, ds, seed=0)
    assert model.fc.out_features == 4
    fixed = build_from_config(_cfg(f"{PKG}.nets:fixed_input", {}).model, ds, seed=0)
    assert fixed.arch == {"name": f"{PKG}.nets:fixed_input", "kwargs": {}}
    assert build_model(f"{PKG}.nets:marked", width=3).b1.weight.shape[0] == 24
    assert build_model(f"{PKG}.nets:Net", width=1).arch["name"] == f"{PKG}.nets:Net"


def test_model_kwargs_from_toml_and_json(own_pkg, tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(f'[model]\nname = "{SPEC}"\nkwargs = {{width = 2, note = "x"}}\n')
    assert load_config(toml).model.kwargs == {"width": 2, "note": "x"}
    toml.write_text(f'[model]\nname = "{SPEC}"\n[model.kwargs]\nwidth = 3\n')
    cfg = load_config(toml)
    cfg.validate()
    assert cfg.model.kwargs == {"width": 3}
    cfg = apply_sections(ExperimentConfig(), {"model": {"kwargs": '{"width": 2}'}})
    assert cfg.model.kwargs == {"width": 2}
    for bad, match in (("[1]", "must be a table"), ("{x", "must be a JSON object")):
        with pytest.raises(ConfigError, match=match):
            apply_sections(ExperimentConfig(), {"model": {"kwargs": bad}})


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("no_such_pkg_xyz.nets:f", {}, "no module named 'no_such_pkg_xyz' on the Python path"),
        (f"{PKG}.nets:nothere", {}, f"{PKG}.nets has no 'nothere'"),
        (f"{PKG}.nets:unannotated", {}, "is not a model factory"),
        ("os:system", {"command": "true"}, "standard-library module"),
        ("torch.hub:load", {}, "is not a model factory"),
        (f"{PKG}.nets:returns_dict", {}, "returned dict, not a torch.nn.Module"),
        (f"{PKG}.nets:raises", {}, "failed: RuntimeError: no GPU here"),
        (SPEC, {"depth": 3}, "takes no argument(s) ['depth']"),
        (SPEC, {"width": object()}, "plain values"),
        ("a:b:c", {}, "write an import path"),
    ],
)
def test_bad_factories_are_one_line_value_errors(own_pkg, name, kwargs, match) -> None:
    with pytest.raises(ValueError, match=None) as info:
        build_model(name, **kwargs)
    assert match in str(info.value) and "\n" not in str(info.value)


def test_config_validation_refuses_a_missing_factory_before_anything_runs(own_pkg) -> None:
    with pytest.raises(ConfigError, match="no module named 'nope_pkg'"):
        _cfg("nope_pkg.nets:f", {}).validate()
    with pytest.raises(ConfigError, match="is not a model factory"):
        _cfg(f"{PKG}.nets:unannotated", {}).validate()
    _cfg(SPEC, {"width": 1}).validate()


def test_pruned_factory_model_reloads_from_its_reference(own_pkg, tmp_path) -> None:
    model = build_model(SPEC, width=2, image_size=16).eval()
    plan = make_plan(model, (3, 16, 16), "uniform", target=0.5, round_to=1)  # every layer cut
    pruned = apply_plan(model, plan, "magnitude").model.eval()
    save_checkpoint(tmp_path / "m.pt", {"arch": pruned.arch, "state_dict": pruned.state_dict(),
                                        "dataset": {"input_shape": [3, 16, 16]}})
    ckpt = load_checkpoint(tmp_path / "m.pt")  # weights_only: plain data, no pickled code
    assert ckpt["arch"] == {"name": SPEC, "kwargs": {"width": 2, "image_size": 16}}
    back, _ = load_model(tmp_path / "m.pt")
    assert back.b1.weight.shape[0] == plan.keep["b1"] < 16
    assert back.b2.weight.shape[0] == plan.keep["b2"] < 16
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(back.eval()(x), pruned(x))
    assert model_from_arch(ckpt["arch"]).b1.weight.shape[0] == 16  # the unpruned spec


def test_a_forged_checkpoint_cannot_call_anything_by_name(tmp_path) -> None:
    marker = tmp_path / "pwned"
    for name in ("os:system", "subprocess:run", "builtins:exec", "torch.hub:load"):
        save_checkpoint(tmp_path / "f.pt", {"arch": {"name": name, "kwargs": {
            "command": f"touch {marker}"}}, "state_dict": {"w": torch.zeros(2)}})
        with pytest.raises(CheckpointError, match="not a model factory|standard-library"):
            load_model(tmp_path / "f.pt")
    assert not marker.exists()


def _run(args: list[str], pythonpath: list[Path]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run([sys.executable, "-m", "bnnprune", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a whole train -> prune -> export -> bench round trip through the CLI
def test_cli_round_trip_train_prune_export_bench(own_pkg, tmp_path, capsys) -> None:
    run, pruned = tmp_path / "run", tmp_path / "pruned"
    tiny = ["--dataset", "synthetic", "--train-subset", "128", "--test-subset", "32",
            "--batch-size", "32", "--epochs", "2", "--track-last", "1"]
    assert main(["train", "--model", SPEC, "--model-kwargs", '{"width": 2}', *tiny,
                 "-o", str(run)]) == 0
    assert f"model {SPEC}(width=2) on synthetic" in capsys.readouterr().out
    assert main(["flips", str(run)]) == 0
    assert "b1" in capsys.readouterr().out
    assert main(["prune", str(run / "model.pt"), "--target-bops", "0.4", "-o",
                 str(pruned)]) == 0
    plan = load_checkpoint(pruned / "model.pt")["meta"]["plan"]
    capsys.readouterr()
    assert main(["eval", str(pruned / "model.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 500
    assert main(["export", str(run / "model.pt"), "-o", str(tmp_path / "full.bnn")]) == 0
    # a fresh interpreter rebuilds the pruned model from the reference alone
    r = _run(["export", str(pruned / "model.pt"), "-o", str(tmp_path / "pruned.bnn")],
             [SRC, own_pkg])
    assert r.returncode == 0, r.stderr
    assert main(["bench", str(tmp_path / "pruned.bnn"), "--compare", str(pruned / "model.pt"),
                 "--baseline", str(tmp_path / "full.bnn"), "--repeats", "1",
                 "--json", str(tmp_path / "bench.json")]) == 0
    bench = json.loads((tmp_path / "bench.json").read_text())
    model, _ = load_model(pruned / "model.pt")
    assert [model.b1.weight.shape[0], model.b2.weight.shape[0]] == \
        [plan["layers"]["b1"]["after"], plan["layers"]["b2"]["after"]]
    assert plan["layers"]["b1"]["before"] == 16 and plan["layers"]["b1"]["after"] < 16
    assert bench["pruned"]["bops"] == plan["bops_after"] < plan["bops_before"]
    assert bench["pruned"]["baseline_bops"] == plan["bops_before"]
    # without the user's package on the path: one line, exit 2
    r = _run(["eval", str(pruned / "model.pt")], [SRC])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"bnnprune: error: {pruned / 'model.pt'}: cannot import model factory '{SPEC}': no "
        f"module named '{PKG}' on the Python path (install it, or add its folder to PYTHONPATH)"]


def test_resume_keys_of_zoo_models_are_those_written_before_kwargs_existed() -> None:
    from bnnprune.config import RunConfig
    from bnnprune.phases import phase_key

    cfg = RunConfig()
    assert phase_key(cfg, cfg.train, None)["model"] == {
        "name": "small", "width": 0.5, "pad_value": 1.0, "scale": False}
    cfg.model.kwargs = {"width": 2}
    assert phase_key(cfg, cfg.train, None)["model"]["kwargs"] == {"width": 2}
