"""A job's life beyond the happy path: SIGKILL then resume, SIGINT, retries, changed config, no Docker,
one runner per job, broken tasks, failures outside any try."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from evalkit import evaluate
from evalkit.errors import ConfigError
from tests.conftest import BENCHMARKS, HOST_NETWORK, job_containers, popen_cli, read_json, run_cli, slow_tasks, unique, write_config, write_task

pytestmark = pytest.mark.docker


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
        {"job_name": name, **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "n_concurrent": 2, "dataset": {"path": str(tasks_dir)}, **extra},
    )


async def test_sigkill_then_resume_counts_each_trial_once(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 8)
    name = unique("killed")
    config = job_config(tmp_path, name, tasks)
    job_dir = tmp_path / "jobs" / name
    proc = popen_cli("run", str(config), "--quiet")
    wait_for(lambda: len(finished_trials(job_dir)) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = finished_trials(job_dir)
    assert 3 <= len(before) < 8
    assert await job_containers(name) != []  # a killed process cannot clean up: the rerun must

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
    assert await job_containers(name) == []


async def test_sigint_stops_cleanly(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 6, seconds=30)
    name = unique("interrupted")
    config = job_config(tmp_path, name, tasks)
    job_dir = tmp_path / "jobs" / name
    proc = popen_cli("run", str(config), "--quiet")
    wait_for(lambda: len(list(job_dir.glob("*/environment"))) + len(list(job_dir.glob("*__0"))) >= 2)
    time.sleep(2)  # the agents are running
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert await job_containers(name) == []
    summary = json.loads((job_dir / "results.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["n_finished"] == 0 and summary["n_trials"] == 6
    assert not list(job_dir.glob("**/*.tmp"))


async def test_retries_keep_every_try(tmp_path: Path):
    result = await evaluate(
        {
            "job_name": unique("retried"),
            **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
            "dataset": {"tasks": [{"path": str(BENCHMARKS / "evalkit-faults" / "no-reward")}]},
            "retry": {"max_retries": 2, "include_errors": ["RewardFileMissingError"], "backoff_sec": 0.01},
        }
    )
    (trial,) = result.trials
    assert trial.error.type == "RewardFileMissingError" and trial.try_index == 2
    assert result.summary.n_tries == 3 and result.summary.n_finished == 1
    tries = finished_trials(result.job_dir)
    assert sorted(tries) == ["no-reward__0", "no-reward__0-try1", "no-reward__0-try2"]
    assert [tries[n]["will_retry"] for n in sorted(tries)] == [True, True, False]


async def test_changed_config_is_refused_on_resume(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 1, seconds=0)
    name = unique("changing")
    base = {"job_name": name, **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tasks)},
            "agent": {"name": "oracle", "kwargs": {}}}
    await evaluate(base)
    await evaluate({**base, "n_concurrent": 8})  # how fast is not what: allowed
    with pytest.raises(ConfigError) as info:
        await evaluate({**base, "n_attempts": 2, "agent": {"name": "nop"}})
    message = str(info.value)
    assert message.startswith(f"job {name!r} already exists in {tmp_path / 'jobs' / name} with a different config; changed: ")
    assert "agent.name ('oracle' → 'nop')" in message and "n_attempts (1 → 2)" in message


async def test_a_changed_secret_is_noticed_and_never_shown(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 1, seconds=0)
    base = {"job_name": unique("secret"), **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tasks)},
            "agent": {"name": "tests.test_lifecycle:KeyedNop", "kwargs": {"api_key": "sk-first-secret-1"}}}
    first = await evaluate(base)
    on_disk = (first.job_dir / "job.json").read_text() + (first.job_dir / "config.yaml").read_text()
    assert "sk-first-secret-1" not in on_disk
    with pytest.raises(ConfigError) as info:
        await evaluate({**base, "agent": {**base["agent"], "kwargs": {"api_key": "sk-second-secret-2"}}})
    assert str(info.value).endswith("changed: agent.kwargs.api_key (a secret; its value is not shown). "
                                    "Use another job_name, or restore the config to resume.")
    assert "sk-first" not in str(info.value) and "sk-second" not in str(info.value)


class KeyedNop:
    """The nop agent, with a key it never uses: what a real agent's config looks like."""

    name = "keyed-nop"

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key

    async def setup(self, env) -> None:
        pass

    async def run(self, task, env, *, model, timeout_sec):
        from evalkit.agents import AgentResult

        return AgentResult(exit_code=0)


def test_docker_unreachable_exits_3_and_the_job_is_not_marked_interrupted(tmp_path: Path):
    tasks = slow_tasks(tmp_path / "tasks", 1, seconds=0)
    config = job_config(tmp_path, "nodocker", tasks, environment={"docker_host": f"unix://{tmp_path}/no-docker.sock"})
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 3
    assert f"evalkit: error: the Docker engine at unix://{tmp_path}/no-docker.sock is unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "jobs" / "nodocker" / "results.json").exists()  # it never started


def test_unknown_dataset_exits_2_with_suggestions(tmp_path: Path):
    config = write_config(tmp_path / "cfg.yaml", {"job_name": "x", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"name": "evalkit-smok"}})
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 2
    assert "unknown dataset 'evalkit-smok'" in result.stderr and "evalkit-smoke" in result.stderr


def test_missing_task_path_exits_2(tmp_path: Path):
    config = write_config(
        tmp_path / "cfg.yaml",
        {"job_name": "x", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"tasks": [{"path": str(tmp_path / "nope")}]}},
    )
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 2
    assert str(tmp_path / "nope") in result.stderr


def test_cli_exit_1_when_trials_error(tmp_path: Path):
    config = write_config(
        tmp_path / "cfg.yaml",
        {"job_name": unique("errs"), **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
         "dataset": {"tasks": [{"path": str(BENCHMARKS / "evalkit-faults" / "bad-reward")}]}},
    )
    result = run_cli("run", str(config))
    assert result.returncode == 1
    assert "RewardParseError" in result.stderr


async def test_clean_removes_a_jobs_leftover_containers(tmp_path: Path):
    import aiodocker

    leftover, other = unique("leftover"), unique("other")
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


# ------------------------------------------------------------------------------------------ one job, one runner


async def test_a_second_runner_of_a_running_job_is_refused(tmp_path: Path):
    import socket

    name = unique("locked")
    config = job_config(tmp_path, name, slow_tasks(tmp_path / "tasks", 2, seconds=20))
    job_dir = tmp_path / "jobs" / name
    first = popen_cli("run", str(config), "--quiet")
    try:
        containers = await running_containers(name, 2)
        second = run_cli("run", str(config), "--quiet")
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"evalkit: error: job {name!r} is already running in {job_dir} (pid {first.pid} on host "
            f"{socket.gethostname()}); wait for it to finish or stop it, or give this run another job_name"
        )
        with pytest.raises(ConfigError, match=rf"^job {name!r} is already running in "):
            await evaluate(config)
        assert [c["Id"] for c in await job_containers(name)] == [c["Id"] for c in containers]  # untouched
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130
    again = run_cli("run", str(config), "--quiet")  # the lock died with its holder
    assert again.returncode == 0, again.stderr


async def running_containers(job_name: str, n: int, timeout: float = 120.0) -> list[dict]:
    """The job's containers, once `n` of them run."""
    import asyncio

    deadline = time.monotonic() + timeout
    while len(containers := [c for c in await job_containers(job_name) if c["State"] == "running"]) < n:
        assert time.monotonic() < deadline, "containers did not start in time"
        await asyncio.sleep(0.2)
    return containers


async def test_two_jobs_with_one_name_in_different_directories_keep_their_containers(tmp_path: Path):
    name = unique("twin")
    tasks = slow_tasks(tmp_path / "tasks", 4, seconds=3)
    configs = [
        write_config(tmp_path / f"{side}.yaml", {"job_name": name, **HOST_NETWORK, "jobs_dir": str(tmp_path / side), "n_concurrent": 4,
                                                  "dataset": {"path": str(tasks)}})
        for side in ("left", "right")
    ]
    left = popen_cli("run", str(configs[0]), "--quiet")
    wait_for(lambda: len(list((tmp_path / "left" / name).glob("*__0"))) == 4)
    right = run_cli("run", str(configs[1]), "--quiet")  # starts (and sweeps) while the left job runs
    left.communicate(timeout=120)
    assert (left.returncode, right.returncode) == (0, 0), right.stderr
    for side in ("left", "right"):
        summary = read_json(tmp_path / side / name / "results.json")
        assert (summary["mean_reward"], summary["n_errored"]) == (1.0, 0)
    assert await job_containers(name) == []


async def test_clean_keeps_the_containers_of_a_running_job(tmp_path: Path):
    import aiodocker

    name = unique("busy")
    config = job_config(tmp_path, name, slow_tasks(tmp_path / "tasks", 2, seconds=8))
    job_dir = tmp_path / "jobs" / name
    proc = popen_cli("run", str(config), "--quiet")
    async with aiodocker.Docker() as docker:  # and a leftover of the same name from a job that is gone
        await docker.containers.create({"Image": "debian:bookworm-slim", "Cmd": ["true"],
                                        "Labels": {"evalkit.job": name, "evalkit.job_dir": str(tmp_path / "gone")}})
    running = {c["Id"] for c in await running_containers(name, 2) if c["Labels"].get("evalkit.job_dir") == str(job_dir)}
    assert len(running) == 2
    cleaned = run_cli("clean", "--job", name)
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.splitlines() == [f"removed 1 container(s) of job {name}",
                                           f"kept the containers of running job(s): {name}"]
    assert {c["Id"] for c in await job_containers(name)} == running
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert read_json(job_dir / "results.json")["mean_reward"] == 1.0
    assert await job_containers(name) == []


async def test_job_files_are_readable_by_others(tmp_path: Path):
    result = await evaluate({"job_name": unique("modes"), **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                             "dataset": {"path": str(slow_tasks(tmp_path / "tasks", 1, seconds=0))}})
    files = [p for p in result.job_dir.rglob("*") if p.is_file()]
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}
    assert {"job.json", "results.json", "config.yaml", "tasks.lock.json", "result.json", "verdict.json"} <= {p.name for p in files}
    job = read_json(result.job_dir / "job.json")
    assert uuid.UUID(job["job_id"]) and read_json(result.job_dir / "results.json")["job_id"] == job["job_id"]


# ------------------------------------------------------------------------------------------ one bad task


def broken_tasks(root: Path) -> Path:
    write_task(root, "good")
    write_task(root, "bad-toml", task_toml="[agent\n")
    write_task(root, "windows", task_toml='[environment]\nos = "windows"\n')
    write_task(root, "greedy", task_toml='[environment.env]\nK = "${EVALKIT_ENGINE_TEST_KEY}"\n')
    return root


def test_broken_tasks_are_listed_up_front_and_the_rest_runs(tmp_path: Path):
    name = unique("broken")
    config = job_config(tmp_path, name, broken_tasks(tmp_path / "tasks"))
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "3 task(s) cannot run and are recorded as errors:"
    assert lines[1].startswith("  bad-toml: TaskConfigError: ") and "malformed TOML" in lines[1]
    assert lines[2] == ("  greedy: TaskConfigError: task 'greedy': environment.env.K refers to ${EVALKIT_ENGINE_TEST_KEY}, which "
                        "environment.pass_env does not list; a task reads only host variables the job passes")
    assert lines[3] == f"  windows: TaskUnsupportedError: task 'windows' ({tmp_path / 'tasks' / 'windows'}): environment.os = 'windows': only Linux environments are supported"
    job_dir = tmp_path / "jobs" / name
    summary = read_json(job_dir / "results.json")
    assert sorted(summary["task_errors"]) == ["bad-toml", "greedy", "windows"]
    assert summary["errors"] == {"TaskConfigError": 2, "TaskUnsupportedError": 1}
    assert summary["tasks"]["good"]["rewards"] == [1.0]
    for task in ("bad-toml", "greedy", "windows"):
        trial = read_json(job_dir / f"{task}__0" / "result.json")
        assert (trial["error"]["kind"], trial["error"]["phase"], trial["environment"], trial["phases"]) == ("task", "load", None, {})


def test_a_job_of_only_broken_tasks_finishes_without_docker(tmp_path: Path):
    root = broken_tasks(tmp_path / "tasks")
    for path in (root / "good",):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    config = job_config(tmp_path, "allbroken", root, environment={"docker_host": f"unix://{tmp_path}/no-docker.sock"})
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 1, result.stderr
    summary = read_json(tmp_path / "jobs" / "allbroken" / "results.json")
    assert (summary["status"], summary["n_finished"], summary["n_errored"]) == ("finished", 3, 3)


# ------------------------------------------------------------------------------------------ failures outside a try


def test_a_full_disk_stops_the_job_with_a_clear_error(tmp_path: Path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(jobs)], check=True)
    try:
        tasks = tmp_path / "tasks"
        for i in range(12):
            write_task(tasks, f"fill-{i:02d}", solve="head -c 90000 /dev/urandom > /logs/agent/blob; echo done > /tmp/out.txt")
        name = unique("full")
        config = job_config(tmp_path, name, tasks)
        result = run_cli("run", str(config), "--quiet")
        assert result.returncode == 3, result.stderr
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"evalkit: error: cannot write {jobs / name}/") and "No space left on device" in line
        summary = json.loads((jobs / name / "results.json").read_text())
        assert summary["status"] == "failed" and "No space left on device" in summary["error"]
        for path in (jobs / name).glob("*/result.json"):
            json.loads(path.read_text())  # never half a file
        assert not list((jobs / name).rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(jobs)], check=True)
    assert asyncio_run(job_containers(name)) == []


def test_an_unusable_jobs_directory_exits_3(tmp_path: Path):
    (tmp_path / "file").write_text("not a directory\n")
    config = write_config(tmp_path / "cfg.yaml", {"job_name": "x", **HOST_NETWORK, "jobs_dir": str(tmp_path / "file" / "jobs"),
                                                   "dataset": {"path": str(slow_tasks(tmp_path / "tasks", 1, seconds=0))}})
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 3
    assert result.stderr == f"evalkit: error: cannot create the job directory {tmp_path / 'file' / 'jobs' / 'x'}: Not a directory\n"


async def test_a_failing_progress_callback_stops_the_job(tmp_path: Path):
    from evalkit.errors import JobFailedError

    def explode(result, progress) -> None:
        raise ValueError("display broke")

    name = unique("callback")
    with pytest.raises(JobFailedError, match=r"^the progress callback raised ValueError: display broke$"):
        await evaluate({"job_name": name, **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "n_concurrent": 2,
                        "dataset": {"path": str(slow_tasks(tmp_path / "tasks", 4, seconds=1))}}, on_progress=explode)
    summary = read_json(tmp_path / "jobs" / name / "results.json")
    assert summary["status"] == "failed" and summary["error"] == "the progress callback raised ValueError: display broke"
    assert await job_containers(name) == []


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)
