"""Descriptive statistics, rank effect sizes and correlations, in plain Python (no NumPy/SciPy needed)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel


class Distribution(BaseModel):
    """Summary of one quantity over a group of trials (None values are left out and counted in `n_missing`)."""

    n: int
    n_missing: int = 0
    mean: float | None = None
    median: float | None = None
    p10: float | None = None
    p90: float | None = None
    min: float | None = None
    max: float | None = None
    total: float | None = None


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (the common 'type 7' definition)."""
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def describe(values: Sequence[float | None]) -> Distribution:
    present = sorted(v for v in values if v is not None)
    if not present:
        return Distribution(n=0, n_missing=len(values))
    return Distribution(
        n=len(present),
        n_missing=len(values) - len(present),
        mean=statistics.fmean(present),
        median=quantile(present, 0.5),
        p10=quantile(present, 0.1),
        p90=quantile(present, 0.9),
        min=present[0],
        max=present[-1],
        total=math.fsum(present),
    )


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            out[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return out


def cliffs_delta(a: Sequence[float], b: Sequence[float]) -> float | None:
    """P(A > B) − P(A < B) over all pairs, from the Mann–Whitney U (O(n log n)).

    A rank effect size: robust to the heavy tails of token counts and durations, and readable
    (0.3 means a value from A beats one from B 30 points more often than it loses)."""
    if not a or not b:
        return None
    r = ranks(list(a) + list(b))
    u = sum(r[: len(a)]) - len(a) * (len(a) + 1) / 2
    return 2 * u / (len(a) * len(b)) - 1


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3:
        return None
    return pearson(ranks(x), ranks(y))
