"""CLI for speed: --target-latency values, --keep-fp, and `bench --json` for a model and its
pruned copy (fields and errors are checked, never the speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnnprune import engine
from bnnprune.cli import main
from bnnprune.config import ConfigError, PruneConfig
from bnnprune.engine.bench import program_bops, program_float_macs
from bnnprune.models import build_model
from bnnprune.prune import apply_plan, make_plan
from bnnprune.prune.resolve import resolve_prune

SHAPE = (1, 28, 28)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bnnprune: error:"), err
    assert match in err, err


@pytest.mark.parametrize("bad", ["0", "1", "-0.2", "1.5", "nan", "inf", "fast", ""])
def test_bad_target_latency_exits_2_with_one_line(bad: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["prune", str(tmp_path / "none.pt"), "-o", str(tmp_path / "o"),
            "--target-latency", bad], capsys, "strictly between 0 and 1")
    _fails(["run", "--target-latency", bad, "-o", str(tmp_path / "r")], capsys,
           "strictly between 0 and 1")
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_latency_target_in_a_config_is_checked() -> None:
    for bad, match in ((1.2, "strictly between"), (0.5, "target or uniform")):
        cfg = PruneConfig(target_latency=bad, policy="paper" if bad == 0.5 else "target")
        with pytest.raises(ConfigError, match=match):
            resolve_prune(cfg)
    with pytest.raises(ConfigError, match="latency_batch"):
        resolve_prune(PruneConfig(target_latency=0.5, latency_batch=0))
    resolve_prune(PruneConfig(target_latency=0.5, keep_fp=True))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    torch.manual_seed(0)
    model = build_model("small", width=0.25).eval()
    plan = make_plan(model, SHAPE, "uniform", target=0.5)
    pruned = apply_plan(model, plan, "magnitude").model.eval()
    d = tmp_path_factory.mktemp("bench")
    base, small = d / "base.bnn", d / "pruned.bnn"
    engine.save(engine.compile_model(model, SHAPE), base)
    engine.save(engine.compile_model(pruned, SHAPE), small)
    return base, small, plan.to_dict()


def test_bench_json_reports_the_pair(pair, capsys: pytest.CaptureFixture[str]) -> None:
    base, small, plan = pair
    assert main(["bench", str(small), "--baseline", str(base), "--json", "--repeats", "1"]) == 0
    res = json.loads(capsys.readouterr().out)  # nothing but JSON on stdout
    p = res["pair"]
    b, s = engine.load(base), engine.load(small)
    assert p["bops"] == {"pruned": program_bops(s), "unpruned": program_bops(b),
                         "ratio": pytest.approx(program_bops(s) / program_bops(b))}
    assert p["bops"]["pruned"] == plan["bops_after"] and p["bops"]["unpruned"] == plan[
        "bops_before"]
    assert (p["float_macs"]["pruned"], p["float_macs"]["unpruned"]) == (
        plan["float_macs_after"], plan["float_macs_before"]) == (
        program_float_macs(s), program_float_macs(b))
    assert set(p["batches"]) == {"1", "64"}
    for batch, e in p["batches"].items():
        assert e["ratio"] == pytest.approx(e["pruned_s"] / e["unpruned_s"])
        assert 0 < e["predicted_ratio"] and e["pruned_s"] > 0 and e["unpruned_s"] > 0
        for key in ("pruned", "unpruned"):
            bops, macs = p["bops"][key], p["float_macs"][key]
            lim = int(batch) * (bops / p["physical_limit"]["bmacs_per_s"]
                                + macs / p["physical_limit"]["fmacs_per_s"])
            assert e[f"{key}_limit_s"] == pytest.approx(lim)
            # a share only when the calibrations before and after the runs agree
            share = e[f"{key}_fraction_of_limit"]
            if p["physical_limit"]["consistent"]:
                assert share == pytest.approx(lim / e[f"{key}_s"])
            else:
                assert share is None
    limit = p["physical_limit"]
    assert len(limit["rounds"]) == 6 and limit["scheme"] in limit["schemes"]
    assert limit["bmacs_per_s"] == max(limit["schemes"].values())
    assert limit["counting_scheme"] in ("popcount", "csa") and limit["instruction_set"]


def test_bench_refuses_a_baseline_that_is_another_model(pair, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    base, _, _ = pair
    other = tmp_path / "other.bnn"  # same input shape, other ops
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    engine.save(engine.compile_model(net, SHAPE), other)
    _fails(["bench", str(other), "--baseline", str(base), "--json"], capsys,
           "not a channel-pruned copy")
