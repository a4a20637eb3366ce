"""round_to="auto": channel counts at which the engine's kernels do less work (no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bnnprune.cli import build_parser, main
from bnnprune.config import ConfigError, PruneConfig, RunConfig, SweepConfig, load_config
from bnnprune.engine import kernels as K
from bnnprune.metrics import binary_channels
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d
from bnnprune.prune import (
    DEFAULT_THRESHOLD,
    DEFAULTS,
    analyze,
    apply_plan,
    get_policy,
    plan_uniform,
)
from bnnprune.prune.latency import kernel_counts
from bnnprune.prune.policies import check_round_to
from bnnprune.prune.resolve import plan_options, resolve_prune

SMALL = (1, 28, 28)


def test_conv_work_steps_where_the_kernels_pay() -> None:
    def work(kind: str, k: int, cin: int, cout: int) -> float:
        return K.conv_work(kind, k, k, cin, cout, 838)

    # binary 3x3 conv with 48 outputs: 9*21 = 189 input bits fill 3 patch-row words, 22 need 4
    assert work("bconv", 3, 21, 48) < work("bconv", 3, 22, 48)
    # outputs in 8-channel vectors: 17..24 cost the same, 16 less
    assert len({work("bconv", 1, 64, c) for c in range(17, 25)}) == 1
    assert work("bconv", 1, 64, 16) < work("bconv", 1, 64, 17)
    # a float conv: 8-channel vectors
    assert len({work("fconv", 3, 1, c) for c in range(9, 17)}) == 1
    assert work("fconv", 3, 1, 8) < work("fconv", 3, 1, 9)
    # a direct 1x1 conv pays whole 64-bit input words
    assert work("bconv", 1, 65, 32) == work("bconv", 1, 128, 32)
    assert work("bconv", 1, 64, 32) < work("bconv", 1, 65, 32)


def test_kernel_counts_of_the_small_model() -> None:
    model = build_model("small", in_channels=1, image_size=28)
    counts = kernel_counts(model, analyze(model, SMALL))
    # conv1 (float, 32 outputs in 8-channel vectors) feeds bconv2's dense 3x3 patch rows of
    # 9*k bits: multiples of 8, and the largest k that fits 1..4 words (floor(64m/9))
    assert counts[0] == (7, 8, 14, 16, 21, 24, 28, 32)
    # bconv4 feeds only the float classifier (every channel paid): its 8-channel vectors
    assert counts[3] == tuple(range(8, 129, 8))
    assert all(c[-1] == w for c, w in zip(counts, (32, 64, 128, 128), strict=True))


def test_auto_plan_keeps_kernel_counts_and_reaches_the_bops_target() -> None:
    torch.manual_seed(0)
    model = build_model("small", in_channels=1, image_size=28)
    allowed = kernel_counts(model, analyze(model, SMALL))
    plan = plan_uniform(model, SMALL, 0.5, round_to="auto")
    assert plan.reached and plan.round_to == "auto" and not plan.round_note
    for g, ok in zip(plan.groups, allowed, strict=True):
        assert plan.keep[g.name] in ok, (g.name, plan.keep[g.name], ok)
    assert plan.keep != plan_uniform(model, SMALL, 0.5, round_to=1).keep  # unrounded differ
    pruned = apply_plan(model, plan, "magnitude").model
    assert binary_channels(pruned) == {n: plan.keep[n] for n in binary_channels(pruned)}
    assert plan.to_dict()["round_to"] == "auto"


class Sine(nn.Module):
    """A BNN with an op the engine does not run (torch.sin on a real-valued path)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.bconv2 = BinaryConv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.bconv3 = BinaryConv2d(32, 32, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.bconv2(self.bn1(self.conv1(x))))
        x = torch.sin(self.bn3(self.bconv3(x)))
        return self.head(x.mean((2, 3)))


def test_auto_falls_back_to_no_rounding_when_the_engine_cannot_run_the_model() -> None:
    model = Sine()
    plan = plan_uniform(model, (1, 8, 8), 0.4, round_to="auto")
    assert plan.keep == plan_uniform(model, (1, 8, 8), 0.4, round_to=1).keep
    assert any("round_to auto" in n and "sin" in n for n in plan.notes()), plan.notes()


@pytest.mark.parametrize("bad", [0, -16, 1.5, float("nan"), float("inf"), "fast", "", True,
                                 None])
def test_bad_round_to_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="round_to must be"):
        check_round_to(bad)
    with pytest.raises(ConfigError, match="round_to"):
        resolve_prune(PruneConfig(round_to=bad))  # type: ignore[arg-type]


def test_round_to_defaults_and_config_values(tmp_path: Path) -> None:
    assert check_round_to("16") == 16 and check_round_to("auto") == "auto"
    assert RunConfig().prune.round_to == "auto"
    # a sweep compares methods at the counts they ask for (and keeps its committed keys)
    assert SweepConfig().prune.round_to == 1
    for text, want in (('"auto"', "auto"), ("16", 16)):
        p = tmp_path / f"c{want}.toml"
        p.write_text(f"[prune]\nround_to = {text}\n")
        assert load_config(p, RunConfig).prune.round_to == want
    p = tmp_path / "bad.toml"
    p.write_text("[prune]\nround_to = 1.5\n")
    with pytest.raises(ConfigError, match="round_to"):
        load_config(p, RunConfig)


def test_library_cli_and_config_share_one_rounding_default() -> None:
    """make_plan without round_to plans what `bnnprune run` and `bnnprune prune` plan: one
    default (prune.policies.DEFAULTS); PruneConfig may not import it, so it is held here."""
    assert PruneConfig().round_to == DEFAULTS.round_to == "auto"
    assert (PruneConfig().threshold, PruneConfig().keep_fp) == (DEFAULT_THRESHOLD, DEFAULTS.keep_fp)
    assert build_parser().parse_args(["prune", "m.pt", "-o", "o"]).round_to == DEFAULTS.round_to
    torch.manual_seed(0)
    model = build_model("small", in_channels=1, image_size=28)
    library = plan_uniform(model, SMALL, 0.5)
    run = get_policy("uniform").plan(model, SMALL, None, 0.5,
                                     options=plan_options(PruneConfig()))
    assert library.keep == run.keep and library.round_to == "auto"
    assert library.keep != plan_uniform(model, SMALL, 0.5, round_to=1).keep


@pytest.mark.parametrize("bad", ["0", "abc", "1.5", "-8"])
def test_bad_round_to_on_the_command_line_exits_2(bad: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["prune", str(tmp_path / "none.pt"), "-o", str(tmp_path / "o")],
                 ["run", "-o", str(tmp_path / "r")]):
        assert main([*argv, "--round-to", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "must be a whole number >= 1 or 'auto'" in err, err
