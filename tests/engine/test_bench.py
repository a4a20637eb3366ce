"""compare_latency (the pruned-vs-unpruned measurement behind `bnnprune bench` and the sweep)
and the roofline probe's chains."""

from __future__ import annotations

import numpy as np
import pytest

from bnnprune.engine import EngineError, compile_model
from bnnprune.engine.bench import (
    _csa_probe,
    _xpc_probe,
    batch_repeats,
    compare_latency,
    format_limit,
    interleaved_latencies,
    limit_summary,
    program_bops,
)
from bnnprune.engine.kernels.intrinsics import CSA_GROUP, CSA_LANES, XPC_CHAINS, XPC_LANES
from bnnprune.models import build_model


def _program(width: float, image_size: int = 28):
    model = build_model("small", width=width, in_channels=1, image_size=image_size)
    return compile_model(model, (1, image_size, image_size))


def test_compare_latency_reports_medians_and_the_bops_ratio() -> None:
    small, big = _program(0.25), _program(0.5)
    r = compare_latency(small, big, batch=2, repeats=3)
    assert r["batch"] == 2
    assert r["bops"] == program_bops(small) and r["baseline_bops"] == program_bops(big)
    assert r["bops_ratio"] == pytest.approx(program_bops(small) / program_bops(big))
    assert 0 < r["bops_ratio"] < 1
    assert r["latency_s"] > 0 and r["baseline_latency_s"] > 0
    assert r["latency_ratio"] == pytest.approx(r["latency_s"] / r["baseline_latency_s"])


def test_compare_latency_refuses_another_input_shape() -> None:
    with pytest.raises(EngineError, match="input shape"):
        compare_latency(_program(0.25), _program(0.25, image_size=32))


def test_interleaved_latencies_give_one_median_per_program() -> None:
    programs = [_program(0.5), _program(0.25), _program(0.5)]
    medians = interleaved_latencies(programs, batch=2, repeats=3)
    assert len(medians) == 3 and all(m > 0 for m in medians)
    with pytest.raises(EngineError, match="input shapes"):
        interleaved_latencies([programs[0], _program(0.25, image_size=32)])


def test_batch_repeats_takes_a_quarter_beyond_batch_one() -> None:
    assert [batch_repeats(20, b) for b in (1, 64)] == [20, 5]
    assert batch_repeats(4, 64) == 3  # never fewer than three timed runs


def test_xor_popcount_peak_probe_counts_what_it_runs() -> None:
    """The roofline probe's chains do real XOR-popcounts (nothing hoisted or dropped): its
    result equals the same recurrence in NumPy."""
    consts = [0x5DEECE66D, -0x2545F4914F6CDD1D, 0x9E3779B97F4A7C15 >> 1, 7]
    lanes = np.arange(XPC_LANES)
    w = np.array([consts[e % 4] + e // 4 for e in lanes], np.int64).view(np.uint64)
    reps, seed = 37, 1
    expect = np.uint64(0)
    for i in range(XPC_CHAINS):
        mult = 2 * lanes + 1
        mult[0] = 2 * i + 1
        acc = np.uint64(seed) * mult.astype(np.uint64)
        for _ in range(reps):
            acc = acc + np.array([bin(int(v)).count("1") for v in acc ^ w], np.uint64)
        expect += acc.sum()
    out = np.zeros(2, np.int64)
    _xpc_probe(reps, out)
    assert out[0] == np.int64(expect)  # thread t runs from seed t + 1


def test_carry_save_probe_counts_what_it_runs() -> None:
    """The carry-save probe's result is the exact bit count of every word it XORs (its bit
    planes counted at the end): nothing hoisted or dropped."""
    consts = np.array([[(0x9E3779B97F4A7C15 * (8 * j + e + 1)) % 2**63
                        for e in range(CSA_LANES)] for j in range(CSA_GROUP)], np.uint64)
    reps, seed = 13, 2
    s = np.uint64(seed) * (2 * np.arange(CSA_LANES, dtype=np.uint64) + np.uint64(1))
    expect = 0
    for _ in range(reps):
        expect += int(np.unpackbits((s[None, :] ^ consts).view(np.uint8)).sum())
        s = s + np.uint64(1)
    out = np.zeros(2, np.int64)
    _csa_probe(reps, out)
    assert out[1] == expect  # thread t runs from seed t + 1


def _round(bmacs: float, fmacs: float) -> dict:
    return {"bmacs_per_s": bmacs, "fmacs_per_s": fmacs, "scheme": "csa",
            "schemes": {"popcount": bmacs / 2, "csa": bmacs}}


def test_limit_is_the_best_calibration_and_withheld_when_they_disagree() -> None:
    ok = limit_summary([_round(1.0e11, 5e10), _round(1.1e11, 5.2e10)], tolerance=0.15)
    assert ok["consistent"] and ok["bmacs_per_s"] == 1.1e11 and ok["fmacs_per_s"] == 5.2e10
    assert ok["spread"]["bmacs_per_s"] == pytest.approx(0.1)
    assert ok["schemes"] == {"popcount": 5.5e10, "csa": 1.1e11}
    assert "disagree" not in format_limit(ok)
    bad = limit_summary([_round(1.0e11, 5e10), _round(1.0e11, 9e10)], tolerance=0.15)
    assert not bad["consistent"]
    assert "disagree" in format_limit(bad) and "no share" in format_limit(bad)
