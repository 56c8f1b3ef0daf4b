"""`evalkit compare`: McNemar, bootstrap direction and MDE against hand computation, and on real jobs."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import orjson

from evalkit.analysis.compare import compare_jobs, mcnemar
from tests.conftest import run_cli


def write_job(job_dir: Path, outcomes: dict[str, list[float]]) -> Path:
    """A job directory with one result.json per trial (what compare reads), rewards as given."""
    for task, rewards in outcomes.items():
        for attempt, reward in enumerate(rewards):
            trial = job_dir / f"{task}__{attempt}"
            trial.mkdir(parents=True)
            trial.joinpath("result.json").write_bytes(orjson.dumps({
                "task_name": task, "attempt": attempt, "rewards": {"reward": reward}, "error": None,
                "started_at": "2026-12-01T00:00:00+00:00"}))
    return job_dir


def test_known_outcomes_give_the_hand_computed_mcnemar_ci_and_mde(tmp_path: Path):
    # A passes tasks 0-9, B passes tasks 2-21 of 30: A only {0,1}, B only {10..21}, both {2..9}, neither 8
    a = write_job(tmp_path / "a", {f"t{i:02d}": [1.0 if i < 10 else 0.0] for i in range(30)})
    b = write_job(tmp_path / "b", {f"t{i:02d}": [1.0 if 2 <= i < 22 else 0.0] for i in range(30)})
    c = compare_jobs(a, b, n_bootstrap=4000, seed=7)
    m = c.mcnemar
    assert (m.n_pairs, m.a_only, m.b_only, m.both, m.neither) == (30, 2, 12, 8, 8)
    assert m.statistic == 81 / 14  # (|2 - 12| - 1)^2 / 14
    assert m.p_value == 2 * (1 + 14 + 91) / 2**14  # exact: 14 discordant pairs
    assert m.method.startswith("exact two-sided binomial")
    diffs = [-1.0] * 2 + [1.0] * 12 + [0.0] * 16
    assert c.mean_reward.difference == 10 / 30 and c.mean_reward.a == 10 / 30 and c.mean_reward.b == 20 / 30
    assert 0 < c.mean_reward.ci_low < 10 / 30 < c.mean_reward.ci_high  # B is better: the interval excludes 0
    sd = statistics.stdev(diffs)
    assert c.mean_reward.sd_task_difference == sd
    assert math.isclose(c.mean_reward.mde, (1.959964 + 0.841621) * sd / math.sqrt(30), rel_tol=1e-5)
    assert c.verdict.startswith("B is better: mean reward +0.333")
    assert c.pass_at_k is not None and c.pass_at_k.difference == c.mean_reward.difference
    assert compare_jobs(a, b, n_bootstrap=4000, seed=7) == c  # seeded: the same numbers every time
    reverse = compare_jobs(b, a, n_bootstrap=4000, seed=7)
    assert reverse.mean_reward.ci_high < 0 and reverse.verdict.startswith("A is better")


def test_mcnemar_chi_square_for_many_discordant_pairs():
    m = mcnemar([(True, False)] * 10 + [(False, True)] * 30 + [(True, True)] * 5)
    assert m.statistic == (20 - 1) ** 2 / 40
    assert m.p_value == math.erfc(math.sqrt(m.statistic / 2))
    assert m.method == "chi-square with continuity correction, 1 df"


def test_real_jobs_oracle_beats_nop(jobs):
    c = compare_jobs(jobs.nop, jobs.oracle, n_bootstrap=2000)
    assert c.n_common_tasks == 11 and c.only_in_a == [] and c.only_in_b == []
    assert c.mean_reward.b == 1.0 and c.mean_reward.difference > 0
    assert c.mcnemar.a_only == 0 and c.mcnemar.b_only > 0
    assert c.pass_at_k is not None  # nop has 1 attempt per task, oracle 2: pass@1 on both
    cli = run_cli("compare", str(jobs.nop), str(jobs.oracle), "--bootstrap", "500")
    assert cli.returncode == 0, cli.stderr
    assert "McNemar: A only 0" in cli.stdout and "mean_reward" in cli.stdout


def test_bad_inputs_are_clear_errors(tmp_path: Path):
    a = write_job(tmp_path / "a", {"x": [1.0]})
    b = write_job(tmp_path / "b", {"y": [1.0]})
    cli = run_cli("compare", str(a), str(b), "--json")
    assert cli.returncode == 2
    assert cli.stderr == f"evalkit: error: {a} and {b} have no scored task in common; nothing to compare\n"
    cli = run_cli("compare", str(a), str(tmp_path / "missing"))
    assert (cli.returncode, cli.stderr) == (2, f"evalkit: error: job directory not found: {tmp_path / 'missing'}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
