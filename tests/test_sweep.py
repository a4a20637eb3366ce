"""The evidence sweep: cells, resumption, aggregation, the generated page, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from bnnprune.cli import main
from bnnprune.config import ConfigError, PruneConfig, SweepConfig
from bnnprune.evidence import aggregate, paper_retraining
from bnnprune.prune.methods import Method, MethodError, parse_method
from bnnprune.prune.resolve import resolve_prune, resolve_sweep
from bnnprune.report.sweep import render_sweep_report, write_sweep_report
from bnnprune.stats import paired_difference, spearman
from bnnprune.sweep import run_sweep, sweep_cells


def _cfg(**sweep) -> SweepConfig:
    cfg = SweepConfig()
    cfg.model.name, cfg.model.width = "small", 0.25
    cfg.data.name, cfg.data.train_subset, cfg.data.test_subset = "synthetic", 384, 96
    cfg.train.epochs, cfg.train.track_last, cfg.train.batch_size, cfg.train.lr = 2, 1, 64, 5e-3
    cfg.prune.retrain_epochs = 1
    cfg.sweep.seeds, cfg.sweep.reductions = [0, 1], [0.3]
    cfg.sweep.methods = ["paper+wff", "target+wff", "target+random"]
    cfg.sweep.flip_percents, cfg.sweep.speed_repeats = [5, 20], 2
    for k, v in sweep.items():
        setattr(cfg.sweep, k, v)
    return cfg


def test_parse_method() -> None:
    assert parse_method("paper") == Method("paper", "wff")
    assert parse_method("uniform") == Method("uniform", "wff")
    assert parse_method(" target + magnitude ") == Method("target", "magnitude")
    assert parse_method("random") == Method("target", "random")
    assert parse_method("uniform", default_criterion="magnitude").spec == "uniform+magnitude"
    assert str(Method("paper", "wff")) == "paper+wff"
    assert Method("uniform", "magnitude").needs == {"weights"}
    assert Method("uniform", "wff").needs_flips and Method("target", "random").needs_flips
    with pytest.raises(MethodError, match="unknown criterion 'largest'"):
        parse_method("target+largest")
    with pytest.raises(MethodError, match="unknown method"):
        parse_method("bogus")
    with pytest.raises(MethodError, match="needs flip data"):
        Method("uniform", "flip_magnitude").require(has_flips=False)


def test_paired_difference_and_spearman() -> None:
    d = paired_difference([0.80, 0.82, 0.81], [0.79, 0.80, 0.80])
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.013333, abs=1e-6)
    # t(2) = 4.303, sd of (0.01, 0.02, 0.01) = 0.005774 -> half width 0.014344
    assert d["hi"] - d["mean"] == pytest.approx(4.303 * 0.0057735 / 3 ** 0.5, rel=1e-4)
    assert not d["resolved"]  # the interval contains 0
    assert paired_difference([1.0, 1.1, 1.2], [0.0, 0.1, 0.19])["resolved"]
    import torch

    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, 2.0, 3.0])) == \
        pytest.approx(0.8660254)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("reductions", [0.2, 1.5], "reductions"),
        ("methods", [], "empty"),
        ("methods", ["target+wff", "target+nope"], "unknown criterion 'nope'"),
        ("seeds", [0, -1], "whole numbers"),
        ("flip_choices", ["highest_wff", "biggest"], "flip_choices"),
        ("speed_repeats", 0, "speed_repeats"),
    ],
)
def test_bad_sweep_settings_raise(key, value, match) -> None:
    cfg = _cfg(**{key: value})
    with pytest.raises(ConfigError, match=match):
        resolve_sweep(cfg)


@pytest.mark.slow  # a whole sweep, interrupted and resumed
def test_sweep_runs_every_cell_resumes_and_writes_the_page(tmp_path) -> None:
    out = tmp_path / "sweep"
    logs: list[str] = []
    res = run_sweep(_cfg(), out, log=logs.append, command="bnnprune sweep (test)")
    kinds = [r["kind"] for r in res["records"]]
    # 2 seeds x (baseline, premise, paper, target+wff, target+random, budget)
    assert sorted(kinds) == sorted(["baseline", "premise", "prune", "prune", "prune", "budget"] * 2)
    for seed in (0, 1):
        for folder in ("baseline", "paper+wff", "target+wff-30", "target+random-30",
                       "unpruned-budget", "premise"):
            assert (out / f"seed{seed}" / folder / "result.json").is_file()
    table = {(e["method_key"], e["target_reduction"]): e for e in res["table"]}
    assert set(table) == {("paper+wff", None), ("target+wff", 0.3), ("target+random", 0.3)}
    for key in (("target+wff", 0.3), ("target+random", 0.3)):
        e = table[key]
        assert e["test_acc"]["n"] == 2 and e["seeds"] == [0, 1]
        assert e["bops_reduction"]["mean"] == pytest.approx(0.3, abs=0.02)
        assert e["latency_ratio_batch1"]["n"] == 2 and e["engine_agreement_min"] == 1.0
    assert table[("paper+wff", None)]["bops_reduction"]["mean"] > 0
    assert [d["a"] for d in res["paired"]] == ["target+wff"]  # wff vs random, 2 paired seeds
    assert res["paired"][0]["n"] == 2 and set(res["convergence"]) == {"0", "1"}
    assert set(res["thresholds"]) == {"0", "1", "2", "4"} and res["correlation"]
    assert set(res["intervals"]) == {"1"}  # track_last = 1: one interval length
    prem = res["premise"]
    assert prem["percents"] == [5.0, 20.0]
    assert set(prem["curves"]) == {"highest_wff", "lowest_wff", "random", "smallest_magnitude"}
    assert all(len(v) == 2 and v[0]["n"] == 2 for v in prem["curves"].values())
    assert res["baseline"]["test_acc"]["n"] == 2 and res["budget"]["test_acc"]["n"] == 2

    # the factorial prune cells of every seed come first, then the paper policy, the premise
    # check and the budget baseline
    order = [line.split("] ", 1)[1].split(":")[0] for line in logs if line.startswith("[")]
    assert sorted(order[:2]) == ["seed 0 baseline", "seed 1 baseline"]
    assert order[2:] == ["seed 0 target+wff (-30%)", "seed 0 target+random (-30%)",
                         "seed 1 target+wff (-30%)", "seed 1 target+random (-30%)",
                         "seed 0 paper+wff (own)", "seed 1 paper+wff (own)",
                         "seed 0 premise", "seed 1 premise", "seed 0 budget", "seed 1 budget"]

    # a second start recomputes nothing and gives the same numbers
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}
    logs.clear()
    again = run_sweep(_cfg(), out, log=logs.append, command="bnnprune sweep (again)")
    assert all("(reused)" in line for line in logs if line.startswith("["))
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")} == stamps
    assert again["table"] == res["table"]
    assert [i["command"] for i in again["invocations"]] == [
        "bnnprune sweep (test)", "bnnprune sweep (again)"]
    assert again["invocations"][1]["cells_computed"] == 0
    assert [i["models_timed"] for i in again["invocations"]] == [6, 0]

    # a damaged cell record is rebuilt from its finished phase, not retrained
    (out / "seed0" / "target+wff-30" / "result.json").write_text("{not json")
    third = run_sweep(_cfg(), out, command="bnnprune sweep (third)")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")} == stamps
    assert third["invocations"][2]["cells_computed"] == 1
    assert third["invocations"][2]["models_timed"] == 1
    assert [e["test_acc"] for e in third["table"]] == [e["test_acc"] for e in res["table"]]

    # other settings in the same folder are refused, never mixed in
    other = _cfg()
    other.train.lr = 1e-2
    with pytest.raises(ConfigError, match="other settings"):
        run_sweep(other, out)
    # but the method settings of `bnnprune run`, which no cell reads, move no cell
    moved = _cfg()
    moved.prune.policy, moved.prune.criterion, moved.prune.target = "paper", "random", 0.2
    moved.prune.compare = ["uniform+magnitude"]
    assert run_sweep(moved, out)["invocations"][-1]["cells_computed"] == 0

    page = write_sweep_report(third, tmp_path / "docs" / "results.md", tmp_path / "docs" / "r")
    text = page.read_text()
    for png in ("pareto.png", "premise.png", "speed.png"):
        assert (tmp_path / "docs" / "r" / png).stat().st_size > 1000
        assert f"(r/{png})" in text
    assert "bnnprune sweep (third)" in text and "| target+wff |" in text
    assert "Premise check" in text and "Against the paper" in text
    assert "Where the time goes: target+wff at -30% BOPs, seed 0" in text
    assert "does WFF channel choice beat random?" in text
    assert "Channels kept per binary layer (seed 0)" in text
    # every cell's machine and wall time: one machine here, 2 seeds x 6 cells
    cells = text.split("## Cells: machine and wall time", 1)[1]
    assert "Every cell ran on" in cells and "| cell | seed 0 | seed 1 |" in cells
    assert cells.count("\n| ") == 1 + len({r["folder"].split("/")[1] for r in third["records"]})


def _rec(kind, seed, acc, bops=100, key=None, red=None, **extra):
    return {"kind": kind, "seed": seed, "test_acc": acc, "bops": bops, "memory_bytes": 10,
            "method": key or kind, "method_key": key, "target_reduction": red,
            "channels": {"a": 4}, **extra}


def test_aggregate_means_and_stds_over_seeds_and_the_verdicts() -> None:
    records = [
        _rec("baseline", 0, 0.90), _rec("baseline", 1, 0.92),
        _rec("budget", 0, 0.91), _rec("budget", 1, 0.93),
        _rec("prune", 0, 0.80, 70, "target+wff", 0.3),
        _rec("prune", 1, 0.84, 70, "target+wff", 0.3),
        _rec("prune", 0, 0.60, 70, "target+random", 0.3),
        _rec("prune", 1, 0.62, 70, "target+random", 0.3),
    ]
    prem = {"percents": [10.0], "unflipped_acc": 0.9, "flipped_in_window": 0.05,
            "curves": {"highest_wff": [0.8], "random": [0.5], "lowest_wff": [0.3],
                       "smallest_magnitude": [0.85]}}
    records += [{"kind": "premise", "seed": s, **prem} for s in (0, 1)]
    agg = aggregate(records)
    wff = next(e for e in agg["table"] if e["method_key"] == "target+wff")
    assert wff["test_acc"]["mean"] == pytest.approx(0.82)
    assert wff["test_acc"]["std"] == pytest.approx(0.0282843, rel=1e-4)
    assert wff["bops_reduction"]["mean"] == pytest.approx(0.3)
    assert agg["baseline"]["test_acc"]["mean"] == pytest.approx(0.91)
    assert agg["premise"]["curves"]["random"][0]["mean"] == pytest.approx(0.5)

    results = {**agg, "config": SweepConfig().to_dict(), "dataset": {
        "name": "x", "train": 1, "test": 1, "input_shape": [1, 2, 2]},
        "command": "bnnprune sweep"}
    text = render_sweep_report(results, {})
    # the headline quotes the paired interval (the page's one statistic): t(1) = 12.706
    assert "target+wff minus target+random: +21.00 pp, 95% interval [+8.29, +33.71] over 2 " \
           "paired seeds: resolved" in text
    # each flip choice paired by seed against random flips of as many weights
    assert "paired by seed: highest WFF first +30.00 pp" in text
    assert "lowest WFF first -20.00 pp" in text
    assert "in the means the smallest latent magnitudes are safer still" in text
    assert "lost more than 1.0 pp against the baseline" in text
    assert "did not pick better channels than chance" not in text

    for r in records:  # now random channels beat flip frequency: said plainly
        if r.get("method_key") == "target+random":
            r["test_acc"] += 0.3
    text = render_sweep_report({**results, **aggregate(records)}, {})
    assert "did not pick better channels than chance:** at -30% BOPs" in text


@pytest.mark.slow  # a whole sweep in two worker processes
def test_cli_sweep_in_two_processes_and_bad_flags(tmp_path, capsys) -> None:
    out = tmp_path / "s"
    args = ["sweep", "--dataset", "synthetic", "--train-subset", "256", "--test-subset", "64",
            "--width", "0.25", "--epochs", "1", "--track-last", "1", "--retrain-epochs", "1",
            "--seeds", "0,1", "--reductions", "0.3", "--methods", "target+wff",
            "--flip-percents", "10", "--no-speed", "--jobs", "2", "-o", str(out),
            "--docs", str(tmp_path / "docs")]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["records"]) == 8
    assert res["command"].startswith("bnnprune sweep --dataset synthetic")
    assert (tmp_path / "docs" / "results.md").is_file()
    assert (tmp_path / "docs" / "results" / "pareto.png").is_file()
    capsys.readouterr()
    for bad, msg in ((["--methods", "target+foo"], "unknown criterion 'foo'"),
                     (["--jobs", "0"], "jobs must be >= 1"),
                     (["--reductions", "1.2"], "sweep.reductions")):
        assert main([*args[:-4], *bad, "-o", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]
        assert not (tmp_path / "bad").exists()


def test_paper_policy_from_scratch_runs_last_on_the_baseline_schedule(tmp_path) -> None:
    cfg = _cfg(methods=["paper+wff", "target+wff"], seeds=[0], flip_percents=[],
               speed=False, paper_scratch=True)
    cfg.prune.budget_baseline, cfg.prune.max_rounds, cfg.prune.threshold = False, 2, 0
    cells = sweep_cells(cfg)
    assert [c.folder for c in cells] == ["seed0/baseline", "seed0/paper+wff",
                                         "seed0/target+wff-30", "seed0/paper+wff-scratch"]
    res = run_sweep(cfg, tmp_path / "s", command="bnnprune sweep (test)")
    recs = {r["folder"]: r for r in res["records"]}
    fine, scratch = recs["seed0/paper+wff"], recs["seed0/paper+wff-scratch"]
    assert scratch["retrain"] == "scratch" and "retrain" not in fine
    assert scratch["key"]["retrain"] == "scratch" and "retrain" not in fine["key"]
    # every from-scratch round trains the baseline's epochs; fine-tuning prune.retrain_epochs
    n = len(scratch["rounds"])
    assert scratch["epochs"] == cfg.train.epochs * (1 + n)
    assert [r["epochs"] for r in scratch["rounds"]] == [
        cfg.train.epochs * (1 + r) for r in range(1, n + 1)]
    assert fine["epochs"] == cfg.train.epochs + len(fine["rounds"]) * cfg.prune.retrain_epochs
    ck = torch.load(tmp_path / "s" / "seed0" / "paper+wff-scratch" / "model.pt",
                    weights_only=False)
    assert ck["meta"]["phase_key"]["from_scratch"] is True
    assert ck["meta"]["phase_key"]["train"]["epochs"] == cfg.train.epochs
    rows = {e["method_key"] for e in res["table"]}
    assert {"paper+wff", "paper+wff, from scratch", "target+wff"} == rows
    assert set(res["paper_rounds"]) == {"paper+wff", "paper+wff, from scratch"}
    text = render_sweep_report(res, {})
    assert "**Paper policy, fine-tuned**" in text
    assert "**Paper policy, retrained from scratch**" in text
    assert "| from scratch | 0 | 1 |" in text and "| fine-tuning | 0 | 1 |" in text
    (cmp,) = res["paper_retraining"]  # the first round: the same plan, retrained two ways
    assert cmp["method"] == "paper+wff" and cmp["seeds"] == [0] and cmp["bops_equal"]
    assert cmp["epochs"] == [cfg.train.epochs + cfg.prune.retrain_epochs, 2 * cfg.train.epochs]
    assert cmp["diff"]["mean"] == pytest.approx(
        fine["rounds"][0]["test_acc"] - scratch["rounds"][0]["test_acc"])
    assert "**Fine-tuning vs retraining from scratch** (paper+wff, first round: the same plan" \
        in text

    cfg.sweep.methods = ["target+wff"]
    with pytest.raises(ConfigError, match="paper_scratch"):
        resolve_sweep(cfg)


def test_paper_retraining_is_paired_on_the_first_round() -> None:
    def paper(seed, accs, bops, epochs, scratch):
        rounds = [{"round": i + 1, "test_acc": a, "bops": b, "epochs": e}
                  for i, (a, b, e) in enumerate(zip(accs, bops, epochs, strict=True))]
        extra = {"retrain": "scratch"} if scratch else {}
        return _rec("prune", seed, accs[-1], bops[-1], "paper+wff", None, rounds=rounds,
                    **extra)

    records = [paper(0, [0.86, 0.87], [80, 70], [16, 20], False),
               paper(1, [0.88], [80], [16], False),
               paper(0, [0.85], [80], [24], True), paper(1, [0.86], [80], [24], True),
               paper(2, [0.80], [80], [24], True)]  # no fine-tuned partner: left out
    (cmp,) = paper_retraining(records)
    assert cmp["seeds"] == [0, 1] and cmp["bops_equal"] and cmp["epochs"] == [16, 24]
    assert cmp["diff"]["mean"] == pytest.approx(0.015) and cmp["diff"]["n"] == 2
    assert cmp["rounds"] == [[1, 2], [1, 1, 1]]
    records[2]["rounds"][0]["bops"] = 81
    assert not paper_retraining(records)[0]["bops_equal"]


def test_pruned_copy_from_scratch_is_seeded() -> None:
    from bnnprune.models import build_model
    from bnnprune.prune import prune_once

    base = build_model("small", width=0.25)
    method = Method("uniform", "magnitude")
    fine = prune_once(base, method, (1, 28, 28), target=0.3, seed=0).model
    a, b, c = (prune_once(base, method, (1, 28, 28), target=0.3, seed=s,
                          from_scratch=True).model for s in (3, 3, 4))
    wa, wb, wc, wf = (dict(m.state_dict()) for m in (a, b, c, fine))
    conv = next(k for k in wa if k.endswith("weight") and wa[k].dim() == 4)
    assert torch.equal(wa[conv], wb[conv])  # same seed, same fresh weights
    assert not torch.equal(wa[conv], wc[conv]) and not torch.equal(wa[conv], wf[conv])


def test_a_fresh_clone_retrains_the_baseline_and_checks_it_against_its_record(
        tmp_path, monkeypatch) -> None:
    import shutil
    import warnings

    monkeypatch.chdir(tmp_path)
    cfg = _cfg(methods=["target+wff"], seeds=[0], flip_percents=[], speed=False,
               records="committed")
    cfg.prune.budget_baseline = False
    run_sweep(cfg, "run")
    base = tmp_path / "committed" / "seed0" / "baseline.json"
    assert base.is_file()
    # a fresh clone: the records are there, the run folder is not; a new cell needs the
    # baseline, which trains again and reproduces its record exactly (no warning)
    shutil.rmtree("run")
    cfg.sweep.methods = ["target+wff", "target+random"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = run_sweep(cfg, "run")
    assert {r["folder"] for r in res["records"]} == {
        "seed0/baseline", "seed0/target+wff-30", "seed0/target+random-30"}
    # a record from another machine (other accuracy): the rebuilt baseline says so
    rec = json.loads(base.read_text())
    rec["test_acc"] -= 0.01
    base.write_text(json.dumps(rec))
    shutil.rmtree("run")
    (tmp_path / "committed" / "seed0" / "target+random-30.json").unlink()
    with pytest.warns(UserWarning, match="seed 0: the baseline trained again reaches"):
        run_sweep(cfg, "run")


def test_identical_arms_are_called_identical_not_unresolved() -> None:
    records = [_rec("baseline", s, 0.9) for s in (0, 1, 2)]
    for s, (m, f, w) in enumerate([(0.85, 0.85, 0.84), (0.86, 0.86, 0.87), (0.84, 0.84, 0.80)]):
        records += [_rec("prune", s, m, 70, "target+magnitude", 0.3),
                    _rec("prune", s, f, 70, "target+flip_magnitude", 0.3),
                    _rec("prune", s, w, 70, "target+wff", 0.3)]
    agg = aggregate(records)
    results = {**agg, "config": SweepConfig().to_dict(), "records": records, "dataset": {
        "name": "x", "train": 1, "test": 1, "input_shape": [1, 2, 2]}, "command": "c"}
    text = render_sweep_report(results, {})
    assert "**does |w|/(1+flips) beat magnitude?** identical" in text
    assert "| target+flip_magnitude | target+magnitude | -30% | 3 | +0.00 | [+0.00, +0.00] " \
           "| identical |" in text
    assert "**does WFF channel choice beat latent magnitude?** no difference resolved" in text


def test_the_recommended_default_is_the_simplest_method_tied_with_the_best_ranked() -> None:
    records = [_rec("baseline", s, 0.9) for s in (0, 1, 2)]
    accs = {"target+magnitude": (0.86, 0.87, 0.85), "target+wff": (0.83, 0.85, 0.82),
            "uniform+random": (0.855, 0.855, 0.855)}
    for red, shift in ((0.3, 0.0), (0.5, -0.02)):
        for key, a in accs.items():
            records += [_rec("prune", s, x + shift, 70, key, red) for s, x in enumerate(a)]
        records += [_rec("scratch", s, 0.95, 70, None, red) for s in (0, 1, 2)]  # not a method
    rec = aggregate(records)["recommendation"]
    assert rec["best_ranked"] == "target+magnitude" and rec["reductions"] == [0.3, 0.5]
    # no comparison resolves uniform+random from the best-ranked method, and it needs no flip
    # counts (the target policy does): the tie goes to it; target+wff is resolved worse
    assert rec["tied"] == ["target+magnitude", "uniform+random"]
    assert rec["method"] == "uniform+random" and rec["mean_rank"] == 3.0
    # scratch ranks first: it is ranked, not recommended (not a way to prune a trained model)
    assert rec["mean_ranks"] == {"scratch": 1.0, "target+magnitude": 2.0,
                                 "uniform+random": 3.0, "target+wff": 4.0}
    vs = {(d["b"], d["reduction"]): d for d in rec["against"]}
    assert vs[("target+wff", 0.3)]["mean"] == pytest.approx(0.0267, abs=1e-4)
    assert vs[("target+wff", 0.3)]["resolved"] and not vs[("uniform+random", 0.5)]["resolved"]
    assert vs[("scratch", 0.5)]["resolved"] and vs[("scratch", 0.5)]["mean"] < 0
    results = {**aggregate(records), "config": SweepConfig().to_dict(), "records": records,
               "dataset": {"name": "x", "train": 1, "test": 1, "input_shape": [1, 2, 2]},
               "command": "c"}
    text = render_sweep_report(results, {})
    assert ("**Default method:** target+magnitude ranks best among the pruning methods (mean "
            "rank 2.00); paired against the other rows at each reduction it is resolved better "
            "than target+wff and resolved worse than scratch. No comparison resolves 1 other "
            "pruning methods from it, and a tie goes to the method needing the least data: "
            "uniform+random (mean rank 3.00)") in text
    default = resolve_prune(PruneConfig()).method.spec
    assert default != "uniform+random"
    assert f"`bnnprune run` defaults to {default}; uniform+random would follow" in text
    assert aggregate(records[:6])["recommendation"] is None  # one row: nothing to compare


def test_a_sweep_refuses_a_device_budget_and_its_cell_keys_ignore_the_unset_ones() -> None:
    from bnnprune.cells import Cell, cell_key

    cfg = SweepConfig()
    cfg.sweep.methods = ["target+wff"]
    cfg.prune.flash_budget = 40000
    with pytest.raises(ConfigError, match="prune.flash_budget: a sweep prunes to its BOPs"):
        resolve_sweep(cfg)
    cfg.prune.flash_budget = None
    key = cell_key(cfg, Cell("baseline", 0))
    assert not {"flash_budget", "ram_budget", "insn_budget", "mcu"} & set(key["prune"])
