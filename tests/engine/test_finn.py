"""FINN's own compiler front end (finn-plus in .venv-finn) on the FINN form of the export with
the 8-bit input quantizer: hardware layers for every convolution, FINN's execution equal to the
engine bit for bit on real images, and our cost model checked against FINN's per layer; NIN,
its average pool summed in integers, as one dataflow; a float op between hardware layers as
dataflow segments."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from bnnprune.deploy import fpga
from bnnprune.deploy.finn_run import compare_bits, finn_python, run_finn
from bnnprune.engine import EngineError, compile_model
from bnnprune.models import build_model
from bnnprune.nn import BinaryConv2d
from bnnprune.prune import apply_plan, plan_uniform

from .conftest import dyadic_fp_weights, dyadic_input, randomize_bn

SHAPE = (1, 28, 28)
INPUT_SCALE = 1 / 128  # the 8-bit input quantizer: pixels (p - 128) / 128 are its integers
TARGET_FPS = 1000.0
CLOCK_MHZ = 200.0

if finn_python() is None:
    if os.environ.get("CI"):
        pytest.fail("CI must run FINN: scripts/setup.sh --fpga makes .venv-finn",
                    pytrace=False)
    pytest.skip("FINN is not installed (bash scripts/setup.sh --fpga)", allow_module_level=True)


def _images(n: int) -> np.ndarray:
    """Real Fashion-MNIST test images as (p - 128) / 128: exact in float32, so the float first
    layer sums to the same value in FINN's Im2Col + MatMul as in the engine."""
    from bnnprune.data import load_dataset

    try:
        ds = load_dataset("fashion-mnist", test_subset=n)
    except Exception as e:  # noqa: BLE001 - DatasetError and friends
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Fashion-MNIST is not available: {e}")
    return (ds.test_x.numpy().astype(np.float32) - 128.0) / 128.0


@pytest.fixture(scope="module")
def small():
    """The zoo small model (width 0.25, -1 border as FINN pads), random BatchNorm with negative
    and zero gammas, full-precision weights on a 1/16 grid, and a uniformly pruned copy."""
    torch.manual_seed(0)
    base = build_model("small", width=0.25, pad_value=-1.0)
    base = dyadic_fp_weights(randomize_bn(base, seed=1), seed=1).eval()
    pruned = apply_plan(base, plan_uniform(base, SHAPE, 0.4, round_to=4), "magnitude").model
    return compile_model(base, SHAPE), compile_model(pruned.eval(), SHAPE)


@pytest.fixture(scope="module")
def finn_small(small):
    """FINN on the FINN form with the 8-bit input quantizer, executed on 6 real images."""
    x = _images(6)
    return x, run_finn(small[0], images=x, target_fps=TARGET_FPS, clock_mhz=CLOCK_MHZ,
                       input_scale=INPUT_SCALE)


def test_finn_maps_every_conv_to_hardware(small, finn_small):
    program = small[0]
    stages = finn_small[1].report["stages"]
    assert not any("Pad" == op for ops in stages.values() for op in ops)  # FINN took the border
    df = stages["dataflow"]
    n_conv = sum(op.kind in ("bconv", "fconv") and not program.values[op.inputs[0]].flat
                 for op in program.ops)
    n_pad = sum(op.kind in ("bconv", "fconv") and any(op.attrs["padding"]) for op in program.ops)
    n_pool = sum(op.kind == "maxpool_bits" for op in program.ops)
    assert sum(op.startswith("MVAU") for op in df) == n_conv == 4
    assert sum(op.startswith("FMPadding") for op in df) == n_pad == 4
    assert sum(op.startswith("Pool") for op in df) == n_pool == 2
    assert sum(op.startswith("ConvolutionInputGenerator") for op in df) == n_pad + n_pool
    mvaus = [(l["inputDataType"], l["weightDataType"]) for l in finn_small[1].layers
             if l["op_type"].startswith("MVAU")]
    assert mvaus == [("INT8", "INT8")] + [("BINARY", "BIPOLAR")] * 3
    # what stays outside: the float head (the last layer's float epilogue, pool, classifier)
    outside = finn_small[1].report["outside"]
    assert outside.count("MatMul") == 1 and not {"Pad", "Im2Col"} & set(outside)


def _assert_finn_equals_engine(program, x, result) -> np.ndarray:
    """FINN's streamlined and hardware-layer graphs: every binary intermediate equals the
    engine's bit for bit, and the logits agree; returns the engine's logits."""
    got = compare_bits(program, x, result)
    n_bits = sum(program.intermediates(x)[f"{v.source}:bits"].size
                 for v in program.values if v.kind == "bits" and v.source)
    assert got == {"streamlined": 0, "streamlined_bits": n_bits, "hw": 0, "hw_bits": n_bits}
    ref = program(x)
    for g in ("streamlined", "hw"):
        np.testing.assert_allclose(result.outputs[f"{g}_output"], ref, rtol=1e-4, atol=1e-4)
    return ref


def test_finn_execution_equals_the_engine_bit_for_bit(small, finn_small):
    program = small[0]
    x, result = finn_small
    ref = _assert_finn_equals_engine(program, x, result)
    for g in ("streamlined", "hw"):
        assert (result.outputs[f"{g}_output"].argmax(1) == ref.argmax(1)).all()


def test_compare_bits_catches_a_flipped_bit(small, finn_small):
    x, result = finn_small
    bad = {k: v.copy() for k, v in result.outputs.items()}
    bad["hw_bits_02"].flat[7] = 1 - bad["hw_bits_02"].flat[7]
    got = compare_bits(small[0], x, type(result)(result.report, bad))
    assert got["hw"] == 1 and got["streamlined"] == 0
    del bad["hw_bits_04"]
    with pytest.raises(EngineError, match="hw graph has 4 one-bit tensors"):
        compare_bits(small[0], x, type(result)(result.report, bad))


def test_folding_meets_the_target_and_pruning_saves(small, finn_small):
    full = finn_small[1]
    target = int(CLOCK_MHZ * 1e6 / TARGET_FPS)
    assert full.report["target_cycles"] == target
    assert full.cycles < target and full.fps() > TARGET_FPS
    pruned = run_finn(small[1], target_fps=TARGET_FPS, clock_mhz=CLOCK_MHZ,
                      input_scale=INPUT_SCALE)
    assert pruned.cycles < target
    assert pruned.total("LUT") < full.total("LUT")


def test_cost_model_against_finn_per_layer(small, finn_small):
    """bnnprune.deploy.fpga's LUT/BRAM formulas at FINN's own folding of each binary MVAU:
    the LUT error per layer is stated and bounded, BRAM18 counts agree."""
    program = small[0]
    ours = [l for l in fpga.mvau_layers(program) if l.binary]
    finn = [l for l in finn_small[1].layers
            if l["op_type"].startswith("MVAU") and l["weightDataType"] == "BIPOLAR"]
    assert [(l.mw, l.mh) for l in ours] == [(f["MW"], f["MH"]) for f in finn]
    for l, f in zip(ours, finn):
        # FINN's MVAUs here leave thresholds to standalone Thresholding layers
        layer = fpga.MvauLayer(l.name, l.mw, l.mh, l.vectors, 1, 1, None)
        luts = fpga.lut_estimate(layer, f["PE"], f["SIMD"])
        assert fpga.cycles(layer, f["PE"], f["SIMD"]) == f["cycles"], l.name
        assert abs(luts - f["LUT"]) / f["LUT"] <= 0.01, (l.name, luts, f["LUT"])
        assert fpga.bram_estimate(layer, f["PE"], f["SIMD"]) == f["BRAM_18K"], l.name


def test_missing_finn_is_a_clear_error(small, tmp_path):
    with pytest.raises(EngineError, match="setup.sh --fpga"):
        run_finn(small[0], python=tmp_path / "no-python")
    with pytest.raises(EngineError, match="FINN pads binary streams with 0"):
        plus = compile_model(build_model("small", width=0.25).eval(), SHAPE)
        run_finn(plus)


def _float_pool_between_binary_layers():
    """A float op between binary layers that the FINN form cannot sum in integers: a
    ceil-mode average pool of a binary layer's BatchNorm output before the next sign."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
        BinaryConv2d(4, 8, 3, padding=1, pad_value=-1.0), nn.BatchNorm2d(8),
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
        BinaryConv2d(8, 8, 3, padding=1, pad_value=-1.0), nn.BatchNorm2d(8),
        BinaryConv2d(8, 8, 1, pad_value=-1.0), nn.BatchNorm2d(8),
        nn.Flatten(), nn.Linear(8 * 5 * 5, 3))
    return compile_model(dyadic_fp_weights(randomize_bn(model, seed=2), seed=2).eval(),
                         (1, 8, 8))


def test_a_float_op_between_binary_layers_is_named_or_segmented():
    """FINN's single dataflow cannot hold a float op between hardware layers: refused with
    the ops named; segments=True folds one dataflow on each side, FINN's execution still
    equal to the engine bit for bit."""
    program = _float_pool_between_binary_layers()
    with pytest.raises(EngineError, match=r"FINN cannot map the ops between its hardware "
                                          r"layers: [^;]*\bAveragePool\b"):
        run_finn(program)
    x = dyadic_input((2, 1, 8, 8), seed=3).numpy()
    result = run_finn(program, images=x, segments=True)
    rep = result.report
    assert rep["segments"] == 2 and [g.count("AveragePool") for g in rep["between"]] == [1]
    assert sorted({l["segment"] for l in result.layers}) == [0, 1]
    assert not {"MVAU", "Thresholding", "FMPadding"} & set(rep["between"][0])
    got = compare_bits(program, x, result)
    assert got["streamlined"] == got["hw"] == 0 and got["hw_bits"] > 0


@pytest.fixture(scope="module")
def nin():
    """The zoo NIN at width 0.25 on 1x28x28 (-1 border, random BatchNorm with zero and negative
    gammas, full-precision weights on a 1/16 grid): its AvgPool2d(3, 2, 1) of a binary layer's
    float output sits between binary layers."""
    torch.manual_seed(0)
    model = build_model("nin", width=0.25, in_channels=1, image_size=28, pad_value=-1.0)
    return compile_model(dyadic_fp_weights(randomize_bn(model, seed=1), seed=1).eval(), SHAPE)


def test_nin_is_one_dataflow_and_equals_the_engine(nin):
    """NIN's average pool before a sign, in FINN's form (the layer's integer code, zero-padded
    window sums, a threshold at 0), becomes FINN hardware: elementwise Mul/Add, FMPadding,
    a sliding window and a VVAU; every convolution but the float classifier is an MVAU of one
    dataflow, and FINN's execution is bit-exact on real images."""
    program = nin
    x = _images(2)
    result = run_finn(program, images=x, target_fps=TARGET_FPS, clock_mhz=CLOCK_MHZ,
                      input_scale=INPUT_SCALE)
    rep = result.report
    assert rep["segments"] == 1 and rep["between"] == []
    assert not any("AveragePool" in ops for ops in rep["stages"].values())
    df = rep["stages"]["dataflow"]
    n_avg = sum(op.kind == "avgpool" for op in program.ops)
    assert sum(op.startswith("VVAU") for op in df) == n_avg == 1
    assert [op for op in df if op.startswith("Elementwise")] == \
        ["ElementwiseMul_hls", "ElementwiseAdd_hls"]
    vvau = next(l for l in result.layers if l["op_type"].startswith("VVAU"))
    assert vvau["weightDataType"] == "INT2"
    mvaus = [l["inputDataType"] for l in result.layers if l["op_type"].startswith("MVAU")]
    n_bin = sum(op.kind == "bconv" for op in program.ops)
    assert mvaus == ["INT8"] + ["BINARY"] * n_bin
    assert result.cycles < rep["target_cycles"]
    _assert_finn_equals_engine(program, x, result)


def test_segments_leave_a_contiguous_dataflow_alone(small, finn_small):
    """small has no float op between hardware layers: segments=True gives FINN's single
    dataflow with the same layers, folding and estimates."""
    seg = run_finn(small[0], target_fps=TARGET_FPS, clock_mhz=CLOCK_MHZ,
                   input_scale=INPUT_SCALE, segments=True)
    assert seg.report["segments"] == 1 and seg.report["between"] == []
    assert seg.layers == finn_small[1].layers
