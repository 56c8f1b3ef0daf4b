"""Scores over trials: mean reward, pass rate, unbiased pass@k and pass^k, phase timing statistics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from evalkit.results import PhaseStats

PASS_THRESHOLD = 1.0
"""A trial passes when its primary reward reaches this."""


def passed(reward: float | None) -> bool:
    return reward is not None and reward >= PASS_THRESHOLD


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with n attempts of which c passed: 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k: the chance that k attempts drawn without replacement all pass: C(c, k) / C(n, k)."""
    return math.comb(c, k) / math.comb(n, k)


def mean_pass_at_k(per_task: Iterable[Sequence[float | None]], k: int) -> float | None:
    scores = [pass_at_k(len(r), sum(map(passed, r)), k) for r in per_task if len(r) >= k]
    return sum(scores) / len(scores) if scores else None


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def phase_stats(durations: Sequence[float]) -> PhaseStats:
    values = sorted(durations)
    return PhaseStats(
        n=len(values),
        mean_sec=statistics.fmean(values),
        p50_sec=_quantile(values, 0.5),
        p95_sec=_quantile(values, 0.95),
        max_sec=values[-1],
    )
