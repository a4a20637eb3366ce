"""`--criterion tp:NAME` on the command line and in `run`: Torch-Pruning importances prune
exactly what the library call prunes; Taylor computes gradients on training batches."""

from __future__ import annotations

import pytest
import torch

from bnnprune.cli import main
from bnnprune.config import ConfigError, PruneConfig, RunConfig
from bnnprune.data import load_dataset
from bnnprune.pipeline import run_pipeline
from bnnprune.prune import apply_plan, compute_sensitivity, get_criterion, make_plan
from bnnprune.prune.interop import gradient_batches
from bnnprune.prune.resolve import resolve_run
from bnnprune.train import load_model

TINY = ["--dataset", "synthetic", "--model", "small", "--width", "0.25", "--train-subset",
        "256", "--test-subset", "64", "--batch-size", "64"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp") / "a"
    assert main(["train", *TINY, "--epochs", "2", "--track-last", "1", "-o", str(out)]) == 0
    return out / "model.pt"


def _library_prune(ckpt_path, criterion):
    model, ckpt = load_model(ckpt_path)
    sens = compute_sensitivity(ckpt["flips"], model)
    shape = tuple(ckpt["dataset"]["input_shape"])
    plan = make_plan(model, shape, "target", sensitivity=sens, target=0.4,
                     round_to=PruneConfig.round_to)  # the CLI's default rounding
    return apply_plan(model, plan, criterion, sens).model


@pytest.mark.parametrize("spec", ["tp:lamp", "tp:taylor"])
def test_prune_with_a_tp_importance_equals_the_library_call(trained, tmp_path, spec, capsys):
    out = tmp_path / "p"
    assert main(["prune", str(trained), "--target-bops", "0.4", "--policy", "target",
                 "--criterion", spec, "-o", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    got, _ = load_model(out / "model.pt")
    crit = get_criterion(spec)
    if crit.needs_grads:  # the CLI's batches: the first training images of the dataset
        crit.use_data(gradient_batches(load_dataset("synthetic")))
    want = _library_prune(trained, crit)
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full, _ = load_model(trained)
    assert sum(v.numel() for v in a.values()) < sum(v.numel() for v in full.state_dict().values())


def test_prune_with_an_unknown_tp_importance_is_one_line(trained, tmp_path, capsys):
    code = main(["prune", str(trained), "--target-bops", "0.4", "--criterion", "tp:nope",
                 "-o", str(tmp_path / "p")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "unknown Torch-Pruning importance 'tp:nope'" in err


def test_taylor_without_loadable_data_is_one_line(trained, tmp_path, capsys):
    code = main(["prune", str(trained), "--target-bops", "0.4", "--criterion", "tp:taylor",
                 "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                 "-o", str(tmp_path / "p")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_run_prunes_with_tp_taylor(tmp_path):
    cfg = RunConfig()
    cfg.model.name, cfg.model.width = "small", 0.25
    cfg.data.name, cfg.data.train_subset, cfg.data.test_subset = "synthetic", 256, 64
    cfg.train.epochs, cfg.train.track_last, cfg.train.batch_size = 1, 1, 64
    cfg.prune.criterion, cfg.prune.target, cfg.prune.retrain_epochs = "tp:taylor", 0.4, 1
    cfg.prune.compare, cfg.prune.budget_baseline = [], False
    res = run_pipeline(cfg, tmp_path)
    assert res["pruned"]["label"] == f"{cfg.prune.policy}+tp:taylor"
    assert res["pruned"]["bops"] < res["baseline"]["bops"]


def test_run_config_refuses_an_unknown_criterion():
    cfg = RunConfig()
    cfg.prune.criterion = "tp:nope"
    with pytest.raises(ConfigError, match="prune: .*unknown Torch-Pruning importance .tp:nope."):
        resolve_run(cfg)
