"""Instruction budgets on a Cortex-M4: the table's counts are the firmware's, split by layer
phase (to the few instructions float layers spend on branches that follow the data); a
second build comes from the cache; a plan within an instruction budget exports a model whose
instructions per inference, counted under qemu, fit it and whose logits equal the engine's;
a budget below the deepest cut is refused with that cut's count; the CLI's --insn-budget /
--mcu parse and conflict (exit 2, one line)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bnnprune.checkpoint import save_checkpoint
from bnnprune.cli import main
from bnnprune.deploy import mcu
from bnnprune.engine import compile_model
from bnnprune.engine.latency import program_at
from bnnprune.models import build_model
from bnnprune.prune import get_policy, prune_once
from bnnprune.prune.budget import Budget, footprint_model
from bnnprune.prune.channels import channels_at, value_expressions
from bnnprune.prune.insns import DEFAULT_INSN_STEP, insn_table
from bnnprune.prune.methods import Method

from .test_mcu import _need_tools

pytestmark = pytest.mark.slow  # firmware built and run under qemu-system-arm

SHAPE = (1, 28, 28)
M4 = "cortex-m4"
STEP = DEFAULT_INSN_STEP  # 16: grids [8], [16], [16, 32], [16, 32], four firmware runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A quarter-width ``small`` (8, 16, 32, 32 channels) and its M4 footprint model."""
    _need_tools()
    torch.manual_seed(0)
    model = build_model("small", width=0.25).eval()
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNNPRUNE_CACHE_DIR", str(cache))
        fm = footprint_model(model, SHAPE, mcu=M4, insn_step=STEP)
    return model, fm, cache


def _counted(model, keep) -> int:
    """Instructions per inference of ``model``'s program at ``keep`` channels, by qemu."""
    fm_program = compile_model(model, SHAPE)
    from bnnprune.prune.graph import analyze

    space = analyze(model, SHAPE)
    removed = [g.channels - k for g, k in zip(space.groups, keep, strict=True)]
    counts = [channels_at(e, removed) for e in value_expressions(space, fm_program)]
    return mcu.count_ops(program_at(fm_program, counts), mcu.get_target(M4)).total


def test_the_table_sums_the_firmware_phases(tiny) -> None:
    model, fm, _ = tiny
    t = fm.insn
    assert t.grids == [[8], [16], [16, 32], [16, 32]] and t.runs == 4
    for keep in ([8, 16, 16, 32], [8, 16, 32, 16], [8, 16, 32, 32]):
        # the same shapes, other random weights: float layers branch on their data, so a
        # few instructions differ (prune_once plans again below any such overrun)
        counted = _counted(model, keep)
        assert abs(t.insns(keep) - counted) <= 1e-4 * counted, keep
    with pytest.raises(ValueError, match="no instruction count measured"):
        t.insns([8, 16, 24, 32])


def test_a_second_build_reads_the_cache(tiny) -> None:
    model, fm, cache = tiny
    again = insn_table(model, SHAPE, M4, step=STEP, cache_dir=cache / "mcu")
    assert again.runs == 0 and again.cache_file == fm.insn.cache_file
    assert again.insns(again.full) == fm.insn.insns(fm.insn.full)
    assert Path(fm.insn.cache_file).name == f"{M4}.json"


def test_a_plan_within_an_instruction_budget_runs_within_it(tiny, tmp_path) -> None:
    model, fm, _ = tiny
    full, least = fm.insn.insns(fm.full), fm.insn.insns([8, 16, 16, 16])
    budget = Budget(insns=(full + least) // 2, mcu=M4)
    plan, pruned = prune_once(model, Method("uniform", "magnitude"), SHAPE, budget=budget,
                              footprint_model=fm)
    assert plan.budget["fits"] and plan.budget["insns"]["after"] <= budget.insns
    assert plan.budget["insns"]["before"] == full
    cost = mcu.measure(compile_model(pruned.eval(), SHAPE), mcu.get_target(M4))
    assert cost.exact and cost.insns <= budget.insns < full


def test_an_unreachable_instruction_budget_is_refused_with_the_least(tiny) -> None:
    model, fm, _ = tiny
    uniform = get_policy("uniform")
    with pytest.raises(ValueError, match="insns budget 10 instructions on cortex-m4 cannot "
                                         "be met") as e:
        uniform.plan(model, SHAPE, None, budget=Budget(insns=10, mcu=M4), footprint_model=fm)
    least = int(re.search(r"at least ([\d,]+) instructions", str(e.value)).group(1)
                .replace(",", ""))
    assert least == fm.insn.insns([8, 16, 16, 16])
    plan = uniform.plan(model, SHAPE, None, budget=Budget(insns=least, mcu=M4),
                        footprint_model=fm)
    assert plan.budget["insns"]["after"] == least
    with pytest.raises(ValueError, match=f"at least {least:,} instructions"):
        uniform.plan(model, SHAPE, None, budget=Budget(insns=least - 1, mcu=M4),
                     footprint_model=fm)
    no_table = footprint_model(model, SHAPE)
    with pytest.raises(ValueError, match="instruction table"):
        uniform.plan(model, SHAPE, None, budget=Budget(insns=least, mcu=M4),
                     footprint_model=no_table)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("bnnprune: error:"), err
    assert match in err, err


def test_cli_insn_budget(tiny, tmp_path, capsys, monkeypatch) -> None:
    model, fm, cache = tiny
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, {"arch": model.arch, "state_dict": model.state_dict(),
                           "dataset": {"input_shape": list(SHAPE)}, "flips": None})
    base = ["prune", str(ckpt), "-o", str(tmp_path / "o"), "--criterion", "magnitude"]
    flags = "--flash-budget/--ram-budget/--insn-budget"
    _fails([*base, "--insn-budget", "9000", "--mcu", M4, "--target-bops", "0.4"], capsys,
           f"give one of --target-bops, {flags}, not 2")
    _fails([*base, "--insn-budget", "9000"], capsys, "--insn-budget with --mcu")
    _fails([*base, "--mcu", M4], capsys, "give both")
    _fails([*base, "--insn-budget", "9000", "--mcu", "cortex-m9"], capsys,
           "unknown target 'cortex-m9'")
    _fails([*base, "--insn-budget", "1.5e6", "--mcu", M4], capsys, "whole number of instr")
    _fails([*base, "--insn-budget", "10", "--mcu", M4, "--policy", "paper"], capsys,
           f"{flags} need --policy")
    monkeypatch.setenv("BNNPRUNE_CACHE_DIR", str(cache))
    # the CLI's table (the default step, this fixture's) comes from the cache
    full, least = fm.insn.insns(fm.full), fm.insn.insns([8, 16, 16, 16])
    mid = (full + least) // 2
    assert main([*base, "--policy", "uniform", "--insn-budget", str(mid), "--mcu", M4]) == 0
    cap = capsys.readouterr()
    assert f"device budget insns <= {mid:,} instructions: the plan fits" in cap.out
    after = int(re.search(rf"on {M4} \(counted under qemu emulation, not cycles\): "
                          rf"{full:,} -> ([\d,]+)", cap.out).group(1).replace(",", ""))
    assert least <= after <= mid
    assert "firmware run" not in cap.out + cap.err


def test_an_overrun_of_the_pruned_model_plans_again_below_it(tiny, monkeypatch) -> None:
    """Real weights can branch into a few more instructions than the table's random ones:
    prune_once plans again below the overrun instead of shipping the model over."""
    import bnnprune.prune.budget as budget_mod

    model, fm, _ = tiny
    # just under the unpruned count: the first plan keeps the most channels that fit, so a
    # smaller plan is left for the second (a mid-way budget can land on the deepest cut)
    budget = Budget(insns=fm.insn.insns(fm.full) - 1, mcu=M4)
    first = prune_once(model, Method("uniform", "magnitude"), SHAPE, budget=budget,
                       footprint_model=fm).plan
    over = budget.insns - first.budget["insns"]["after"] + 1  # the first plan, 1 over
    real, calls = budget_mod.check_fit, []

    def overrun_once(pruned, shape, b):
        calls.append(b)
        if len(calls) == 1:
            raise budget_mod.OverBudget("over", {"insns": over})
        return real(pruned, shape, b)

    monkeypatch.setattr(budget_mod, "check_fit", overrun_once)
    plan = prune_once(model, Method("uniform", "magnitude"), SHAPE, budget=budget,
                      footprint_model=fm).plan
    assert len(calls) == 2 and plan.budget["limits"] == {"insns": budget.insns - over}
    assert plan.budget["insns"]["after"] < first.budget["insns"]["after"]
    monkeypatch.setattr(budget_mod, "check_fit", lambda *a: (_ for _ in ()).throw(
        budget_mod.OverBudget("over", {"flash": 1})))
    with pytest.raises(budget_mod.OverBudget):  # bytes do not depend on data: no second try
        prune_once(model, Method("uniform", "magnitude"), SHAPE, budget=budget,
                   footprint_model=fm)
