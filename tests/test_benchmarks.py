"""Both bundled benchmarks, run by the oracle in real containers: every task's outcome exactly as its
`expected.json` says, and the faults never disturb the other trials of the same job."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from evalkit import evaluate
from tests.conftest import BENCHMARKS, HOST_NETWORK, expected_outcomes, job_containers, read_json

pytestmark = pytest.mark.docker


async def test_smoke_and_faults_in_one_job(jobs_dir: Path):
    expected = {**expected_outcomes("evalkit-smoke"), **expected_outcomes("evalkit-faults")}
    tasks = [
        {"path": str(BENCHMARKS / bench / name)}
        for bench in ("evalkit-smoke", "evalkit-faults")
        for name in expected_outcomes(bench)
    ]
    name = f"engine-bundled-{uuid.uuid4().hex[:6]}"
    result = await evaluate({"job_name": name, **HOST_NETWORK, "jobs_dir": str(jobs_dir), "n_concurrent": 4, "dataset": {"tasks": tasks}})

    outcomes = {t.task_name: {"rewards": t.rewards, "error": t.error and t.error.type} for t in result.trials}
    assert outcomes == expected
    summary = result.summary
    assert summary.status == "finished"
    assert summary.n_trials == summary.n_finished == len(expected)
    assert summary.errors == {
        error: sum(1 for e in expected.values() if e["error"] == error)
        for error in {e["error"] for e in expected.values() if e["error"]}
    }
    assert await job_containers(name) == []
    kinds = {t.task_name: t.error.kind for t in result.trials if t.error}
    assert kinds == {"agent-timeout": "agent", "bad-reward": "verifier", "build-fails": "task",
                     "empty-reward": "verifier", "no-reward": "verifier", "verifier-timeout": "verifier"}

    on_disk = read_json(jobs_dir / name / "results.json")
    assert on_disk["status"] == "finished" and on_disk["n_finished"] == len(expected)
    for trial in result.trials:
        trial_dir = jobs_dir / name / trial.trial_name
        assert read_json(trial_dir / "result.json")["task_name"] == trial.task_name
        verdict = read_json(trial_dir / "evaluation" / "verdict.json")
        assert verdict["rewards"] == trial.rewards
        if trial.error is not None and trial.error.type == "EnvironmentBuildError":
            assert trial.environment is None and trial.downloads == {}
            continue
        # Copied out of the container after each phase: the agent's log, the verifier's output.
        assert (trial_dir / "agent" / "oracle.txt").exists()
        assert trial.downloads["agent"].files >= 1 and trial.downloads["agent"].error is None
        if trial.error is None or trial.error.type != "VerifierTimeoutError":
            assert (trial_dir / "evaluation" / "test-stdout.txt").exists()


async def test_limits_from_task_toml_are_applied_and_recorded(jobs_dir: Path):
    result = await evaluate(
        {"job_name": f"engine-limits-{uuid.uuid4().hex[:6]}", **HOST_NETWORK, "jobs_dir": str(jobs_dir),
         "dataset": {"name": "evalkit-smoke@1.0", "include": ["resource-limits"]}, "environment": {"pids_limit": 300, "network_mode": "host"}}
    )
    (trial,) = result.trials
    limits = dict(line.split("=", 1) for line in (result.job_dir / trial.trial_name / "evaluation" / "limits.txt").read_text().splitlines())
    assert limits["memory_limit_bytes"] == "536870912"  # memory_mb = 512
    quota, period = limits["cpu_max"].split()
    assert int(quota) == int(period)  # cpus = 1
    envelope = trial.environment
    assert (envelope.cpus, envelope.memory_mb, envelope.storage_mb, envelope.pids_limit) == (1.0, 512, 10240, 300)
    assert envelope.storage_enforced is False  # this engine: overlay2 on ext4 cannot cap a container's disk
