"""The evidence module's per-question verdicts: Holm's correction within a question, wins
and losses, identical comparisons and the detectable differences the page quotes."""

from __future__ import annotations

import math

import pytest

from bnnprune.evidence import identical, question_verdicts
from bnnprune.stats import detectable_difference


def _row(question: str, mean: float, p: float, resolved: bool, n: int = 5,
         sd: float = 0.01) -> dict:
    half = 0.0 if sd == 0 else 0.005
    return {"question": question, "a": "A", "b": "B", "reduction": 0.3, "n": n,
            "mean": mean, "lo": mean - half, "hi": mean + half, "resolved": resolved,
            "sd": sd, "p": p}


def test_holm_within_each_question_decides_what_stays_resolved() -> None:
    rows = [_row("q1", 0.02, 0.01, True), _row("q1", 0.03, 0.04, True),
            _row("q2", -0.02, 0.03, True), _row("q2", -0.01, 0.04, True),
            _row("q2", 0.001, 0.9, False)]
    q1, q2 = question_verdicts(rows)
    assert (q1.question, q2.question) == ("q1", "q2")  # in the rows' order
    assert len(q1.wins) == 2 and not q1.losses and q1.kept == 2  # Holm: 0.02, 0.04
    assert not q2.wins and len(q2.losses) == 2 and q2.kept == 0  # Holm: 0.09, 0.09, 0.9
    assert q2.comparisons == rows[2:] and q2.seeds == 5


def test_rows_without_p_and_identical_rows() -> None:
    old = {k: v for k, v in _row("q", 0.0, math.nan, False, sd=0.0).items() if k != "p"}
    (v,) = question_verdicts([old, {**old, "n": 3}])
    assert identical(old) and v.identical and v.kept == 0 and v.seeds == 3
    assert not identical(_row("q", 0.0, 1.0, False))  # mean 0 but a nonzero interval


def test_detectable_differences_skip_single_seeds() -> None:
    (v,) = question_verdicts([_row("q", 0.001, 0.8, False, n=4, sd=0.02),
                              _row("q", 0.002, 0.7, False, n=1)])
    assert v.detectable == [pytest.approx(detectable_difference(0.02, 4))]
    assert not v.wins and not v.losses
