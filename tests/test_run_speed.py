"""`bnnprune run`'s engine section: every model compiled to the packed engine, timed
interleaved at batch 1 and 64, checked against PyTorch, and sized as its C export. Timings are
never asserted (the machine may be busy): only their structure and consistency."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.cli import main
from bnnprune.config import RunConfig
from bnnprune.data import load_from_config
from bnnprune.engine import compile_model
from bnnprune.machine import ISA_FLAGS, cpu_name, isa_flags, isa_label
from bnnprune.models import build_model
from bnnprune.pipeline import engine_sections, run_pipeline
from bnnprune.report.markdown import write_report
from bnnprune.speed import BATCHES, agreement


def _cfg() -> RunConfig:
    cfg = RunConfig()
    cfg.model.name, cfg.model.width = "small", 0.25
    cfg.data.name, cfg.data.train_subset, cfg.data.test_subset = "synthetic", 256, 64
    cfg.train.epochs, cfg.train.track_last, cfg.train.batch_size = 2, 1, 64
    cfg.prune.retrain_epochs, cfg.prune.budget_baseline = 1, False
    cfg.prune.compare = ["target+random"]
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    res = run_pipeline(_cfg(), out)
    write_report(res, out)
    return out, res


def test_every_model_is_timed_interleaved_with_ratios_to_the_baseline(run):
    out, res = run
    labels = ["baseline (unpruned)", res["method"], "target+random"]
    assert [m["label"] for m in res["engine"]["models"]] == labels
    speed = res["speed"]
    assert [m["label"] for m in speed["models"]] == labels
    batches = [str(b) for b in BATCHES]
    assert list(speed["repeats"]) == batches and speed["repeats"]["1"] >= speed["repeats"]["64"]
    base = speed["models"][0]["latency_s"]
    for m in speed["models"]:
        assert list(m["latency_s"]) == list(m["latency_ratio"]) == batches
        for b in batches:
            assert m["latency_s"][b] > 0
            assert m["latency_ratio"][b] == pytest.approx(m["latency_s"][b] / base[b])
    assert speed["models"][0]["latency_ratio"] == {b: 1.0 for b in batches}
    assert speed["cpu"] == cpu_name() and speed["isa"] == isa_flags()
    assert speed["threads"] >= 1 and speed["cpu_seconds"] > 0
    assert json.loads((out / "results.json").read_text())["speed"] == speed


def test_engine_records_bops_agreement_and_the_c_exports_bytes(run, capsys):
    out, res = run
    engine = res["engine"]
    assert engine["images_checked"] == 64  # the whole (subset) test set, fewer than the cap
    rows = {r["label"]: r for r in (res["baseline"], res["pruned"], *res["compared"])}
    for m in engine["models"]:
        assert m["bops"] == rows[m["label"]]["bops"]  # the engine counts what metrics counts
        assert m["agreement"] == 1.0  # the engine computes the model's own predictions
        assert m["c_export"] is None
    # flash and RAM equal what `bnnprune export --format c` prints for the same checkpoint
    for label, folder in ((engine["models"][0]["label"], "baseline"),
                          (engine["models"][1]["label"], "pruned")):
        capsys.readouterr()
        assert main(["export", str(out / folder / "model.pt"), "--format", "c",
                     "-o", str(out / f"c-{folder}")]) == 0
        row = next(line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("model "))
        flash, ram = (int(v.replace(",", "")) for v in row.split()[1:3])
        m = next(m for m in engine["models"] if m["label"] == label)
        assert (m["flash_bytes"], m["ram_bytes"]) == (flash, ram)
    assert engine["models"][1]["flash_bytes"] < engine["models"][0]["flash_bytes"]


def test_report_shows_speed_next_to_accuracy_and_plots_it(run):
    out, res = run
    report = (out / "report.md").read_text()
    acc = report.index("## Accuracy, BOPs and memory")
    speed = report.index("## Engine speed and C footprint")
    assert acc < speed < report.index("## Channels per binary layer")
    assert "**Speed:**" in report and isa_label(res["speed"]["isa"]) in report
    row = next(line for line in report[speed:].splitlines()
               if line.startswith(f"| {res['method']} |"))
    r1 = res["speed"]["models"][1]["latency_ratio"]["1"]
    assert f"| {r1:.3f} |" in row and f"{res['engine']['models'][1]['flash_bytes']:,} B" in row
    assert "accuracy_vs_latency.png" in report
    assert (out / "accuracy_vs_latency.png").stat().st_size > 1000


def test_speed_off_measures_nothing_and_the_report_says_nothing(tmp_path):
    cfg = _cfg()
    cfg.prune.speed = False
    ds = load_from_config(cfg.data, 0)
    assert engine_sections(cfg, ds, [("m", nn.Linear(1, 1))], lambda s: None) == {
        "engine": None, "speed": None}  # the model is never compiled
    res = {**_results_without_speed(), "engine": None, "speed": None}
    write_report(res, tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "Engine speed" not in report and "**Speed:**" not in report
    assert not (tmp_path / "accuracy_vs_latency.png").exists()


def _results_without_speed():
    """The smallest results.json a report renders: one baseline and one pruned model."""
    channels = {"bconv2": 16}
    rec = {"label": "baseline (unpruned)", "test_acc": 0.5, "bops": 100, "float_macs": 10,
           "binary_params": 64, "float_params": 8, "memory_bytes": 40, "channels": channels}
    pruned = {**rec, "label": "uniform+wff", "bops": 50, "channels": {"bconv2": 8},
              "plan": {"policy": "uniform"}, "round": 1}
    return {"config": RunConfig().to_dict(), "baseline": rec, "pruned": pruned,
            "rounds": [pruned], "compared": [], "unpruned_budget": None,
            "dataset": {"name": "synthetic", "train": 1, "test": 1, "input_shape": [1, 28, 28]},
            "machine": {"cpu": "x", "logical_cores": 1, "torch_threads": 1, "device": "cpu",
                        "platform": "p", "torch": "t"},
            "method": "uniform+wff", "retrain_epochs": 1, "wall_seconds": 1.0,
            "bops_reduction": 0.5, "accuracy_drop": 0.0, "sensitivity": None}


def test_a_model_the_engine_cannot_compile_leaves_the_run_intact(tmp_path):
    cfg = _cfg()
    ds = load_from_config(cfg.data, 0)
    odd = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(ds.input_shape)), 10), nn.GELU())
    logged = []
    got = engine_sections(cfg, ds, [("baseline (unpruned)", odd), ("uniform+wff", odd)],
                          logged.append)
    assert got["speed"] is None and "GELU" in got["engine"]["error"]
    assert any("not measured" in line for line in logged)
    write_report({**_results_without_speed(), **got}, tmp_path)
    assert "Not measured: the engine cannot compile the model" in (
        tmp_path / "report.md").read_text()


def test_agreement_counts_the_images_where_the_top1_classes_match():
    torch.manual_seed(0)
    a = build_model("small", width=0.25, in_channels=1, image_size=28).eval()
    b = build_model("small", width=0.25, in_channels=1, image_size=28).eval()
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    program = compile_model(a, (1, 28, 28))
    assert agreement(a, program, x) == 1.0
    with torch.no_grad():
        want = (a(torch.from_numpy(x)).argmax(1) == b(torch.from_numpy(x)).argmax(1)).float()
    assert agreement(b, program, x) == pytest.approx(want.mean().item())
    assert agreement(b, program, x) < 1.0  # two differently initialised models disagree


def test_isa_flags_and_their_label():
    flags = isa_flags()
    assert set(flags) in (set(), set(ISA_FLAGS))
    assert isa_label({"avx2": True, "popcnt": True, "avx512f": False}) == "avx2 popcnt; no avx512f"
    assert isa_label({"avx512f": False}) == "no avx512f"
    assert isa_label({}) == "instruction-set flags unknown"


def test_run_no_speed_flag_turns_the_section_off():
    from bnnprune.cli import _experiment_config, build_parser

    args = build_parser().parse_args(["run", "--no-speed", "-o", "x"])
    assert _experiment_config(args, RunConfig).prune.speed is False
    assert RunConfig().prune.speed is True  # the default: measured
