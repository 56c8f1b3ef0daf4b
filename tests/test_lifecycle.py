"""A job's life beyond the happy path: SIGKILL then resume, SIGINT, retries, changed config, no Docker."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from evalkit import evaluate
from evalkit.errors import ConfigError
from tests.conftest import BENCHMARKS, job_containers, popen_cli, read_json, run_cli, write_config, write_task

pytestmark = pytest.mark.docker


def slow_tasks(root: Path, n: int, seconds: float = 1.5) -> Path:
    for i in range(n):
        write_task(root, f"slow-{i:02d}", solve=f"sleep {seconds}; echo done > /tmp/out.txt")
    return root


def finished_trials(job_dir: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in job_dir.glob("*/result.json")}


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def job_config(tmp_path: Path, name: str, tasks_dir: Path, **extra) -> Path:
    return write_config(
        tmp_path / f"{name}.yaml",
        {"job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_concurrent": 2, "dataset": {"path": str(tasks_dir)}, **extra},
    )


async def test_sigkill_then_resume_counts_each_trial_once(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 8)
    config = job_config(tmp_path, "killed", tasks)
    job_dir = tmp_path / "jobs" / "killed"
    proc = popen_cli("run", str(config), "--quiet")
    wait_for(lambda: len(finished_trials(job_dir)) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = finished_trials(job_dir)
    assert 3 <= len(before) < 8
    assert await job_containers("killed") != []  # a killed process cannot clean up: the rerun must

    again = run_cli("run", str(config), "--quiet")
    assert again.returncode == 0, again.stderr

    after = finished_trials(job_dir)
    for name, result in before.items():
        assert after[name] == result  # finished trials were not run again
    summary = read_json(job_dir / "results.json")
    assert summary["status"] == "finished"
    assert summary["n_trials"] == summary["n_finished"] == 8
    assert sorted(summary["trials"]) == sorted(f"slow-{i:02d}__0" for i in range(8))
    assert summary["mean_reward"] == 1.0
    final_dirs = set(summary["trials"].values())
    assert len(final_dirs) == 8 and final_dirs <= set(after)
    assert await job_containers("killed") == []


async def test_sigint_stops_cleanly(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 6, seconds=30)
    config = job_config(tmp_path, "interrupted", tasks)
    job_dir = tmp_path / "jobs" / "interrupted"
    proc = popen_cli("run", str(config), "--quiet")
    wait_for(lambda: len(list(job_dir.glob("*/agent/oracle.txt"))) >= 2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert await job_containers("interrupted") == []
    summary = json.loads((job_dir / "results.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["n_finished"] == 0 and summary["n_trials"] == 6
    assert not list(job_dir.glob("**/*.tmp"))


async def test_retries_keep_every_try(tmp_path: Path):
    result = await evaluate(
        {
            "job_name": "retried",
            "jobs_dir": str(tmp_path / "jobs"),
            "dataset": {"tasks": [{"path": str(BENCHMARKS / "evalkit-faults" / "no-reward")}]},
            "retry": {"max_retries": 2, "include_errors": ["RewardFileMissingError"], "backoff_sec": 0.01},
        }
    )
    (trial,) = result.trials
    assert trial.error.type == "RewardFileMissingError" and trial.try_index == 2
    assert result.summary.n_tries == 3 and result.summary.n_finished == 1
    tries = finished_trials(tmp_path / "jobs" / "retried")
    assert sorted(tries) == ["no-reward__0", "no-reward__0-try1", "no-reward__0-try2"]
    assert [tries[n]["will_retry"] for n in sorted(tries)] == [True, True, False]


async def test_changed_config_is_refused_on_resume(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 1, seconds=0)
    base = {"job_name": "changing", "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tasks)}}
    await evaluate(base)
    await evaluate({**base, "n_concurrent": 8})  # how fast is not what: allowed
    with pytest.raises(ConfigError) as info:
        await evaluate({**base, "n_attempts": 2, "agent": {"name": "nop"}})
    message = str(info.value)
    assert message.startswith(f"job 'changing' already exists in {tmp_path / 'jobs' / 'changing'} with a different config; changed: ")
    assert "agent.name ('oracle' → 'nop')" in message and "n_attempts (1 → 2)" in message


def test_docker_unreachable_exits_3(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 1, seconds=0)
    config = job_config(tmp_path, "nodocker", tasks, environment={"docker_host": f"unix://{tmp_path}/no-docker.sock"})
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 3
    assert f"evalkit: error: the Docker engine at unix://{tmp_path}/no-docker.sock is unreachable" in result.stderr


def test_unknown_dataset_exits_2_with_suggestions(tmp_path: Path):
    config = write_config(tmp_path / "cfg.yaml", {"job_name": "x", "jobs_dir": str(tmp_path / "jobs"), "dataset": {"name": "evalkit-smok"}})
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 2
    assert "unknown dataset 'evalkit-smok'" in result.stderr and "evalkit-smoke" in result.stderr


def test_missing_task_path_exits_2(tmp_path: Path):
    config = write_config(
        tmp_path / "cfg.yaml",
        {"job_name": "x", "jobs_dir": str(tmp_path / "jobs"), "dataset": {"tasks": [{"path": str(tmp_path / "nope")}]}},
    )
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 2
    assert str(tmp_path / "nope") in result.stderr


def test_cli_exit_1_when_trials_error(tmp_path: Path):
    config = write_config(
        tmp_path / "cfg.yaml",
        {"job_name": "errs", "jobs_dir": str(tmp_path / "jobs"),
         "dataset": {"tasks": [{"path": str(BENCHMARKS / "evalkit-faults" / "bad-reward")}]}},
    )
    result = run_cli("run", str(config))
    assert result.returncode == 1
    assert "RewardParseError" in result.stderr


async def test_clean_removes_a_jobs_leftover_containers(tmp_path: Path):
    import uuid

    import aiodocker

    leftover, other = f"leftover-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    async with aiodocker.Docker() as docker:
        for job in (leftover, other):
            await docker.containers.create(
                {"Image": "debian:bookworm-slim", "Cmd": ["true"], "Labels": {"evalkit.job": job}}
            )
    result = run_cli("clean", "--job", leftover)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"removed 1 container(s) of job {leftover}"
    assert await job_containers(leftover) == []
    assert len(await job_containers(other)) == 1
    assert run_cli("clean", "--job", other).returncode == 0
    assert await job_containers(other) == []
