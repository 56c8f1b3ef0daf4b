"""End to end: a job whose tasks come from a git registry runs in real containers with the oracle agent."""

from __future__ import annotations

import pytest

from evalkit.api import evaluate
from tests.adapters.conftest import GitRemote, write_registry
from tests.conftest import HOST_NETWORK


def versioned_task(name: str, version: str) -> dict[str, str]:
    """A task the oracle solves only with the solution of the same commit as the tests."""
    return {
        f"tasks/{name}/task.toml": "[agent]\ntimeout_sec = 60\n[verifier]\ntimeout_sec = 60\n",
        f"tasks/{name}/instruction.md": f"Write {version} to /app/out.txt.\n",
        f"tasks/{name}/environment/Dockerfile": "FROM debian:bookworm-slim\nWORKDIR /app\n",
        f"tasks/{name}/solution/solve.sh": f"#!/usr/bin/env bash\necho {version} > /app/out.txt\n",
        f"tasks/{name}/tests/test.sh": (
            "#!/usr/bin/env bash\nmkdir -p /logs/verifier\n"
            f"if grep -qx {version} /app/out.txt; then echo 1; else echo 0; fi > /logs/verifier/reward.txt\n"
        ),
    }


@pytest.mark.docker
async def test_an_oracle_job_on_git_tasks_at_three_kinds_of_commit(tmp_path):
    remote = GitRemote(tmp_path)
    c1 = remote.commit(versioned_task("greet", "v1"))
    c2 = remote.commit({**versioned_task("greet", "v2"), **versioned_task("count", "c2")})
    registry = write_registry(tmp_path / "registry.json", [
        {"name": "greet-v1", "git_url": remote.url, "git_commit_id": c1, "path": "tasks/greet"},
        {"name": "greet-v2", "git_url": remote.url, "git_commit_id": c2[:7], "path": "tasks/greet"},
        {"name": "count", "git_url": remote.url, "git_commit_id": "HEAD", "path": "tasks/count"},
    ])
    result = await evaluate({
        "job_name": "engine-gitjob",
        **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
        "dataset": {"registry": str(registry), "name": "gitbench@1.0", "cache_dir": str(tmp_path / "cache")},
        "agent": {"name": "oracle"},
    })
    by_task = {trial.task_name: trial for trial in result.trials}
    assert {name: trial.rewards for name, trial in by_task.items()} == {
        "greet-v1": {"reward": 1.0}, "greet-v2": {"reward": 1.0}, "count": {"reward": 1.0},
    }
    assert by_task["greet-v1"].task_source == {"git_url": remote.url, "git_commit": c1, "path": "tasks/greet"}
    assert by_task["greet-v2"].task_source["git_commit"] == by_task["count"].task_source["git_commit"] == c2
    assert (tmp_path / "jobs" / "engine-gitjob" / "tasks.lock.json").is_file()
