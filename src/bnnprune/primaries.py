"""Pre-registered primary comparisons of a sweep: what each one contrasts, its paired test
over seeds, Holm's correction across them, and the smallest difference the design detects.

A primary is a list of (A row, B row) pairs of sweep table rows (``target+wff``, ``scratch``
...). For every seed, its contrast is the mean of ``acc(A) - acc(B)`` over those pairs and
over the sweep's BOPs reductions; a seed counts only once every cell it needs is finished.
The contrasts of all seeds are tested against 0 with a paired t test, the p values of the
sweep's primaries are Holm-adjusted together, and the smallest detectable difference (80%
power) is computed from the observed SD of the contrasts at the level Holm's first step
uses (alpha / number of primaries), the strictest any primary faces.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bnnprune.stats import detectable_difference, holm, paired_test

__all__ = ["ALPHA", "POWER", "PRIMARIES", "Primary", "analyze", "required_rows"]

ALPHA = 0.05  # family-wise error rate of the primaries (two-sided)
POWER = 0.8  # for the smallest detectable difference


@dataclass(frozen=True)
class Primary:
    """One pre-registered comparison: the mean over ``pairs`` of A minus B, per seed."""

    label: str  # P1, P2, ...
    question: str
    a_name: str  # how the page names the A side and the B side
    b_name: str
    pairs: tuple[tuple[str, str], ...]


PRIMARIES: dict[str, Primary] = {
    "allocation": Primary(
        "P1", "Do flip-guided layer widths beat uniform widths at the same BOPs?",
        "flip-guided widths", "uniform widths",
        (("target+wff", "uniform+wff"), ("scratch-target", "scratch"))),
    "channel_choice": Primary(
        "P2", "Inside the flip-guided widths, does WFF pick better channels than latent "
        "magnitude?", "WFF channels", "magnitude channels",
        (("target+wff", "target+magnitude"),)),
    "prune_vs_scratch": Primary(
        "P3", "Does pruning a trained network beat training the same widths from scratch "
        "(same total epochs)?", "pruned and fine-tuned", "trained from scratch",
        (("target+wff", "scratch-target"), ("uniform+wff", "scratch"))),
}


def required_rows(names: Sequence[str]) -> set[str]:
    """Every table row the named primaries read (``KeyError`` for an unknown name)."""
    return {row for n in names for pair in PRIMARIES[n].pairs for row in pair}


def _contrasts(primary: Primary, acc: dict[tuple[str, Any], dict[int, float]],
               reductions: Sequence[float]) -> dict[int, tuple[float, float]]:
    """Per seed with every needed cell: (mean of the A sides, mean of the B sides)."""
    seeds: set[int] | None = None
    for a, b in primary.pairs:
        for r in reductions:
            have = set(acc.get((a, r), {})) & set(acc.get((b, r), {}))
            seeds = have if seeds is None else seeds & have
    out = {}
    for s in sorted(seeds or ()):
        a_vals = [acc[(a, r)][s] for a, _ in primary.pairs for r in reductions]
        b_vals = [acc[(b, r)][s] for _, b in primary.pairs for r in reductions]
        out[s] = (statistics.fmean(a_vals), statistics.fmean(b_vals))
    return out


def analyze(acc: dict[tuple[str, Any], dict[int, float]], names: Sequence[str],
            reductions: Sequence[float], alpha: float = ALPHA,
            power: float = POWER) -> list[dict[str, Any]]:
    """The named primaries tested on ``acc`` (test accuracy by (row, reduction), then
    seed): per primary the seeds used, the mean contrast with its 95% interval, the paired
    SD, the raw and Holm-adjusted p values, whether it is resolved at ``alpha`` after
    Holm, and the smallest difference detectable with ``power`` at level alpha / m."""
    rows = []
    for name in names:
        pr = PRIMARIES[name]
        by_seed = _contrasts(pr, acc, reductions)
        seeds = sorted(by_seed)
        test = paired_test([by_seed[s][0] for s in seeds], [by_seed[s][1] for s in seeds])
        rows.append({"name": name, "label": pr.label, "question": pr.question,
                     "a": pr.a_name, "b": pr.b_name, "pairs": [list(p) for p in pr.pairs],
                     "seeds": seeds, "contrast_by_seed": {str(s): by_seed[s][0] - by_seed[s][1]
                                                          for s in seeds}, **test})
    adjusted = holm([r["p"] for r in rows])
    level = alpha / max(1, len(rows))
    for r, p_holm in zip(rows, adjusted):
        r["p_holm"] = p_holm
        r["resolved_holm"] = bool(not math.isnan(p_holm) and p_holm < alpha)
        r["detectable"] = (detectable_difference(r["sd"], r["n"], level, power)
                           if r["n"] >= 2 else math.nan)
        r["alpha"], r["power"], r["level"] = alpha, power, level
    return rows
