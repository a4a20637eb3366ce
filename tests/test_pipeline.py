import json

import pytest

from bnnprune.config import ConfigError, RunConfig
from bnnprune.pipeline import run_pipeline
from bnnprune.prune.resolve import resolve_run
from bnnprune.report.markdown import write_report
from bnnprune.report.plots import write_flip_plots


def _cfg(**prune):
    cfg = RunConfig()
    cfg.model.name, cfg.model.width = "small", 0.25
    cfg.data.name, cfg.data.train_subset, cfg.data.test_subset = "synthetic", 384, 96
    cfg.train.epochs, cfg.train.track_last, cfg.train.batch_size, cfg.train.lr = 2, 1, 64, 5e-3
    cfg.prune.retrain_epochs = 1
    cfg.prune.policy, cfg.prune.criterion = "target", "wff"  # the comparisons below assume it
    for k, v in prune.items():
        setattr(cfg.prune, k, v)
    return cfg


def test_run_end_to_end_writes_results_report_and_plots(tmp_path):
    cfg = _cfg(target=0.4, compare=["uniform", "random", "magnitude", "bn_scale"])
    res = run_pipeline(cfg, tmp_path, on_baseline=write_flip_plots)
    write_report(res, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["bops_reduction"] == pytest.approx(0.4, abs=0.01)
    assert [c["label"] for c in saved["compared"]] == [
        "uniform+wff",
        "target+random",
        "target+magnitude",
        "target+bn_scale",
    ]
    for c in saved["compared"]:  # every method pruned to the same BOPs (within the tolerance)
        assert abs(c["bops"] - saved["pruned"]["bops"]) / saved["baseline"]["bops"] <= 0.02
    assert saved["unpruned_budget"]["epochs"] == 3
    report = (tmp_path / "report.md").read_text()
    assert "| target+wff |" in report and "accuracy_vs_bops.png" in report
    assert "one run (1 seed" in report
    for f in ("accuracy_vs_bops.png", "channels.png", "flip_histograms.png", "flip_ratio.png"):
        assert (tmp_path / f).stat().st_size > 1000
    # a second start reuses every finished phase and reproduces the numbers
    again = run_pipeline(cfg, tmp_path)
    assert again["pruned"]["test_acc"] == saved["pruned"]["test_acc"]
    assert again["compared"][0]["test_acc"] == saved["compared"][0]["test_acc"]


def test_paper_policy_iterates_while_largest_p_decreases(tmp_path):
    cfg = _cfg(policy="paper", max_rounds=3, compare=[], budget_baseline=False)
    cfg.prune.retrain_epochs, cfg.train.track_last = 2, 2
    # unrounded counts: on this 8-32 channel model the kernels' 8-channel steps ("auto")
    # swallow the later rounds' small cuts, and this test is about the iteration
    cfg.prune.round_to = 1
    res = run_pipeline(cfg, tmp_path)
    rounds = res["rounds"]
    assert len(rounds) >= 2, res["stop"]  # it did iterate on this model
    assert [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
    for a, b in zip(rounds, rounds[1:]):  # a round follows only while max p_l decreases
        assert b["max_p"] < a["max_p"] and b["bops"] < a["bops"]
        assert b["bops"] == b["plan"]["bops_after"]  # surgery produced each planned model
    assert len(rounds) == 3 or "stopped decreasing" in res["stop"]
    for r in range(1, len(rounds) + 1):  # every round retrained in its own phase folder
        assert (tmp_path / f"pruned-round{r}" / "model.pt").is_file()
    assert res["pruned"] == rounds[-1] and res["retrain_epochs"] == 2 * len(rounds)


def test_run_refuses_folder_of_other_settings(tmp_path):
    cfg = _cfg(compare=[], budget_baseline=False)
    run_pipeline(cfg, tmp_path)
    cfg.train.lr = 1e-2
    with pytest.raises(ConfigError, match="other settings"):
        run_pipeline(cfg, tmp_path)


def test_bad_prune_config():
    cfg = _cfg(target=1.5)
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        cfg.validate()
    with pytest.raises(ConfigError, match="bogus"):
        resolve_run(_cfg(compare=["uniform", "bogus"]))


def test_uniform_without_flips_fails_before_training(tmp_path):
    """uniform+wff needs flip data for its channel choice: refused by validation, not after
    the baseline has trained."""
    cfg = _cfg(policy="uniform", compare=[])
    cfg.train.track_last = 0
    with pytest.raises(ConfigError, match="uniform\\+wff needs flip data"):
        run_pipeline(cfg, tmp_path)
    assert not (tmp_path / "baseline").exists()
    cfg.prune.criterion = "magnitude"  # needs no flips: accepted
    resolve_run(cfg)


def test_the_default_methods_run_end_to_end(tmp_path):
    cfg = RunConfig()  # the default prune section, on a tiny model and data
    cfg.model.name, cfg.model.width = "small", 0.25
    cfg.data.name, cfg.data.train_subset, cfg.data.test_subset = "synthetic", 256, 64
    cfg.train.epochs, cfg.train.track_last, cfg.train.batch_size = 2, 1, 64
    cfg.prune.retrain_epochs, cfg.prune.budget_baseline = 1, False
    res = run_pipeline(cfg, tmp_path)
    setup = resolve_run(cfg)
    assert res["pruned"]["label"] == setup.method.spec
    assert [c["label"] for c in res["compared"]] == [m.spec for m in setup.compare]
    assert len(res["compared"]) == len(RunConfig().prune.compare) == 2
    for r in (res["pruned"], *res["compared"]):
        assert r["bops"] == pytest.approx(0.5 * res["baseline"]["bops"], rel=0.05)


def test_run_prunes_to_a_flash_budget(tmp_path):
    """prune.flash_budget replaces the BOPs target: the pruned model's C export fits it."""
    from bnnprune.data import load_from_config
    from bnnprune.deploy.cexport import c_footprint
    from bnnprune.engine import compile_model
    from bnnprune.models import build_from_config
    from bnnprune.prune.budget import footprint_model

    cfg = _cfg(policy="uniform", criterion="magnitude", compare=[], budget_baseline=False)
    ds = load_from_config(cfg.data, cfg.train.seed)
    shape = tuple(ds.input_shape)
    full = footprint_model(build_from_config(cfg.model, ds, 0), shape)
    limit = cfg.prune.flash_budget = full.footprint(full.full).flash_bytes // 2
    res = run_pipeline(cfg, tmp_path)
    plan = res["pruned"]["plan"]
    assert plan["budget"]["limits"] == {"flash": limit} and plan["budget"]["fits"]
    assert plan["budget"]["after"]["flash_bytes"] <= limit
    from bnnprune.checkpoint import load_model

    pruned, _ = load_model(tmp_path / "pruned" / "model.pt")
    assert c_footprint(compile_model(pruned.eval(), shape)).flash_bytes <= limit


def test_bad_budget_config():
    """A device budget's keys are checked before anything trains, one line naming prune."""
    setup = resolve_run(_cfg(policy="uniform", flash_budget=9000, ram_budget=4000))
    assert setup.budget.limits == {"flash": 9000, "ram": 4000}
    assert resolve_run(_cfg()).budget is None
    for kw, match in (
        ({"policy": "uniform", "flash_budget": 0}, "prune: flash budget must be a whole"),
        ({"policy": "uniform", "insn_budget": 10**6}, "prune: an instruction budget and its"),
        ({"policy": "uniform", "mcu": "cortex-m4"}, "or an instruction budget"),
        ({"policy": "uniform", "insn_budget": 10**6, "mcu": "m4"}, "unknown target 'm4'"),
        ({"policy": "paper", "flash_budget": 9000}, "needs the target or uniform policy"),
        ({"policy": "uniform", "flash_budget": 9000, "target_latency": 0.5}, "not both"),
    ):
        with pytest.raises(ConfigError, match=match):
            resolve_run(_cfg(**kw))
