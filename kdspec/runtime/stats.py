"""Small statistics for comparing runs over seeds (no scipy needed).

Example:
    >>> round(t_quantile(0.975, 4), 4)
    2.7764
    >>> s = paired_difference([91.0, 92.0, 90.5], [88.0, 90.0, 89.0])
    >>> round(s["mean"], 3), s["n"]
    (2.167, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_std", "paired_difference", "t_cdf", "t_quantile"]


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    if n == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Numerical Recipes, Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of :func:`t_cdf` (bisection; accurate to ~1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError("p must be in (0, 1)")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def paired_difference(
    xs: Sequence[float], baseline: Sequence[float], level: float = 0.95
) -> dict[str, float | int | None]:
    """Mean of ``xs[i] - baseline[i]`` with a t-distribution confidence interval.

    Returns:
        ``mean``, ``std`` (of the differences), ``n``, ``low``/``high`` and the two-sided ``p``
        value of a zero mean difference; the interval and ``p`` are None for n < 2 and when
        every difference is the same (zero spread: a zero-width interval would claim a
        certainty that a few seeds cannot give).
    """
    diffs = [x - b for x, b in zip(xs, baseline, strict=True)]
    n = len(diffs)
    m, s = mean_std(diffs)
    out: dict[str, float | int | None] = {
        "mean": m,
        "std": s,
        "n": n,
        "low": None,
        "high": None,
        "p": None,
    }
    if n >= 2 and s > 0:
        half = t_quantile(0.5 + level / 2.0, n - 1) * s / math.sqrt(n)
        out["low"], out["high"] = m - half, m + half
        t = m / (s / math.sqrt(n))
        out["p"] = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
    return out
