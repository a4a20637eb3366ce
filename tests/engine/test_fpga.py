"""FINN-style dataflow estimate: folding legality, the cycle formula, pruned vs unpruned."""

import math

import pytest
import torch

from bnnprune.deploy import fpga
from bnnprune.engine import EngineError, compile_model
from bnnprune.models import build_model
from bnnprune.prune import apply_plan, plan_uniform

BCONV = fpga.MvauLayer("b", mw=64 * 3 * 3, mh=96, vectors=16 * 16, wbits=1, abits=1, obits=1)


def test_cycles_formula_on_a_hand_computed_layer():
    # 3x3 conv, 64 -> 96 channels, 16x16 output, PE 8, SIMD 32:
    # (96/8) * (576/32) * 256 = 12 * 18 * 256 = 55296 cycles per image
    assert fpga.cycles(BCONV, 8, 32) == 55296
    assert fpga.cycles(BCONV, 1, 1) == 96 * 576 * 256
    assert fpga.cycles(BCONV, 96, 576) == 256


def test_lut_and_bram_models_by_hand():
    # FINN-R LUTs, W = A = 1, MW = 576: mult 2*SIMD, adder tree 2*(2*SIMD - 1),
    # accumulator ceil(log2(576) + log2(1 + 1/576) + 1) = 11 bits
    pe, simd = 8, 32
    acc = math.ceil(math.log2(576) + math.log2(1 + 1 / 576) + 1)
    assert acc == 11
    want = int(300 + 1.1 * pe * (2 * simd + 2 * (2 * simd - 1) + acc))
    assert fpga.lut_estimate(BCONV, pe, simd) == want
    # weights: depth 576*96/256 = 216, width 256 bits > 36 and depth <= 512:
    # ceil(216/512) * ceil(256/36) = 1 * 8 RAMB18
    assert fpga.bram_estimate(BCONV, pe, simd) == 8
    assert fpga.bram_estimate(BCONV, pe, simd, "distributed") == 0
    lutram = pe * simd * 1 * math.ceil(216 / 64) + int(1.1 * pe * 2 * acc)  # weights, thresholds
    assert fpga.lut_estimate(BCONV, pe, simd, "distributed") - want in (lutram, lutram + 1)


@pytest.mark.parametrize("pe,simd", [(5, 32), (8, 7), (0, 1), (97, 1)])
def test_illegal_folding_is_refused(pe, simd):
    with pytest.raises(EngineError, match="does not divide"):
        fpga.cycles(BCONV, pe, simd)


@pytest.mark.parametrize("search", ["min-lut", "finn"])
@pytest.mark.parametrize("target", [10, 1000, 60000, 10**7])
def test_folding_search_is_legal_and_meets_reachable_targets(search, target):
    pe, simd = fpga.fold_for_target(BCONV, target, search)
    assert BCONV.mh % pe == 0 and BCONV.mw % simd == 0
    cyc = fpga.cycles(BCONV, pe, simd)
    if target > BCONV.vectors:  # reachable at all (fully unfolded: one vector per cycle)
        if search == "min-lut":
            assert cyc < target
            cheaper = [(p, s) for p in range(1, 97) for s in range(1, 577)
                       if 96 % p == 0 and 576 % s == 0 and fpga.cycles(BCONV, p, s) < target
                       and fpga.lut_estimate(BCONV, p, s) < fpga.lut_estimate(BCONV, pe, simd)]
            assert not cheaper
        elif target >= 96 * 576 * 256 // 36:  # FINN caps SIMD at 36 bits before using PE
            assert cyc < target


def _models(name: str, shape, target: float, round_to: int):
    torch.manual_seed(0)
    base = build_model(name, width=0.5, in_channels=shape[0], image_size=shape[1]).eval()
    plan = plan_uniform(base, shape, target, round_to=round_to)
    pruned = apply_plan(base, plan, "magnitude").model.eval()
    return compile_model(base, shape), compile_model(pruned, shape)


@pytest.mark.parametrize("name,shape", [("small", (1, 28, 28)), ("nin", (3, 32, 32))])
def test_pruned_model_needs_fewer_resources_at_the_same_fps(name, shape):
    base, pruned = _models(name, shape, 0.4, round_to=8)
    lb, lp = fpga.mvau_layers(base), fpga.mvau_layers(pruned)
    assert [l.name for l in lb] == [l.name for l in lp]
    assert sum(l.macs for l in lp if l.binary) < sum(l.macs for l in lb if l.binary)
    for fps in (500.0, 5000.0):
        eb = fpga.estimate(base, target_fps=fps)
        ep = fpga.estimate(pruned, target_fps=fps)
        assert eb.fps >= fps and ep.fps >= fps
        assert ep.luts < eb.luts and ep.brams <= eb.brams
        for le in ep.layers:
            assert le.layer.mh % le.pe == 0 and le.layer.mw % le.simd == 0
    budget = fpga.estimate(base, target_fps=5000.0)
    fit = fpga.max_fps_within(pruned, budget.luts)
    assert fit.luts <= budget.luts and fit.fps > budget.fps  # same LUTs -> faster


def test_same_pe_simd_caps_make_the_pruned_model_faster():
    base, pruned = _models("small", (1, 28, 28), 0.4, round_to=8)
    eb = fpga.estimate(base, pe_simd=(4, 32))
    ep = fpga.estimate(pruned, pe_simd=(4, 32))
    assert ep.fps > eb.fps
    text, result = fpga.report(pruned, base, pe_simd=(4, 32))
    assert "unpruned" in text and "not synthesis" in text
    assert result["ratios"]["fps"] == pytest.approx(ep.fps / eb.fps)


def test_bad_options():
    program = compile_model(build_model("small", width=0.25), (1, 28, 28))
    with pytest.raises(EngineError, match="exactly one"):
        fpga.estimate(program)
    with pytest.raises(EngineError, match="target fps"):
        fpga.estimate(program, target_fps=-1)
    with pytest.raises(EngineError, match="ram_style"):
        fpga.estimate(program, target_fps=10, ram_style="flash")
    with pytest.raises(EngineError, match="fp_bits"):
        fpga.mvau_layers(program, fp_bits=0)
    with pytest.raises(EngineError, match="search"):
        fpga.estimate(program, target_fps=10, search="greedy")
