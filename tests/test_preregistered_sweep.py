"""The pre-registered sweep: statistics (t distribution, Holm, detectable difference), the
validation split, the plateau criterion and its gate, the from-scratch allocations, the
paper policy's uniform control, the primaries and their page."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from bnnprune.cells import Cell, cell_key
from bnnprune.cli import main
from bnnprune.config import ConfigError, SweepConfig, load_config
from bnnprune.data import DatasetError, load_dataset
from bnnprune.evidence import (
    analyze,
    default_method,
    design_results,
    held_before_interval,
    lsq_slope,
    plateau_verdict,
    pooled_plateau,
    required_rows,
    row_key,
)
from bnnprune.prune.resolve import resolve_sweep
from bnnprune.report.primaries import render_primaries_report, verdict
from bnnprune.stats import detectable_difference, holm, paired_test, t_cdf, t_quantile
from bnnprune.sweep import gated_out, run_sweep, sweep_cells

ROOT = Path(__file__).parents[1]
CONFIG = "experiments/nin_plateau_fashion_mnist.toml"


# ---------------------------------------------------------------- statistics


def test_t_distribution_matches_the_standard_table() -> None:
    for dof, q975 in ((1, 12.706), (4, 2.776), (9, 2.262), (29, 2.045)):
        assert t_quantile(0.975, dof) == pytest.approx(q975, abs=1e-3)
        assert t_cdf(q975, dof) == pytest.approx(0.975, abs=1e-4)
    assert t_quantile(0.8, 9) == pytest.approx(0.883, abs=1e-3)
    assert t_cdf(0.0, 7) == 0.5
    assert t_cdf(-2.0, 5) == pytest.approx(1 - t_cdf(2.0, 5))


def test_paired_test_p_value_and_sd() -> None:
    r = paired_test([1.0, 2.0, 3.0, 4.0], [0.5, 1.9, 2.2, 4.1])
    # d = (0.5, 0.1, 0.8, -0.1): mean 0.325, sd 0.4031, t = 1.6125 on 3 dof -> p = 0.2053
    assert r["sd"] == pytest.approx(0.403113, rel=1e-5)
    assert r["p"] == pytest.approx(0.2053, abs=1e-3)
    assert paired_test([1.0, 1.0], [0.5, 0.5])["p"] == 0.0  # no spread, nonzero mean
    assert math.isnan(paired_test([1.0], [0.0])["p"])


def test_holm_steps_down_and_keeps_order() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, 0.001, 0.5]) == pytest.approx([0.4, 0.003, 0.5])
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # 2 x 0.8 capped at 1; monotone after it


def test_detectable_difference_shrinks_with_seeds() -> None:
    # (t_.975,9 + t_.8,9) * 0.5 / sqrt(10) = (2.262 + 0.883) * 0.1581 = 0.4973
    assert detectable_difference(0.5, 10) == pytest.approx(0.4973, abs=1e-3)
    assert detectable_difference(0.5, 20) < detectable_difference(0.5, 10)
    assert detectable_difference(0.5, 10, alpha=0.05 / 3) > detectable_difference(0.5, 10)
    assert math.isnan(detectable_difference(0.5, 1))


# ---------------------------------------------------------------- validation split


def test_validation_split_is_disjoint_and_leaves_the_train_subset_unchanged() -> None:
    kw = {"n_train": 200, "n_test": 20, "image_size": 8}
    plain = load_dataset("synthetic", train_subset=100, seed=3, **kw)
    split = load_dataset("synthetic", train_subset=100, val_subset=50, seed=3, **kw)
    assert torch.equal(plain.train_x, split.train_x) and plain.val_x is None
    assert split.num_val == 50
    rows = {tuple(x.flatten().tolist()) for x in split.train_x}
    assert not any(tuple(x.flatten().tolist()) in rows for x in split.val_x)
    whole = load_dataset("synthetic", val_subset=50, seed=3, **kw)
    assert whole.num_train == 150 and whole.num_val == 50
    with pytest.raises(DatasetError, match="exceed"):
        load_dataset("synthetic", train_subset=180, val_subset=50, **kw)


# ---------------------------------------------------------------- plateau criterion


def _conv(rise: float, flat: float) -> dict:
    return {"acc_change_before_interval": rise, "worst_flatness": flat}


def test_plateau_verdict_and_gate() -> None:
    assert plateau_verdict(_conv(0.004, 1.2), 0.5, 1.5)["passed"]
    v = plateau_verdict(_conv(0.006, 1.2), 0.5, 1.5)
    assert not v["passed"] and not v["rise_ok"] and v["flat_ok"]
    assert not plateau_verdict(_conv(-0.01, 1.6), 0.5, 1.5)["passed"]
    assert plateau_verdict(_conv(0.5, 9.0), None, None) is None
    cfg = SweepConfig()
    cfg.sweep.plateau_max_rise_pp, cfg.sweep.plateau_gate = 0.5, True
    assert gated_out(cfg, {"convergence": _conv(0.02, 1.0)})
    assert not gated_out(cfg, {"convergence": _conv(0.001, 1.0)})
    cfg.sweep.plateau_gate = False
    assert not gated_out(cfg, {"convergence": _conv(0.02, 1.0)})


# ---------------------------------------------------------------- primaries


def _acc(diffs: dict[str, list[float]], reds=(0.3, 0.5)) -> dict:
    """Accuracies where row A exceeds row B by diffs[name][seed] at every reduction."""
    acc: dict = {}
    for s in range(len(next(iter(diffs.values())))):
        for r in reds:
            base = 0.8 + 0.01 * s
            acc.setdefault(("uniform+wff", r), {})[s] = base
            acc.setdefault(("scratch", r), {})[s] = base - diffs["p3"][s]
            acc.setdefault(("target+wff", r), {})[s] = base + diffs["p1"][s]
            acc.setdefault(("scratch-target", r), {})[s] = base + diffs["p1"][s] - diffs["p3"][s]
            acc.setdefault(("target+magnitude", r), {})[s] = base + diffs["p1"][s] - diffs["p2"][s]
    return acc


def test_primaries_contrast_per_seed_and_holm() -> None:
    n = 10
    diffs = {"p1": [0.01 + 0.001 * (i % 3) for i in range(n)],  # clearly positive
             "p2": [0.002 * (-1) ** i for i in range(n)],  # centred on 0
             "p3": [-0.004 + 0.0005 * (i % 2) for i in range(n)]}
    rows = analyze(_acc(diffs), ["allocation", "channel_choice", "prune_vs_scratch"],
                   [0.3, 0.5])
    p1, p2, p3 = rows
    assert p1["n"] == n and p1["mean"] == pytest.approx(sum(diffs["p1"]) / n)
    assert p1["resolved_holm"] and p1["p_holm"] < 0.05
    assert not p2["resolved_holm"] and p2["detectable"] > 0
    assert p3["resolved_holm"] and p3["mean"] < 0
    assert p1["p_holm"] >= p1["p"]
    assert "is better" in verdict(p1) and "flip-guided widths" in verdict(p1)
    assert "no difference resolved" in verdict(p2) and "detects" in verdict(p2)
    assert "trained from scratch is better" in verdict(p3)


def test_a_seed_counts_only_with_every_cell_it_needs() -> None:
    acc = _acc({"p1": [0.01] * 4, "p2": [0.0] * 4, "p3": [0.0] * 4})
    del acc[("scratch-target", 0.5)][2]
    p1 = analyze(acc, ["allocation"], [0.3, 0.5])[0]
    assert p1["seeds"] == [0, 1, 3]
    assert required_rows(["channel_choice"]) == {"target+wff", "target+magnitude"}


def test_default_method_goes_to_the_simpler_choice_on_a_tie() -> None:
    tie = [{"name": "allocation", "resolved_holm": False, "mean": 0.01, "n": 10},
           {"name": "channel_choice", "resolved_holm": False, "mean": 0.01, "n": 10}]
    assert default_method(tie)["method"] == "uniform+magnitude"
    win = [{**tie[0], "resolved_holm": True}, {**tie[1], "resolved_holm": True, "mean": -0.01}]
    assert default_method(win)["method"] == "target+magnitude"


def test_row_keys_of_the_new_cells() -> None:
    assert row_key({"kind": "scratch", "method_key": None}) == "scratch"
    assert row_key({"kind": "scratch", "method_key": "target+magnitude"}) == "scratch-target"
    assert row_key({"kind": "control", "method_key": "uniform+wff"}) == \
        "uniform+wff (paper control)"


# ---------------------------------------------------------------- the committed config


def test_committed_config_is_valid_and_has_every_arm() -> None:
    cfg = load_config(ROOT / CONFIG, SweepConfig)
    resolve_sweep(cfg)
    assert (ROOT / cfg.sweep.preregistration).is_file()
    names = {c.name for c in sweep_cells(cfg) if c.seed == 0}
    assert {"baseline", "paper+wff", "target+wff-40", "uniform+wff-40", "target+magnitude-40",
            "target+random-40", "scratch-40", "scratch-target-40", "unpruned-budget",
            "uniform+wff-paper-control"} <= names
    assert len(cfg.sweep.seeds) >= 10


def test_primaries_must_name_rows_the_sweep_computes(tmp_path) -> None:
    cfg = _tiny_cfg()
    cfg.sweep.scratch_policies = ["uniform"]
    cfg.sweep.plateau_max_flatness = 1.5
    with pytest.raises(ConfigError, match="scratch-target"):
        run_sweep(cfg, tmp_path)
    cfg.sweep.primaries = ["bogus"]
    with pytest.raises(ConfigError, match="unknown sweep.primaries"):
        run_sweep(cfg, tmp_path)
    cfg = _tiny_cfg()
    cfg.sweep.plateau_max_rise_pp = None
    with pytest.raises(ConfigError, match="plateau_gate needs a criterion"):
        cfg.validate()


# ---------------------------------------------------------------- seed-mean-slope rule


def _slope_conv(held: list[float], flat: dict[str, float]) -> dict:
    """A baseline's convergence: 2 epochs, the held epochs, then a 3-epoch flip interval."""
    accs = [0.5, 0.6, *held, 0.9, 0.9, 0.9]
    return {"val_acc_by_epoch": accs, "interval_epochs": 3, "flip_ratio_max_over_min": flat,
            "worst_flatness": max(flat.values())}


def test_lsq_slope_on_hand_made_histories() -> None:
    assert lsq_slope([0.80, 0.81, 0.82, 0.83, 0.84]) == pytest.approx(0.01)
    # x = -2..2, y - mean = (0, 1, -2, -1, 2) / 100: sum(x (y - mean)) = 2 / 100, over 10
    assert lsq_slope([0.82, 0.83, 0.80, 0.81, 0.84]) == pytest.approx(0.002)
    assert lsq_slope([0.7, 0.7, 0.7]) == 0.0
    # the NIN pilot's seed 0, epochs 11-15: the pre-registration's -0.31 pp per epoch
    assert 100 * lsq_slope([0.8364, 0.8354, 0.8100, 0.8212, 0.8280]) == pytest.approx(-0.31)
    with pytest.raises(ValueError, match="at least 2"):
        lsq_slope([0.8])
    conv = _slope_conv([0.80, 0.81, 0.82, 0.83, 0.84], {"a": 1.1})
    assert held_before_interval(conv, 5) == [0.80, 0.81, 0.82, 0.83, 0.84]
    assert held_before_interval(conv, 3) == [0.82, 0.83, 0.84]
    assert held_before_interval(conv, 8) is None  # only 7 epochs before the interval
    assert held_before_interval({"acc_change_before_interval": 0.01}, 5) is None


def test_pooled_plateau_reads_the_seed_mean() -> None:
    flat = {"a": 1.1, "b": 1.3}
    rising = _slope_conv([0.80, 0.81, 0.82, 0.83, 0.84], flat)  # +1.0 pp per epoch
    falling = _slope_conv([0.84, 0.83, 0.82, 0.81, 0.80], {"a": 1.3, "b": 1.5})
    flat_curve = _slope_conv([0.82, 0.83, 0.80, 0.81, 0.84], flat)  # +0.2 pp per epoch
    # the mean of a rising and a falling seed is flat: the recipe passes, each seed alone
    # would not (the rising one by its slope, the falling one by its layer b)
    v = pooled_plateau({0: rising, 1: falling}, 0.25, 1.5, 5, 10)
    assert v["passed"] and v["slope_pp"] == pytest.approx(0.0, abs=1e-12)
    assert v["flatness"] == pytest.approx({"a": 1.2, "b": 1.4})
    assert v["seeds"] == [0, 1] and v["of"] == 10 and v["provisional"]
    assert v["epochs"] == [3, 7]
    # rising on the mean: fails by its slope, (0.2 + 1.0) / 2 = 0.6 pp per epoch
    v = pooled_plateau({0: rising, 3: flat_curve}, 0.25, 1.5, 5, 2)
    assert not v["passed"] and not v["slope_ok"] and v["flat_ok"] and not v["provisional"]
    assert v["slope_pp"] == pytest.approx(0.6)
    # flat accuracy, but one layer's seed-mean flip ratio max/min reaches the threshold
    v = pooled_plateau({0: falling, 1: _slope_conv([0.8] * 5, {"a": 1.0, "b": 1.5})},
                       0.25, 1.5, 5, 10)
    assert v["slope_ok"] and not v["flat_ok"] and not v["passed"]
    # no baseline yet: nothing decided, nothing passes
    v = pooled_plateau({}, 0.25, 1.5, 5, 10)
    assert v["slope_pp"] is None and not v["passed"] and v["seeds"] == []


def _cell(kind: str, method: str, seed: int, acc: float) -> dict:
    return {"kind": kind, "method_key": method, "seed": seed, "target_reduction": 0.4,
            "test_acc": acc, "val_acc": acc}


def _allocation_records(convs: dict[int, dict]) -> list[dict]:
    """Fake baselines and every cell the allocation primary needs, for each seed."""
    out: list[dict] = []
    for seed, conv in convs.items():
        out += [{"kind": "baseline", "seed": seed, "convergence": conv},
                _cell("prune", "target+wff", seed, 0.80 + 0.01 * seed),
                _cell("prune", "uniform+wff", seed, 0.79),
                _cell("scratch", "target+wff", seed, 0.78),
                _cell("scratch", "", seed, 0.78 - 0.002 * seed)]
    return out


def test_seed_mean_rule_gates_no_seed() -> None:
    cfg = load_config(ROOT / CONFIG, SweepConfig)
    s = cfg.sweep
    s.primaries, s.plateau_rule, s.plateau_max_slope_pp = ["allocation"], "seed-mean-slope", 0.25
    s.plateau_max_rise_pp, s.plateau_max_flatness, s.plateau_gate = None, 1.5, False
    cfg.validate()
    flat = {"a": 1.1}
    convs = {0: _slope_conv([0.80, 0.81, 0.82, 0.83, 0.84], flat),  # rises 1 pp per epoch
             1: _slope_conv([0.84, 0.83, 0.82, 0.81, 0.80], flat),
             2: _slope_conv([0.82, 0.82, 0.82, 0.82, 0.82], flat)}
    res = design_results(cfg, _allocation_records(convs))
    assert res["plateau_pooled"]["passed"] and res["plateau_pooled"]["seeds"] == [0, 1, 2]
    assert not res["plateau"]["0"]["passed"]  # seed 0 alone would fail: reported only
    assert res["plateau"]["0"]["slope_pp"] == pytest.approx(1.0)
    assert res["plateau"]["2"]["passed"]
    assert res["primaries"][0]["n"] == 3  # no seed is gated out
    # the old per-seed rule with its gate, on the same records, drops the rising seed 0
    old = load_config(ROOT / CONFIG, SweepConfig)
    old.sweep.primaries = ["allocation"]
    old.sweep.plateau_rule, old.sweep.plateau_max_slope_pp = "per-seed-rise", None
    old.sweep.plateau_max_rise_pp, old.sweep.plateau_gate = 0.5, True
    old.validate()
    for c in convs.values():
        c["acc_change_before_interval"] = c["val_acc_by_epoch"][6] - c["val_acc_by_epoch"][4]
    res = design_results(old, _allocation_records(convs))
    assert "plateau_pooled" not in res and res["primaries"][0]["n"] == 2


@pytest.mark.parametrize(("settings", "message"), [
    ('plateau_rule = "mean"', "plateau_rule takes per-seed-rise or seed-mean-slope"),
    ('plateau_rule = "seed-mean-slope"', "needs sweep.plateau_max_slope_pp"),
    ('plateau_rule = "seed-mean-slope"\nplateau_max_slope_pp = 0', "must be > 0"),
    ('plateau_rule = "seed-mean-slope"\nplateau_max_slope_pp = 0.25\nplateau_slope_epochs = 1',
     "plateau_slope_epochs must be >= 2"),
    ('plateau_rule = "seed-mean-slope"\nplateau_max_slope_pp = 0.25\nplateau_gate = true',
     "cannot gate seeds"),
    ('plateau_rule = "seed-mean-slope"\nplateau_max_slope_pp = 0.25\n'
     'plateau_max_rise_pp = 0.5', "belongs to the per-seed-rise rule"),
    ("plateau_max_slope_pp = 0.25", "needs sweep.plateau_rule"),
])
def test_plateau_rule_settings_are_validated(tmp_path, settings: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[sweep]\nmethods = [\"uniform+wff\"]\n{settings}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path, SweepConfig).validate()
    assert "\n" not in str(err.value)


def test_nin_page_warns_above_the_primaries_when_the_recipe_fails(tmp_path, monkeypatch) -> None:
    """A second, steeply rising baseline makes the seed-mean slope fail: the page says so
    above the primaries, counts 2 of 10 seeds, and gates neither seed."""
    (tmp_path / "experiments").mkdir()
    for name in (CONFIG, "experiments/nin_plateau_preregistration.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    cells = tmp_path / "docs" / "results-nin" / "cells"
    # seed 0's committed baseline only: the trial's later records must not change this test
    shutil.copytree(ROOT / "docs" / "results-nin" / "cells" / "seed0", cells / "seed0")
    rec = json.loads((cells / "seed0" / "baseline.json").read_text())
    cfg = load_config(ROOT / CONFIG, SweepConfig)
    rec["seed"], rec["folder"] = 1, "seed1/baseline"
    rec["key"] = cell_key(cfg, Cell("baseline", 1))
    rec["convergence"]["val_acc_by_epoch"][10:15] = [0.78, 0.80, 0.82, 0.84, 0.86]
    (cells / "seed1").mkdir()
    (cells / "seed1" / "baseline.json").write_text(json.dumps(rec))
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--config", CONFIG, "--docs", "docs", "--report-only", "-o",
                 "run"]) == 0
    page = (tmp_path / "docs" / "results-nin.md").read_text()
    warning = page.index("**The training recipe fails the pre-registered plateau criterion**")
    assert warning < page.index("- **P1**")
    assert "(provisional, 2 of 10 seeds)" in page
    # seed 0: -0.31, seed 1: +2.0 pp per epoch; their mean +0.84 fails 0.25
    assert "Slope of the seed-mean validation accuracy over epochs 11-15: +0.84 pp" in page
    assert "**no**: not used" not in page


# ---------------------------------------------------------------- end to end


def _tiny_cfg() -> SweepConfig:
    cfg = SweepConfig()
    cfg.model.name, cfg.model.width = "small", 0.25
    cfg.data.name, cfg.data.train_subset, cfg.data.test_subset = "synthetic", 256, 64
    cfg.data.val_subset = 64
    cfg.train.epochs, cfg.train.plateau_epochs, cfg.train.track_last = 4, 3, 2
    cfg.train.batch_size, cfg.train.lr, cfg.train.plateau_lr = 64, 5e-3, 1.0  # many flips
    cfg.prune.retrain_epochs, cfg.prune.max_rounds = 1, 2
    s = cfg.sweep
    s.seeds, s.reductions = [0, 1], [0.3]
    s.methods = ["paper+wff", "target+wff", "uniform+wff", "target+magnitude"]
    s.scratch, s.scratch_policies, s.paper_control = True, ["uniform", "target"], True
    s.flip_percents, s.speed = [], False
    s.plateau_max_rise_pp, s.plateau_max_flatness, s.plateau_gate = 100.0, None, True
    s.primaries = ["allocation", "channel_choice", "prune_vs_scratch"]
    return cfg


@pytest.mark.slow  # a whole pre-registered sweep, end to end
def test_preregistered_sweep_end_to_end_and_the_gate(tmp_path) -> None:
    cfg = _tiny_cfg()
    res = run_sweep(cfg, tmp_path / "a")
    kinds = sorted({(r["kind"], row_key(r) if r["kind"] != "baseline" else "")
                    for r in res["records"] if r["kind"] not in ("baseline", "budget")})
    assert ("control", "uniform+wff (paper control)") in kinds
    assert ("scratch", "scratch-target") in kinds and ("scratch", "scratch") in kinds
    base = [r for r in res["records"] if r["kind"] == "baseline"]
    assert all(r["val_acc"] is not None and r["convergence"]["split"] == "val" for r in base)
    assert all(set(r["allocations"]["0.3"]) == {"target", "uniform", "layers_differing"}
               for r in base)
    assert all(v["passed"] for v in res["plateau"].values())
    by = {(r["seed"], r["folder"].split("/")[1]): r for r in res["records"]}
    for seed in (0, 1):
        paper, control = by[(seed, "paper+wff")], by[(seed, "uniform+wff-paper-control")]
        assert control["matched_reduction"] == paper["bops_reduction"]
        assert control["epochs"] == cfg.train.epochs + \
            len(paper["rounds"]) * cfg.prune.retrain_epochs
        assert by[(seed, "scratch-target-30")]["epochs"] == cfg.train.epochs + 1
    assert [p["n"] for p in res["primaries"]] == [2, 2, 2]
    assert res["default_method"]["method"] in {"uniform+magnitude", "target+magnitude",
                                               "uniform+wff", "target+wff"}
    text = render_primaries_report(res, {}, "bnnprune sweep --config X", "### Prereg\n\nfixed")
    assert "**P1**" in text and "### Prereg" in text and "Default method" in text

    # the gate: with a criterion every baseline fails, the same folder gives baselines only
    strict = _tiny_cfg()
    strict.sweep.plateau_max_flatness = 1.0 + 1e-12  # no real interval is this flat
    res2 = run_sweep(strict, tmp_path / "a", compute=False)
    assert res2["pending"] == 0  # the failed seeds' cells are not waited for
    res2 = run_sweep(strict, tmp_path / "a")
    assert {r["kind"] for r in res2["records"]} == {"baseline"}
    assert not any(v["passed"] for v in res2["plateau"].values())
    assert [p["n"] for p in res2["primaries"]] == [0, 0, 0]
    assert "not decided yet" in render_primaries_report(res2, {}, None, None)


def test_committed_page_regenerates_from_committed_records(tmp_path, monkeypatch) -> None:
    """docs/results-nin.md is exactly what the committed records (none before the trial
    starts) and the committed pre-registration give."""
    (tmp_path / "experiments").mkdir()
    for name in (CONFIG, "experiments/nin_plateau_preregistration.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    cells = ROOT / "docs" / "results-nin" / "cells"
    if cells.is_dir():
        shutil.copytree(cells, tmp_path / "docs" / "results-nin" / "cells")
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--config", CONFIG, "--docs", "docs", "--report-only", "-o", "run"]
    assert main(args) == 0
    assert (tmp_path / "docs" / "results-nin.md").read_text() == \
        (ROOT / "docs" / "results-nin.md").read_text()
    assert len(json.loads((tmp_path / "run" / "results.json").read_text())["primaries"]) == 3
    assert not list((tmp_path / "run").rglob("*.pt"))  # nothing was trained
