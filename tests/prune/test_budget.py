"""Device budgets: the planner's bytes are the C export's, a plan never exceeds its budget,
a budget below the policy's deepest cut is refused with that cut's bytes, and the CLI's
--flash-budget / --ram-budget parse and conflict with the other targets (exit 2, one line)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bnnprune.checkpoint import load_model, save_checkpoint
from bnnprune.cli import main
from bnnprune.deploy.cexport import c_footprint
from bnnprune.engine import compile_model
from bnnprune.models import build_model
from bnnprune.prune import apply_plan, get_policy, plan_manual
from bnnprune.prune.budget import Budget, check_budget, footprint_model

SHAPE = (1, 28, 28)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = build_model("small").eval()
    return model, footprint_model(model, SHAPE)


def _export_of(model, plan):
    return c_footprint(compile_model(apply_plan(model, plan, "magnitude").model.eval(), SHAPE))


def test_footprint_model_is_the_export_of_the_pruned_model(small) -> None:
    model, fm = small
    assert fm.footprint(fm.full) == c_footprint(compile_model(model, SHAPE))
    for keep in ([7, 33, 65, 9], [16, 64, 1, 128], [32, 1, 128, 40]):
        plan = plan_manual(model, SHAPE, dict(zip(("conv1", "bconv2", "bconv3", "bconv4"),
                                                  keep, strict=True)))
        assert fm.footprint(keep) == _export_of(model, plan), keep


@pytest.mark.parametrize("policy", ["uniform", "target"])
def test_half_the_flash_fits_and_is_not_over_pruned(small, policy) -> None:
    model, fm = small
    full = fm.footprint(fm.full)
    budget = Budget(flash=full.flash_bytes // 2)
    sens = None
    if policy == "target":
        from bnnprune.prune import compute_sensitivity

        g = torch.Generator().manual_seed(0)
        counts = {n: (torch.rand(m.weight.shape, generator=g) * 20).int()
                  for n, m in model.named_modules() if n in ("bconv2", "bconv3", "bconv4")}
        sens = compute_sensitivity(counts, model, steps=20)
    plan = get_policy(policy).plan(model, SHAPE, sens, budget=budget, footprint_model=fm)
    real = _export_of(model, plan)
    assert plan.reached and plan.budget["fits"] and plan.notes() == []
    assert real.to_dict() == plan.budget["after"]
    assert 0.9 * budget.flash <= real.flash_bytes <= budget.flash
    assert plan.budget["before"] == full.to_dict()


def test_a_ram_budget_and_both_at_once(small) -> None:
    model, fm = small
    full = fm.footprint(fm.full)
    ram_only = Budget(ram=int(full.ram_bytes * 0.6))
    plan = get_policy("uniform").plan(model, SHAPE, None, budget=ram_only, footprint_model=fm)
    assert _export_of(model, plan).ram_bytes <= ram_only.ram
    both = Budget(flash=int(full.flash_bytes * 0.3), ram=int(full.ram_bytes * 0.6))
    plan = get_policy("uniform").plan(model, SHAPE, None, budget=both, footprint_model=fm)
    real = _export_of(model, plan)
    assert real.flash_bytes <= both.flash and real.ram_bytes <= both.ram
    roomy = Budget(flash=full.flash_bytes, ram=full.ram_bytes)  # the unpruned model fits
    plan = get_policy("uniform").plan(model, SHAPE, None, budget=roomy, footprint_model=fm)
    assert list(plan.keep.values()) == fm.full


@pytest.mark.parametrize("kind", ["flash", "ram"])
def test_a_budget_below_the_deepest_cut_is_refused_with_its_bytes(small, kind) -> None:
    model, fm = small
    uniform = get_policy("uniform")
    with pytest.raises(ValueError, match=f"{kind} budget 10 B cannot be met") as e:
        uniform.plan(model, SHAPE, None, budget=Budget(**{kind: 10}), footprint_model=fm)
    least = int(re.search(r"at least ([\d,]+) B", str(e.value)).group(1).replace(",", ""))
    full = fm.footprint(fm.full).to_dict()[f"{kind}_bytes"]
    assert f"unpruned {full:,} B" in str(e.value) and 10 < least < full
    # the smallest reachable value is exactly that: it is planned, one byte less is refused
    plan = uniform.plan(model, SHAPE, None, budget=Budget(**{kind: least}), footprint_model=fm)
    assert plan.budget["after"][f"{kind}_bytes"] == least
    with pytest.raises(ValueError, match=f"at least {least:,} B"):
        uniform.plan(model, SHAPE, None, budget=Budget(**{kind: least - 1}), footprint_model=fm)


def test_budget_arguments_are_checked(small) -> None:
    model, fm = small
    for bad in (0, -5, 1.5, "abc", True):
        with pytest.raises(ValueError, match="whole number of bytes"):
            check_budget(bad)
    with pytest.raises(ValueError, match="flash or a RAM budget"):
        Budget()
    assert check_budget("4096") == 4096
    with pytest.raises(ValueError, match="not two"):
        get_policy("uniform").plan(model, SHAPE, None, 0.5, budget=Budget(flash=9000),
                                   footprint_model=fm)
    with pytest.raises(ValueError, match="footprint model"):
        get_policy("uniform").plan(model, SHAPE, None, budget=Budget(flash=9000))
    with pytest.raises(ValueError, match="target or uniform"):
        get_policy("paper").plan(model, SHAPE, None, budget=Budget(flash=9000),
                                 footprint_model=fm)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small) -> Path:
    model, _ = small
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"arch": model.arch, "state_dict": model.state_dict(),
                           "dataset": {"input_shape": list(SHAPE)}, "flips": None})
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bnnprune: error:"), err
    assert match in err, err


def test_cli_budget_flags_conflict_and_refuse(checkpoint, tmp_path, capsys) -> None:
    base = ["prune", str(checkpoint), "-o", str(tmp_path / "o"), "--criterion", "magnitude"]
    _fails([*base, "--flash-budget", "9000", "--target-bops", "0.4"], capsys,
           "give one of --target-bops, --flash-budget/--ram-budget/--insn-budget, not 2")
    _fails([*base, "--ram-budget", "9000", "--target-latency", "0.5"], capsys,
           "give one of --target-latency, --flash-budget/--ram-budget/--insn-budget, not 2")
    for bad in ("0", "-1", "1e4", "lots"):
        _fails([*base, "--flash-budget", bad], capsys, "whole number of bytes")
    _fails([*base, "--flash-budget", "9000", "--policy", "paper"], capsys,
           "--flash-budget/--ram-budget/--insn-budget need --policy target or uniform")
    _fails([*base, "--policy", "uniform", "--flash-budget", "100"], capsys,
           "flash budget 100 B cannot be met: the uniform policy reaches at least")
    assert not (tmp_path / "o").exists()


def test_cli_prunes_to_a_flash_budget(checkpoint, small, tmp_path, capsys) -> None:
    _, fm = small
    limit = fm.footprint(fm.full).flash_bytes // 2
    out = tmp_path / "o"
    assert main(["prune", str(checkpoint), "-o", str(out), "--criterion", "magnitude",
                 "--policy", "uniform", "--flash-budget", str(limit)]) == 0
    text = capsys.readouterr().out
    assert f"device budget flash <= {limit:,} B: the plan fits" in text
    assert re.search(r"^unpruned\s+80,768", text, re.M) and re.search(r"^pruned\s", text, re.M)
    pruned, ckpt = load_model(out / "model.pt")
    assert ckpt["meta"]["plan"]["budget"]["after"]["flash_bytes"] <= limit
    assert c_footprint(compile_model(pruned.eval(), SHAPE)).flash_bytes <= limit


def test_prune_once_checks_the_pruned_export_against_the_budget(small, monkeypatch) -> None:
    """A footprint model that under-counts is caught on the pruned model, not shipped."""
    from bnnprune.deploy.cexport import Footprint
    from bnnprune.prune import prune_once
    from bnnprune.prune.methods import Method

    model, fm = small
    limit = fm.footprint(fm.full).flash_bytes // 2
    plan, pruned = prune_once(model, Method("uniform", "magnitude"), SHAPE,
                              budget=Budget(flash=limit), footprint_model=fm)
    assert plan.budget["after"]["flash_bytes"] <= limit
    real = fm.footprint

    def halved(keep):
        fp = real(keep)
        return Footprint(fp.flash_bytes // 2, fp.ram_bytes, fp.input_bytes, fp.output_bytes)

    monkeypatch.setattr(fm, "footprint", halved)
    with pytest.raises(RuntimeError, match=r"flash [\d,]+ B > [\d,]+ B\): the footprint model"):
        prune_once(model, Method("uniform", "magnitude"), SHAPE,
                   budget=Budget(flash=limit), footprint_model=fm)
