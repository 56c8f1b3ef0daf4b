"""Scores over trials, with their uncertainty and the policy that produced them.

Every number comes with three things a reader needs to trust it:
- **a denominator policy** — which trials count. Infrastructure errors and cancelled trials are never scored
  (the machine failed, not the agent); they lower *coverage* instead. A trial whose verifier gave a reward is
  scored with that reward even if the agent errored (the verifier judged the work). A trial with another error
  and no reward counts 0 (`error_policy="zero"`, the default) or is left out (`"exclude"`: then every errored
  trial is left out).
- **coverage** — the share of trials that were scored; below `min_coverage` the report is `reliable: false`.
- **a 95% interval clustered by task.** Attempts of one task are not independent (an easy task passes every
  time), so the task is the unit: each metric is the mean over tasks of a per-task score, its standard error is
  the standard deviation of the task scores over √T, and the interval is mean ± t(0.975, T−1)·SE. This is the
  cluster-robust (CR1) standard error for equal-weight clusters; Student's t with T−1 degrees of freedom keeps
  the coverage near 95% for the few-dozen-task benchmarks common here, where a normal interval is too narrow.
  When every task scores the same 0 or 1, the SE is 0 and that interval would claim certainty; rates then use
  the exact Clopper–Pearson interval over tasks instead.
- **bounded intervals.** A rate (pass rate, pass@k, pass^k) and a mean reward whose every reward lies in
  [0, 1] cannot leave [0, 1], but a t interval over few tasks can (2 tasks scoring 0 and 1: ±6.4·SE). Such an
  interval is clipped to [0, 1]: the clipped end then says "no evidence beyond the bound", and coverage can
  only grow. A mean reward with rewards outside [0, 1] has no known bound and is not clipped.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from functools import lru_cache
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from evalkit.errors import ConfigError

if TYPE_CHECKING:
    from evalkit.results import PhaseStats

METRICS_SCHEMA_VERSION = 1
PASS_THRESHOLD = 1.0
"""A trial passes when its primary reward reaches this."""
CONFIDENCE = 0.95

ErrorKind = Literal["infrastructure", "agent", "verifier", "task", "cancelled"]
ErrorPolicy = Literal["zero", "exclude"]

DENOMINATORS: dict[str, str] = {
    "zero": "scored trials: all trials except infrastructure errors and cancelled ones; "
    "a trial with another error and no reward counts 0",
    "exclude": "scored trials: trials without any error (errored trials are excluded, not counted 0)",
}
INTERVAL_METHOD = (
    "task-clustered: mean of per-task scores, SE = sd(task scores)/sqrt(T), 95% CI = mean ± t(0.975, T-1)·SE; "
    "exact Clopper-Pearson over tasks when every task scores the same 0 or 1; "
    "clipped to [0, 1] for rates and for mean rewards whose rewards all lie in [0, 1]"
)


def primary_reward(rewards: Mapping[str, float] | None) -> float | None:
    """The primary reward: `reward` if the verifier wrote that key, else the mean of all keys."""
    if not rewards:
        return None
    if "reward" in rewards:
        return rewards["reward"]
    return sum(rewards.values()) / len(rewards)


def passed(reward: float | None) -> bool:
    return reward is not None and reward >= PASS_THRESHOLD


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with n attempts of which c passed: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} attempts, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k: the chance that k attempts drawn without replacement all pass: C(c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass^{k} needs at least {k} attempts, got {n}")
    return math.comb(c, k) / math.comb(n, k)


def mean_pass_at_k(per_task: Iterable[Sequence[float | None]], k: int) -> float | None:
    scores = [pass_at_k(len(r), sum(map(passed, r)), k) for r in per_task if len(r) >= k]
    return sum(scores) / len(scores) if scores else None


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def phase_stats(durations: Sequence[float]) -> PhaseStats:
    from evalkit.results import PhaseStats  # results.json embeds a MetricsReport: results imports this module

    values = sorted(durations)
    return PhaseStats(
        n=len(values),
        mean_sec=statistics.fmean(values),
        p50_sec=_quantile(values, 0.5),
        p95_sec=_quantile(values, 0.95),
        max_sec=values[-1],
    )


# ------------------------------------------------------------------------------------ distributions


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
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
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _invert(cdf: Callable[[float], float], p: float, lo: float, hi: float) -> float:
    for _ in range(200):
        mid = (lo + hi) / 2
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2


@lru_cache(maxsize=1024)
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (no SciPy): the CDF through the incomplete beta function, inverted by bisection."""

    def cdf(t: float) -> float:
        tail = 0.5 * beta_cdf(df / (df + t * t), df / 2, 0.5)
        return 1.0 - tail if t > 0 else tail

    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    hi = 1.0
    while cdf(hi) < p:
        hi *= 2
    return _invert(cdf, p, 0.0, hi)


def clopper_pearson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact binomial interval for successes out of n."""
    alpha = 1.0 - confidence
    # P(X >= s | p) = I_p(s, n-s+1) grows with p: the lower bound is where it reaches alpha/2.
    low = 0.0 if successes == 0 else _invert(lambda x: beta_cdf(x, successes, n - successes + 1), alpha / 2, 0.0, 1.0)
    high = 1.0 if successes == n else _invert(lambda x: beta_cdf(x, successes + 1, n - successes), 1.0 - alpha / 2, 0.0, 1.0)
    return low, high


def clustered_interval(task_scores: Sequence[float], *, bounded: bool) -> tuple[float, float | None, float | None, float | None]:
    """(mean, SE, CI low, CI high) over per-task scores, clustered by task (see the module docstring)."""
    t = len(task_scores)
    mean = statistics.fmean(task_scores)
    if t < 2:
        return mean, None, None, None
    se = statistics.stdev(task_scores) / math.sqrt(t)
    if se == 0.0 and mean in (0.0, 1.0):
        low, high = clopper_pearson(int(mean) * t, t)
        return mean, 0.0, low, high
    half = t_quantile(0.5 + CONFIDENCE / 2, t - 1) * se
    low, high = mean - half, mean + half
    if bounded:
        low, high = max(0.0, low), min(1.0, high)
    return mean, se, low, high


# ------------------------------------------------------------------------------------------- names


class MetricSpec(BaseModel):
    """One metric a config asks for."""

    name: str
    """As it appears in reports: `mean_reward`, `pass_rate`, `pass@3`, `pass^3`."""
    kind: Literal["mean_reward", "pass_rate", "pass_at_k", "pass_hat_k"]
    k: int = 1


_ALIASES = {"avg": "mean_reward", "mean": "mean_reward", "mean_reward": "mean_reward", "pass_rate": "pass_rate"}
_K_METRIC = re.compile(r"^pass(?P<op>[@^])(?P<k>\d+)$")
DEFAULT_METRICS = ("mean_reward", "pass_rate")


def parse_metric_names(names: Sequence[str], *, field: str = "metrics") -> list[MetricSpec]:
    """`["pass@3", "pass^3", "avg"]` → specs; empty → mean reward and pass rate. Unknown names are a
    ConfigError naming the list position."""
    specs: list[MetricSpec] = []
    for i, raw in enumerate(names or DEFAULT_METRICS):
        name = str(raw).strip().lower()
        if name in _ALIASES:
            kind = _ALIASES[name]
            specs.append(MetricSpec(name=kind, kind=kind))  # type: ignore[arg-type]
        elif match := _K_METRIC.match(name):
            k = int(match["k"])
            if k < 1:
                raise ConfigError(f"{field}[{i}]: {raw!r}: k must be at least 1")
            kind = "pass_at_k" if match["op"] == "@" else "pass_hat_k"
            specs.append(MetricSpec(name=f"pass{match['op']}{k}", kind=kind, k=k))
        else:
            raise ConfigError(
                f"{field}[{i}]: unknown metric {raw!r}; expected avg, mean_reward, pass_rate, pass@K or pass^K (K ≥ 1)"
            )
    return list({s.name: s for s in specs}.values())


# ----------------------------------------------------------------------------------------- records


class TrialRecord(BaseModel):
    """What metrics need of one trial (its final try): plain data, from a job or from any caller."""

    task: str
    attempt: int = 0
    rewards: dict[str, float] | None = None
    """The verifier's rewards; None when it gave none."""
    error_kind: ErrorKind | None = None
    """Kind of the final try's error (`cancelled` for a trial stopped before it finished); None: no error."""

    @property
    def reward(self) -> float | None:
        return primary_reward(self.rewards)


class MetricValue(BaseModel):
    """One metric over the scored trials, with its clustered uncertainty."""

    name: str
    reward_key: str
    """`reward` for the primary reward; another key of a multi-key reward otherwise."""
    value: float | None
    """None when no task could be scored."""
    se: float | None
    """Standard error clustered by task; None with fewer than two tasks."""
    ci_low: float | None
    ci_high: float | None
    n_tasks: int
    """Tasks that contributed a score."""
    n_trials: int
    """Scored trials behind those scores."""
    n_tasks_excluded: int = 0
    """Tasks left out because they had fewer than k scored attempts (pass@k, pass^k) or none at all."""


class MetricsReport(BaseModel):
    """Metrics of a set of trials: what goes into `results.json` under `metrics`, and what the API returns."""

    schema_version: int = METRICS_SCHEMA_VERSION
    error_policy: ErrorPolicy
    denominator: str
    """In words: which trials every metric below counts."""
    interval: str
    """How `se`, `ci_low` and `ci_high` were computed."""
    confidence: float = CONFIDENCE
    n_trials: int
    n_scored: int
    n_infrastructure_errors: int
    n_cancelled: int
    n_excluded_errors: int
    """Errored trials left out by `error_policy="exclude"` (0 under "zero")."""
    coverage: float | None
    """Share of trials scored without an infrastructure error or cancellation; None with no trials."""
    min_coverage: float | None
    reliable: bool
    """False when coverage is below `min_coverage` (or nothing was scored)."""
    metrics: list[MetricValue]
    breakdowns: dict[str, dict[str, list[MetricValue]]] = {}
    """metadata key → value → metrics of the tasks with that value (a list value counts under each item)."""

    def flat(self) -> dict[str, float]:
        """`{"pass@3": …, "pass@3/ci_low": …, "coverage": …}`: primary-reward metrics for a training loop."""
        out: dict[str, float] = {}
        for m in self.metrics:
            prefix = m.name if m.reward_key == "reward" else f"{m.name}/{m.reward_key}"
            for suffix, value in (("", m.value), ("/se", m.se), ("/ci_low", m.ci_low), ("/ci_high", m.ci_high)):
                if value is not None:
                    out[prefix + suffix] = value
        if self.coverage is not None:
            out["coverage"] = self.coverage
        return out


def _scored_value(record: TrialRecord, key: str | None, policy: ErrorPolicy) -> float | None:
    """The value a trial contributes, or None when the denominator policy leaves it out."""
    if record.error_kind in ("infrastructure", "cancelled"):
        return None
    if record.error_kind is not None and policy == "exclude":
        return None
    value = record.reward if key is None else (record.rewards or {}).get(key)
    return 0.0 if value is None else value


def _task_score(spec: MetricSpec, values: list[float]) -> float | None:
    if spec.kind == "mean_reward":
        return statistics.fmean(values) if values else None
    wins = [v >= PASS_THRESHOLD for v in values]
    if spec.kind == "pass_rate":
        return sum(wins) / len(wins) if wins else None
    if len(values) < spec.k:
        return None
    fn = pass_at_k if spec.kind == "pass_at_k" else pass_hat_k
    return fn(len(values), sum(wins), spec.k)


def _metric(spec: MetricSpec, key: str, by_task: Mapping[str, list[float]], tasks: Iterable[str]) -> MetricValue:
    scores, n_trials, excluded, in_unit_range = [], 0, 0, True
    for task in tasks:
        values = by_task.get(task, [])
        score = _task_score(spec, values)
        if score is None:
            excluded += 1
            continue
        scores.append(score)
        n_trials += len(values)
        in_unit_range = in_unit_range and all(0.0 <= v <= 1.0 for v in values)
    if not scores:
        return MetricValue(name=spec.name, reward_key=key, value=None, se=None, ci_low=None, ci_high=None,
                           n_tasks=0, n_trials=0, n_tasks_excluded=excluded)
    bounded = spec.kind != "mean_reward" or in_unit_range
    value, se, low, high = clustered_interval(scores, bounded=bounded)
    return MetricValue(name=spec.name, reward_key=key, value=value, se=se, ci_low=low, ci_high=high,
                       n_tasks=len(scores), n_trials=n_trials, n_tasks_excluded=excluded)


def _metadata_values(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, set)):
        return [str(v) for v in value]
    return [] if value is None else [str(value)]


def compute_metrics(
    records: Iterable[TrialRecord | Mapping[str, Any]],
    *,
    metrics: Sequence[str | MetricSpec] = (),
    task_metadata: Mapping[str, Mapping[str, Any]] | None = None,
    breakdown_keys: Sequence[str] = (),
    error_policy: ErrorPolicy = "zero",
    min_coverage: float | None = None,
) -> MetricsReport:
    """The one entry point: per-trial records (+ task metadata) → a `MetricsReport`.

    Raises ConfigError for an unknown metric name, and for pass@k / pass^k with k larger than the number of
    attempts of some task (the estimator is undefined there)."""
    if error_policy not in DENOMINATORS:
        raise ConfigError(f"error_policy: expected 'zero' or 'exclude', got {error_policy!r}")
    given = [s for s in metrics if isinstance(s, MetricSpec)]
    names = [s for s in metrics if not isinstance(s, MetricSpec)]
    specs = given + (parse_metric_names(names) if names or not given else [])
    rows = [r if isinstance(r, TrialRecord) else TrialRecord.model_validate(r) for r in records]
    attempts: dict[str, int] = defaultdict(int)
    keys: set[str] = set()
    for r in rows:
        attempts[r.task] += 1
        keys.update(r.rewards or ())
    for spec in specs:
        if spec.kind in ("pass_at_k", "pass_hat_k") and attempts:
            task, n = min(attempts.items(), key=lambda kv: kv[1])
            if spec.k > n:
                raise ConfigError(
                    f"metrics: {spec.name} needs at least {spec.k} attempts per task, but task {task!r} has {n}; "
                    f"set n_attempts ≥ {spec.k} or ask for a smaller k"
                )
    reward_keys: list[str | None] = [None] + (sorted(keys - {"reward"}) if len(keys) > 1 else [])
    values: dict[str | None, dict[str, list[float]]] = {key: defaultdict(list) for key in reward_keys}
    n_infra = n_cancelled = n_excluded = 0
    tasks_with: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        for key in r.rewards or ():
            tasks_with[key].add(r.task)
    for r in rows:
        n_infra += r.error_kind == "infrastructure"
        n_cancelled += r.error_kind == "cancelled"
        for key in reward_keys:
            if key is not None and r.task not in tasks_with[key]:
                continue  # a key counts only on the tasks whose verifier reports it
            value = _scored_value(r, key, error_policy)
            if value is not None:
                values[key][r.task].append(value)
        n_excluded += error_policy == "exclude" and r.error_kind not in (None, "infrastructure", "cancelled")
    tasks = list(dict.fromkeys(r.task for r in rows))
    n_scored = sum(len(v) for v in values[None].values())
    coverage = (len(rows) - n_infra - n_cancelled) / len(rows) if rows else None

    def metric_list(subset: list[str]) -> list[MetricValue]:
        return [
            _metric(spec, key or "reward", values[key], [t for t in subset if key is None or t in tasks_with[key]])
            for key in reward_keys
            for spec in specs
        ]

    breakdowns: dict[str, dict[str, list[MetricValue]]] = {}
    meta = task_metadata or {}
    for bkey in breakdown_keys:
        groups: dict[str, list[str]] = defaultdict(list)
        for task in tasks:
            for value in _metadata_values(meta.get(task, {}).get(bkey)) or ["(none)"]:
                groups[value].append(task)
        breakdowns[bkey] = {value: metric_list(group) for value, group in sorted(groups.items())}
    return MetricsReport(
        error_policy=error_policy,
        denominator=DENOMINATORS[error_policy],
        interval=INTERVAL_METHOD,
        n_trials=len(rows),
        n_scored=n_scored,
        n_infrastructure_errors=n_infra,
        n_cancelled=n_cancelled,
        n_excluded_errors=n_excluded,
        coverage=coverage,
        min_coverage=min_coverage,
        reliable=n_scored > 0 and (min_coverage is None or (coverage or 0.0) >= min_coverage),
        metrics=metric_list(tasks),
        breakdowns=breakdowns,
    )
