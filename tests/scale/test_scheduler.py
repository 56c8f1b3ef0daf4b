"""The scheduler under load and after failures, in real Docker: no pool deadlock with 150 tries in flight,
a stuck agent cut off with its container removed, `--retry-errors` reruns exactly the errored trials, and
`n_concurrent: auto` records the level it chose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalkit import evaluate
from tests.conftest import HOST_NETWORK, job_containers, read_json, run_cli, write_config, write_task
from tests.conftest import unique

pytestmark = pytest.mark.docker


async def test_150_tries_in_flight_with_short_execs_and_timeouts_all_complete(tmp_path: Path):
    # Every try holds an exec stream while others time out and open their kill exec: with a bounded
    # connection pool the kills would wait for connections the streams hold, and the job would hang.
    for i in range(50):
        write_task(tmp_path / "tasks", f"busy-{i:02d}")
    name = unique("150")
    result = await evaluate({"job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_attempts": 3, "n_concurrent": 150, **HOST_NETWORK,
                             "agent": {"name": "tests.scale.agents:ShortExecsAgent"},
                             "dataset": {"path": str(tmp_path / "tasks")}})
    summary = result.summary
    assert (summary.n_trials, summary.n_finished, summary.errors, summary.mean_reward) == (150, 150, {}, 1.0)
    assert await job_containers(name) == []


async def test_a_stuck_custom_agent_is_cut_off_and_its_container_removed(tmp_path: Path):
    write_task(tmp_path / "tasks", "stuck", task_toml="[agent]\ntimeout_sec = 1\n[verifier]\ntimeout_sec = 30\n")
    name = unique("stuck")
    result = await evaluate({"job_name": name, **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                             "agent": {"name": "tests.scale.agents:StuckAgent"}, "timeouts": {"grace_sec": 1},
                             "dataset": {"path": str(tmp_path / "tasks")}})
    (trial,) = result.trials
    assert (trial.error.type, trial.error.kind, trial.error.phase) == ("AgentTimeoutError", "agent", "agent")
    assert trial.agent_outcome.timed_out and trial.rewards == {"reward": 0.0}  # the verifier still ran
    assert await job_containers(name) == []


def test_retry_errors_reruns_exactly_the_errored_trials_and_keeps_every_try(tmp_path: Path):
    tasks = tmp_path / "tasks"
    write_task(tasks, "fine")
    write_task(tasks, "no-reward", test="true")  # RewardFileMissingError until fixed below
    write_task(tasks, "agent-fails", solve="exit 4")  # AgentExitError (the verifier still gives 0)
    name = unique("rerun")
    config = write_config(tmp_path / "job.yaml", {"job_name": name, **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "n_attempts": 2,
                                                 "agent": {"name": "tests.scale.agents:StrictOracle"},
                                                 "dataset": {"path": str(tasks)}})
    first = run_cli("run", str(config), "--quiet")
    assert first.returncode == 1, first.stderr
    job = tmp_path / "jobs" / name
    before = {p.parent.name: p.read_bytes() for p in job.glob("*/result.json")}
    assert sorted(before) == [f"{t}__{a}" for t in ("agent-fails", "fine", "no-reward") for a in (0, 1)]

    (tasks / "no-reward" / "tests" / "test.sh").write_text("echo 1 > /logs/verifier/reward.txt\n")
    bad = run_cli("run", str(config), "--quiet", "--retry-errors", "NoSuchError")
    assert bad.returncode == 2 and "--retry-errors: unknown error type or kind 'NoSuchError'" in bad.stderr
    again = run_cli("run", str(config), "--quiet", "--retry-errors", "RewardFileMissingError")
    assert again.returncode == 1, again.stderr  # agent-fails still errored

    after = {p.parent.name: p.read_bytes() for p in job.glob("*/result.json")}
    assert sorted(set(after) - set(before)) == ["no-reward__0-try1", "no-reward__1-try1"]
    assert all(after[k] == v for k, v in before.items())  # every earlier try kept as it was
    summary = read_json(job / "results.json")
    assert summary["trials"]["no-reward__0"] == "no-reward__0-try1"
    assert summary["tasks"]["no-reward"]["rewards"] == [1.0, 1.0]
    assert summary["errors"] == {"AgentExitError": 2} and summary["n_tries"] == 8

    by_kind = run_cli("run", str(config), "--quiet", "--retry-errors", "agent")
    assert by_kind.returncode == 1
    assert sorted(p.parent.name for p in job.glob("agent-fails__*/result.json")) == [
        "agent-fails__0", "agent-fails__0-try1", "agent-fails__1", "agent-fails__1-try1"]
    assert read_json(job / "results.json")["n_tries"] == 10


async def test_auto_concurrency_records_the_levels_it_chose(tmp_path: Path):
    for i in range(16):
        write_task(tmp_path / "tasks", f"auto-{i:02d}", solve="sleep 1; echo done > /tmp/out.txt")
    name = unique("auto")
    result = await evaluate({"job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_concurrent": "auto", **HOST_NETWORK,
                             "n_concurrent_max": 6, "dataset": {"path": str(tmp_path / "tasks")}})
    summary = result.summary
    assert (summary.n_finished, summary.mean_reward) == (16, 1.0)
    levels = summary.concurrency
    assert levels[0].reason == "start" and levels[0].at_sec == 0.0
    assert all(1 <= change.level <= 6 for change in levels)
    on_disk = json.loads((tmp_path / "jobs" / name / "results.json").read_text())
    assert on_disk["concurrency"] == [change.model_dump() for change in levels]
