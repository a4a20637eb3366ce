from pathlib import Path

import pytest

from bnnprune.config import RunConfig, SweepConfig, load_config
from bnnprune.data import dataset_shape
from bnnprune.metrics import count_bops
from bnnprune.models import build_model
from bnnprune.prune.resolve import resolve_run, resolve_sweep

CONFIGS = sorted((Path(__file__).parents[1] / "experiments").glob("*.toml"))


def test_there_are_recipes():
    names = {p.stem for p in CONFIGS}
    assert {"nin_cifar10", "alexnet_cifar10"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_parses_validates_and_builds_its_model(path):
    sweep = "[sweep]" in path.read_text()
    cfg = load_config(path, SweepConfig if sweep else RunConfig)
    (resolve_sweep if sweep else resolve_run)(cfg)
    c, h, _w, k = dataset_shape(cfg.data.name)
    model = build_model(cfg.model.name, width=cfg.model.width, in_channels=c, num_classes=k,
                        image_size=h)
    assert count_bops(model, (c, h, h)) > 0


def test_the_default_job_written_out_is_the_default_job():
    """`experiments/small_fashion_mnist.toml` documents what `bnnprune run` does without a
    config: its methods are the defaults (one place decides them: PruneConfig)."""
    path = Path(__file__).parents[1] / "experiments" / "small_fashion_mnist.toml"
    written, default = load_config(path, RunConfig), RunConfig()
    assert resolve_run(written).method == resolve_run(default).method
    assert resolve_run(written).compare == resolve_run(default).compare
    assert written.model == default.model and written.train == default.train
    assert written.prune.target == default.prune.target
