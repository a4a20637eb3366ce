"""Small statistics for multi-seed comparisons: paired differences with a t interval and a
two-sided p value, Holm's correction over a family of tests, the smallest difference a paired
design detects, and Spearman rank correlation (no SciPy dependency)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch

__all__ = ["detectable_difference", "holm", "paired_difference", "paired_test", "spearman",
           "t_cdf", "t_quantile", "t_quantile_975"]

# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (standard table)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (1.96 beyond 30)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction
    (modified Lentz), used on the side where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                + a * math.log(x) + b * math.log1p(-x))
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return math.exp(ln_front) * (f - 1.0) / a


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    tail = 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, dof: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_cdf`)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {q}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a paired t test of ``n`` pairs with paired standard
    deviation ``sd`` detects with probability ``power`` at two-sided level ``alpha``:
    (t_{1-alpha/2} + t_{power}) * sd / sqrt(n), both with n - 1 degrees of freedom (the
    usual approximation of the noncentral t)."""
    if n < 2:
        return math.nan
    dof = n - 1
    return (t_quantile(1 - alpha / 2, dof) + t_quantile(power, dof)) * sd / math.sqrt(n)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p values (same order as given): the family-wise error
    stays at alpha when each adjusted p is compared with alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        p = p_values[i]
        if math.isnan(p):
            continue
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def _interval(a: Sequence[float],
              b: Sequence[float]) -> tuple[dict[str, float | int | bool], float]:
    """The computation behind :func:`paired_difference` and :func:`paired_test`, done once:
    the paired difference with its 95% interval, and the paired SD (NaN below 2 pairs)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    if n == 0:
        return {"n": 0, "mean": math.nan, "lo": math.nan, "hi": math.nan,
                "resolved": False}, math.nan
    mean = statistics.fmean(d)
    if n < 2:
        return {"n": 1, "mean": mean, "lo": math.nan, "hi": math.nan,
                "resolved": False}, math.nan
    sd = statistics.stdev(d)
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    return {"n": n, "mean": mean, "lo": lo, "hi": hi, "resolved": bool(lo > 0 or hi < 0)}, sd


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | bool]:
    """Mean of ``a[i] - b[i]`` over paired seeds with its 95% t interval.

    ``resolved`` is False when the interval contains 0 (or fewer than 2 pairs exist).
    """
    return _interval(a, b)[0]


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int | bool]:
    """:func:`paired_difference` plus the paired standard deviation ``sd`` and the two-sided
    p value ``p`` of the paired t test (NaN with fewer than 2 pairs; 0 or 1 when every
    difference is equal)."""
    out, sd = _interval(a, b)
    n = int(out["n"])
    if n < 2:
        return {**out, "sd": math.nan, "p": math.nan}
    mean = float(out["mean"])
    if sd == 0:
        return {**out, "sd": 0.0, "p": 1.0 if mean == 0 else 0.0}
    t = mean / (sd / math.sqrt(n))
    return {**out, "sd": sd, "p": 2.0 * t_cdf(-abs(t), n - 1)}


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
