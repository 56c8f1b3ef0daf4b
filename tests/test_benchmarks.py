"""Both bundled benchmarks, run by the oracle in real containers: every task's outcome exactly as its
`expected.json` says, and the faults never disturb the other trials of the same job."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit import evaluate
from tests.conftest import BENCHMARKS, expected_outcomes, job_containers, read_json

pytestmark = pytest.mark.docker


async def test_smoke_and_faults_in_one_job(jobs_dir: Path):
    expected = {**expected_outcomes("evalkit-smoke"), **expected_outcomes("evalkit-faults")}
    tasks = [
        {"path": str(BENCHMARKS / bench / name)}
        for bench in ("evalkit-smoke", "evalkit-faults")
        for name in expected_outcomes(bench)
    ]
    result = await evaluate(
        {"job_name": "bundled", "jobs_dir": str(jobs_dir), "n_concurrent": 4, "dataset": {"tasks": tasks}}
    )

    outcomes = {t.task_name: {"rewards": t.rewards, "error": t.error and t.error.type} for t in result.trials}
    assert outcomes == expected
    summary = result.summary
    assert summary.status == "finished"
    assert summary.n_trials == summary.n_finished == len(expected)
    assert summary.errors == {
        error: sum(1 for e in expected.values() if e["error"] == error)
        for error in {e["error"] for e in expected.values() if e["error"]}
    }
    assert await job_containers("bundled") == []

    on_disk = read_json(jobs_dir / "bundled" / "results.json")
    assert on_disk["status"] == "finished" and on_disk["n_finished"] == len(expected)
    for trial in result.trials:
        trial_dir = jobs_dir / "bundled" / trial.trial_name
        assert read_json(trial_dir / "result.json")["task_name"] == trial.task_name
        verdict = read_json(trial_dir / "evaluation" / "verdict.json")
        assert verdict["rewards"] == trial.rewards
        if trial.error is None or trial.error.type != "EnvironmentBuildError":
            assert (trial_dir / "evaluation" / "test-stdout.txt").exists() or trial.error is not None
            assert (trial_dir / "agent" / "oracle.txt").exists()


async def test_limits_from_task_toml_are_applied(jobs_dir: Path):
    result = await evaluate(
        {"job_name": "limits", "jobs_dir": str(jobs_dir), "dataset": {"name": "evalkit-smoke@1.0", "include": ["resource-limits"]}}
    )
    (trial,) = result.trials
    limits = (jobs_dir / "limits" / trial.trial_name / "evaluation" / "limits.txt").read_text()
    assert "536870912" in limits  # memory_mb = 512
