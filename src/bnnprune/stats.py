"""Small statistics for multi-seed comparisons: paired differences with a t interval, and
Spearman rank correlation (no SciPy dependency)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

__all__ = ["paired_difference", "spearman", "t_quantile_975"]

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard table)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (1.96 beyond 30)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | bool]:
    """Mean of ``a[i] - b[i]`` over paired seeds with its 95% t interval.

    ``resolved`` is False when the interval contains 0 (or fewer than 2 pairs exist).
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n == 0:
        return {"n": 0, "mean": math.nan, "lo": math.nan, "hi": math.nan, "resolved": False}
    mean = statistics.fmean(d)
    if n < 2:
        return {"n": 1, "mean": mean, "lo": math.nan, "hi": math.nan, "resolved": False}
    half = t_quantile_975(n - 1) * statistics.stdev(d) / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return {"n": n, "mean": mean, "lo": lo, "hi": hi, "resolved": bool(lo > 0 or hi < 0)}


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), 0-based."""
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    sx = x[order]
    ranks = torch.empty_like(x)
    pos = torch.arange(len(x), dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sx, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, pos)
    ranks[order] = (sums / counts.double())[inverse]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation with ties averaged; NaN when either side is constant."""
    if x.numel() != y.numel() or x.numel() < 2:
        raise ValueError("spearman needs two samples of the same length >= 2")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else math.nan
