"""compare_latency: the pruned-vs-unpruned measurement behind `bnnprune bench` and the sweep."""

from __future__ import annotations

import pytest

from bnnprune.engine import EngineError, compile_model
from bnnprune.engine.bench import compare_latency, program_bops
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
