"""`evalkit compare JOB_A JOB_B`: is B better than A, or is this noise?

A paired comparison on the tasks both jobs scored:
- per-task differences (B − A) of mean reward and pass@k;
- a paired bootstrap (tasks resampled with replacement, seeded) 95% percentile interval of the mean difference;
- McNemar's test on resolved/unresolved, pairing trials by (task, attempt): exact two-sided binomial when there
  are fewer than 25 discordant pairs, else the chi-square statistic with continuity correction;
- the minimum detectable effect at this number of tasks: (z₀.₉₇₅ + z₀.₈)·s_d/√T, the smallest true mean
  difference a paired test at α = 0.05 would detect 80% of the time, s_d the sd of per-task differences.
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

from pydantic import BaseModel

from evalkit.analysis.reader import TryRecord, final_tries, iter_tries
from evalkit.errors import ConfigError
from evalkit.metrics import pass_at_k, passed

COMPARE_SCHEMA_VERSION = 1
_Z = statistics.NormalDist()
EXACT_BELOW = 25
"""Discordant pairs below which McNemar's test uses the exact binomial distribution."""


class TaskDifference(BaseModel):
    task: str
    a_mean_reward: float
    b_mean_reward: float
    a_pass_at_k: float | None
    b_pass_at_k: float | None
    difference: float
    """b_mean_reward − a_mean_reward."""


class PairedEstimate(BaseModel):
    metric: str
    a: float
    b: float
    difference: float
    """b − a, averaged over the common tasks."""
    ci_low: float
    ci_high: float
    """Paired bootstrap 95% percentile interval of the difference."""
    sd_task_difference: float
    mde: float
    """Minimum detectable effect at this number of tasks (α = 0.05 two-sided, power 0.8)."""
    mde_note: str | None = None


class McNemar(BaseModel):
    n_pairs: int
    a_only: int
    """Pairs resolved by A but not B."""
    b_only: int
    both: int
    neither: int
    statistic: float | None
    """Chi-square with continuity correction, (|b−c|−1)²/(b+c); None without discordant pairs."""
    p_value: float
    method: str


class Comparison(BaseModel):
    """`evalkit compare` output."""

    schema_version: int = COMPARE_SCHEMA_VERSION
    job_a: str
    job_b: str
    k: int
    n_common_tasks: int
    only_in_a: list[str]
    only_in_b: list[str]
    n_bootstrap: int
    seed: int
    mean_reward: PairedEstimate
    pass_at_k: PairedEstimate | None
    """None when some common task has fewer than k scored attempts in either job."""
    mcnemar: McNemar
    tasks: list[TaskDifference]
    verdict: str
    """In words: which job is better, or that the difference is within noise."""


def _scored(job_dir: Path) -> dict[str, list[TryRecord]]:
    if not job_dir.is_dir():
        raise ConfigError(f"job directory not found: {job_dir}")
    tries = [t for t in iter_tries(job_dir) if isinstance(t, TryRecord)]
    by_task: dict[str, list[TryRecord]] = {}
    for t in final_tries(tries):
        if t.error_kind not in ("infrastructure", "cancelled"):
            by_task.setdefault(t.task, []).append(t)
    return by_task


def _pass_k(trials: list[TryRecord], k: int) -> float | None:
    return pass_at_k(len(trials), sum(passed(t.reward) for t in trials), k) if len(trials) >= k else None


def _bootstrap(diffs: list[float], n_boot: int, rng: random.Random) -> tuple[float, float]:
    n = len(diffs)
    means = sorted(math.fsum(rng.choices(diffs, k=n)) / n for _ in range(n_boot))
    return means[int(0.025 * (n_boot - 1))], means[int(math.ceil(0.975 * (n_boot - 1)))]


def _estimate(metric: str, a: list[float], b: list[float], n_boot: int, rng: random.Random) -> PairedEstimate:
    diffs = [y - x for x, y in zip(a, b)]
    low, high = _bootstrap(diffs, n_boot, rng)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    note = None
    sd_for_mde = sd
    if sd == 0.0:
        sd_for_mde, note = 0.5, "no variation in per-task differences; MDE assumes s_d = 0.5"
    z = _Z.inv_cdf(0.975) + _Z.inv_cdf(0.8)
    return PairedEstimate(metric=metric, a=statistics.fmean(a), b=statistics.fmean(b), difference=statistics.fmean(diffs),
                          ci_low=low, ci_high=high, sd_task_difference=sd, mde=z * sd_for_mde / math.sqrt(len(diffs)),
                          mde_note=note)


def mcnemar(pairs: list[tuple[bool, bool]]) -> McNemar:
    a_only = sum(1 for a, b in pairs if a and not b)
    b_only = sum(1 for a, b in pairs if b and not a)
    both = sum(1 for a, b in pairs if a and b)
    n = a_only + b_only
    statistic = (abs(a_only - b_only) - 1) ** 2 / n if n else None
    if n == 0:
        p, method = 1.0, "no discordant pairs"
    elif n < EXACT_BELOW:
        tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2**n
        p, method = min(1.0, 2 * tail), "exact two-sided binomial (fewer than 25 discordant pairs)"
    else:
        p, method = math.erfc(math.sqrt(statistic / 2)), "chi-square with continuity correction, 1 df"
    return McNemar(n_pairs=len(pairs), a_only=a_only, b_only=b_only, both=both,
                   neither=len(pairs) - a_only - b_only - both, statistic=statistic, p_value=p, method=method)


def compare_jobs(job_a: Path, job_b: Path, *, k: int = 1, n_bootstrap: int = 10_000, seed: int = 0) -> Comparison:
    a, b = _scored(Path(job_a)), _scored(Path(job_b))
    common = sorted(a.keys() & b.keys())
    if not common:
        raise ConfigError(f"{job_a} and {job_b} have no scored task in common; nothing to compare")
    if k < 1:
        raise ConfigError(f"--k must be at least 1, got {k}")
    rng = random.Random(seed)
    rows, a_means, b_means = [], [], []
    for task in common:
        am = statistics.fmean(t.reward or 0.0 for t in a[task])
        bm = statistics.fmean(t.reward or 0.0 for t in b[task])
        a_means.append(am)
        b_means.append(bm)
        rows.append(TaskDifference(task=task, a_mean_reward=am, b_mean_reward=bm, a_pass_at_k=_pass_k(a[task], k),
                                   b_pass_at_k=_pass_k(b[task], k), difference=bm - am))
    mean = _estimate("mean_reward", a_means, b_means, n_bootstrap, rng)
    pk = None
    if all(row.a_pass_at_k is not None and row.b_pass_at_k is not None for row in rows):
        pk = _estimate(f"pass@{k}", [row.a_pass_at_k for row in rows], [row.b_pass_at_k for row in rows],  # type: ignore[misc]
                       n_bootstrap, rng)
    pairs = []
    for task in common:
        b_by_attempt = {t.attempt: t for t in b[task]}
        pairs += [(passed(t.reward), passed(b_by_attempt[t.attempt].reward)) for t in a[task] if t.attempt in b_by_attempt]
    test = mcnemar(pairs)
    if mean.ci_low > 0:
        verdict = f"B is better: mean reward +{mean.difference:.3f} (95% CI {mean.ci_low:+.3f} to {mean.ci_high:+.3f})"
    elif mean.ci_high < 0:
        verdict = f"A is better: mean reward {mean.difference:+.3f} (95% CI {mean.ci_low:+.3f} to {mean.ci_high:+.3f})"
    else:
        verdict = (f"no detectable difference: {mean.difference:+.3f} (95% CI {mean.ci_low:+.3f} to {mean.ci_high:+.3f}); "
                   f"with {len(common)} tasks only differences of about {mean.mde:.3f} or more are reliably detected")
    return Comparison(job_a=str(job_a), job_b=str(job_b), k=k, n_common_tasks=len(common),
                      only_in_a=sorted(a.keys() - b.keys()), only_in_b=sorted(b.keys() - a.keys()),
                      n_bootstrap=n_bootstrap, seed=seed, mean_reward=mean, pass_at_k=pk, mcnemar=test, tasks=rows,
                      verdict=verdict)


def render_table(c: Comparison) -> str:
    """The comparison as text for a terminal."""
    lines = [f"A: {c.job_a}", f"B: {c.job_b}", f"common tasks: {c.n_common_tasks}"
             + (f" (only in A: {len(c.only_in_a)}, only in B: {len(c.only_in_b)})" if c.only_in_a or c.only_in_b else ""), ""]
    lines.append(f"{'metric':<12} {'A':>8} {'B':>8} {'B-A':>8}  {'95% CI':>19}  {'MDE':>6}")
    for e in (c.mean_reward, c.pass_at_k):
        if e is not None:
            lines.append(f"{e.metric:<12} {e.a:8.3f} {e.b:8.3f} {e.difference:+8.3f}  [{e.ci_low:+.3f}, {e.ci_high:+.3f}]  {e.mde:6.3f}")
    m = c.mcnemar
    stat = "n/a" if m.statistic is None else f"{m.statistic:.3f}"
    lines += ["", f"McNemar: A only {m.a_only}, B only {m.b_only}, both {m.both}, neither {m.neither}; "
              f"chi2 {stat}, p = {m.p_value:.4g} ({m.method})", "", c.verdict, ""]
    width = max([len(t.task) for t in c.tasks] + [4])
    lines.append(f"{'task':<{width}} {'A':>7} {'B':>7} {'B-A':>7}")
    for t in sorted(c.tasks, key=lambda t: (-abs(t.difference), t.task)):
        lines.append(f"{t.task:<{width}} {t.a_mean_reward:7.3f} {t.b_mean_reward:7.3f} {t.difference:+7.3f}")
    return "\n".join(lines)
