"""Metrics against hand-computed values, the denominator policies, coverage, and the interval's coverage."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evalkit.errors import ConfigError
from evalkit.metrics import (
    TrialRecord,
    clopper_pearson,
    compute_metrics,
    mean_pass_at_k,
    parse_metric_names,
    pass_at_k,
    pass_hat_k,
    t_quantile,
)


def rec(task: str, attempt: int, reward: float | None = None, kind: str | None = None) -> TrialRecord:
    return TrialRecord(task=task, attempt=attempt, rewards=None if reward is None else {"reward": reward}, error_kind=kind)


def by_name(report, key: str = "reward"):
    return {m.name: m for m in report.metrics if m.reward_key == key}


def test_pass_at_k_and_pass_hat_k_match_hand_computation():
    # n=5, c=2: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass^2 = C(2,2)/C(5,2) = 1/10
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0  # n - c = 3 < 4: some drawn attempt must pass
    assert pass_hat_k(5, 2, 2) == pytest.approx(0.1)
    assert pass_hat_k(5, 2, 3) == 0.0
    assert pass_at_k(3, 0, 3) == 0.0 and pass_hat_k(3, 3, 3) == 1.0
    with pytest.raises(ValueError, match="pass@4 needs at least 4 attempts, got 3"):
        pass_at_k(3, 1, 4)
    assert mean_pass_at_k([[1.0, 0.0], [0.0, 0.0], [1.0]], 2) == pytest.approx(0.5)  # the 1-attempt task is skipped


def test_partial_passes_every_metric_by_hand():
    # task a: 1,0,0   task b: 1,1,0   task c: 1,1,1
    records = [rec("a", 0, 1.0), rec("a", 1, 0.0), rec("a", 2, 0.0),
               rec("b", 0, 1.0), rec("b", 1, 1.0), rec("b", 2, 0.0),
               rec("c", 0, 1.0), rec("c", 1, 1.0), rec("c", 2, 1.0)]
    report = compute_metrics(records, metrics=["avg", "pass_rate", "pass@2", "pass^2", "pass@3"])
    m = by_name(report)
    assert m["mean_reward"].value == pytest.approx(6 / 9)
    assert m["pass_rate"].value == pytest.approx(6 / 9)
    # pass@2 per task: a 1 - C(2,2)/C(3,2) = 2/3, b 1 - 0 = 1, c 1
    assert m["pass@2"].value == pytest.approx((2 / 3 + 1 + 1) / 3)
    # pass^2 per task: a 0, b C(2,2)/C(3,2) = 1/3, c 1
    assert m["pass^2"].value == pytest.approx((0 + 1 / 3 + 1) / 3)
    assert m["pass@3"].value == 1.0
    # SE clustered by task: sd of task means (1/3, 2/3, 1) / sqrt(3); CI with t(0.975, 2) = 4.3027
    se = math.sqrt(((1 / 3 - 2 / 3) ** 2 + 0 + (1 - 2 / 3) ** 2) / 2) / math.sqrt(3)
    assert m["mean_reward"].se == pytest.approx(se)
    assert 2 / 3 - 4.302653 * se < 0 and 2 / 3 + 4.302653 * se > 1  # the t interval leaves [0, 1] …
    assert (m["mean_reward"].ci_low, m["mean_reward"].ci_high) == (0.0, 1.0)  # … rewards in [0, 1]: clipped
    assert m["pass_rate"].ci_high == 1.0  # rates are clipped to [0, 1]
    assert (m["pass@2"].n_tasks, m["pass@2"].n_trials) == (3, 9)
    assert report.coverage == 1.0 and report.reliable


def test_all_zero_and_all_one_use_the_exact_interval_over_tasks():
    ones = compute_metrics([rec(t, a, 1.0) for t in "abcde" for a in range(2)])
    m = by_name(ones)["pass_rate"]
    assert (m.value, m.se, m.ci_high) == (1.0, 0.0, 1.0)
    assert m.ci_low == pytest.approx(0.025 ** (1 / 5))  # Clopper-Pearson lower bound for 5 of 5 tasks
    zeros = compute_metrics([rec(t, a, 0.0) for t in "abcde" for a in range(2)])
    m = by_name(zeros)["pass_rate"]
    assert (m.value, m.ci_low) == (0.0, 0.0)
    assert m.ci_high == pytest.approx(1 - 0.025 ** (1 / 5))
    assert by_name(zeros)["mean_reward"].value == 0.0


def test_k_larger_than_attempts_is_refused_with_a_clear_error():
    records = [rec("a", 0, 1.0), rec("a", 1, 0.0), rec("b", 0, 1.0)]
    with pytest.raises(ConfigError) as err:
        compute_metrics(records, metrics=["pass@2"])
    assert str(err.value) == (
        "metrics: pass@2 needs at least 2 attempts per task, but task 'b' has 1; set n_attempts ≥ 2 or ask for a smaller k"
    )


def test_metric_names():
    specs = parse_metric_names(["pass@3", "pass^3", "avg", "AVG"])
    assert [(s.name, s.kind, s.k) for s in specs] == [
        ("pass@3", "pass_at_k", 3), ("pass^3", "pass_hat_k", 3), ("mean_reward", "mean_reward", 1)]
    assert [s.name for s in parse_metric_names([])] == ["mean_reward", "pass_rate"]
    with pytest.raises(ConfigError) as err:
        parse_metric_names(["avg", "pass@x"])
    assert str(err.value) == (
        "metrics[1]: unknown metric 'pass@x'; expected avg, mean_reward, pass_rate, pass@K or pass^K (K ≥ 1)")
    with pytest.raises(ConfigError, match=r"metrics\[0\]: 'pass@0': k must be at least 1"):
        parse_metric_names(["pass@0"])


def test_multi_key_rewards_get_metrics_per_key():
    records = [TrialRecord(task="a", rewards={"reward": 1.0, "style": 0.5}), TrialRecord(task="b", rewards={"reward": 0.0, "style": 1.0}),
               TrialRecord(task="c", rewards={"reward": 1.0}), TrialRecord(task="c", attempt=1, rewards={"reward": 0.0})]
    report = compute_metrics(records, metrics=["avg", "pass_rate"])
    assert by_name(report, "reward")["mean_reward"].value == pytest.approx(1.5 / 3)  # task means 1, 0, 0.5
    assert by_name(report, "style")["mean_reward"].value == 0.75  # only tasks a and b report `style`
    assert by_name(report, "style")["mean_reward"].n_tasks == 2
    assert by_name(report, "style")["pass_rate"].value == 0.5
    assert report.flat()["mean_reward/style"] == 0.75 and report.flat()["mean_reward"] == pytest.approx(0.5)
    assert "style" not in {m.reward_key for m in compute_metrics(records[2:]).metrics}


def test_denominator_policies_and_coverage():
    records = [
        rec("a", 0, 1.0),
        rec("a", 1, kind="verifier"),  # no reward: 0 under "zero", left out under "exclude"
        rec("b", 0, 1.0, kind="agent"),  # the verifier still judged it: scored 1 under "zero"
        rec("b", 1, kind="infrastructure"),  # never scored
        rec("c", 0, 0.0),
        rec("c", 1, kind="cancelled"),  # never scored as a failure
    ]
    zero = compute_metrics(records)
    assert by_name(zero)["mean_reward"].value == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert (zero.n_scored, zero.n_infrastructure_errors, zero.n_cancelled, zero.n_excluded_errors) == (4, 1, 1, 0)
    assert zero.coverage == pytest.approx(4 / 6)
    assert "counts 0" in zero.denominator
    exclude = compute_metrics(records, error_policy="exclude")
    assert by_name(exclude)["mean_reward"].value == pytest.approx((1.0 + 0.0) / 2)  # task b has no scored trial
    assert by_name(exclude)["mean_reward"].n_tasks_excluded == 1
    assert (exclude.n_scored, exclude.n_excluded_errors) == (2, 2)
    assert "excluded" in exclude.denominator
    assert exclude.coverage == zero.coverage  # coverage counts only infrastructure errors and cancellations


def test_min_coverage_marks_the_report_unreliable():
    records = [rec(t, 0, 1.0) for t in "abcdef"] + [rec(t, 0, kind="infrastructure") for t in "ghi"]
    report = compute_metrics(records, min_coverage=0.9)
    assert report.coverage == pytest.approx(6 / 9)
    assert not report.reliable
    assert compute_metrics(records, min_coverage=0.6).reliable
    assert not compute_metrics([rec("a", 0, kind="infrastructure")]).reliable  # nothing scored


def test_breakdowns_by_task_metadata():
    records = [rec("a", 0, 1.0), rec("b", 0, 0.0), rec("c", 0, 1.0), rec("d", 0, 0.0)]
    meta = {"a": {"difficulty": "easy", "tags": ["x", "y"]}, "b": {"difficulty": "hard", "tags": ["x"]},
            "c": {"difficulty": "easy"}, "d": {}}
    report = compute_metrics(records, task_metadata=meta, breakdown_keys=["difficulty", "tags"])
    diff = report.breakdowns["difficulty"]
    assert set(diff) == {"easy", "hard", "(none)"}
    assert {k: by_name_list(v)["pass_rate"].value for k, v in diff.items()} == {"easy": 1.0, "hard": 0.0, "(none)": 0.0}
    tags = report.breakdowns["tags"]
    assert by_name_list(tags["x"])["pass_rate"].value == 0.5 and by_name_list(tags["y"])["pass_rate"].n_tasks == 1


def by_name_list(values):
    return {m.name: m for m in values}


def test_t_quantiles_and_clopper_pearson_match_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-4)
    assert t_quantile(0.025, 30) == pytest.approx(-2.0423, abs=1e-4)
    low, high = clopper_pearson(5, 10)
    assert (low, high) == (pytest.approx(0.18709, abs=1e-5), pytest.approx(0.81291, abs=1e-5))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=30).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_pass_at_k_is_monotone_in_k_and_empirical_at_k_equals_n(nc):
    n, c = nc
    values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert values[-1] == (1.0 if c > 0 else 0.0)  # with k = n every attempt is drawn
    assert values[0] == pytest.approx(c / n)  # pass@1 is the empirical pass rate
    hats = [pass_hat_k(n, c, k) for k in range(1, n + 1)]
    assert all(b <= a + 1e-12 for a, b in zip(hats, hats[1:]))
    assert hats[-1] == (1.0 if c == n else 0.0)


def test_the_95_percent_interval_covers_the_true_rate_in_93_to_97_percent_of_jobs():
    """2,000 simulated jobs: 40 tasks whose pass probability is drawn from Beta(2, 3), 3 attempts each."""
    rng = random.Random(20261201)
    a, b, n_tasks, n_attempts = 2.0, 3.0, 40, 3
    true_pass_rate = a / (a + b)
    true_pass_at_2 = 1 - b * (b + 1) / ((a + b) * (a + b + 1))  # 1 - E[(1-p)^2] for p ~ Beta(a, b)
    covered = {"pass_rate": 0, "pass@2": 0}
    jobs = 2000
    for _ in range(jobs):
        records = []
        for t in range(n_tasks):
            p = rng.betavariate(a, b)
            records += [{"task": f"t{t}", "attempt": i, "rewards": {"reward": float(rng.random() < p)}} for i in range(n_attempts)]
        m = by_name(compute_metrics(records, metrics=["pass_rate", "pass@2"]))
        covered["pass_rate"] += m["pass_rate"].ci_low <= true_pass_rate <= m["pass_rate"].ci_high
        covered["pass@2"] += m["pass@2"].ci_low <= true_pass_at_2 <= m["pass@2"].ci_high
    for name, hits in covered.items():
        assert 0.93 <= hits / jobs <= 0.97, (name, hits / jobs)
