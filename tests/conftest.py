"""Shared fixtures: real Docker, real files, real subprocesses of the `evalkit` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiodocker
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
HOST_NETWORK = {"environment": {"network_mode": "host"}}
"""For jobs of public tasks: this machine's engine has no bridge network, so the host network is named
explicitly (without a choice such a job is a config error)."""
BENCHMARKS = REPO / "benchmarks"


def write_task(
    root: Path,
    name: str,
    *,
    solve: str = "echo done > /tmp/out.txt",
    test: str = 'grep -q done /tmp/out.txt && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt',
    task_toml: str = "[agent]\ntimeout_sec = 60\n[verifier]\ntimeout_sec = 60\n",
    dockerfile: str | None = "FROM debian:bookworm-slim\nWORKDIR /app\n",
) -> Path:
    """A Harbor task directory with the given scripts; returns its path."""
    task = root / name
    for sub in ("tests", "solution"):
        (task / sub).mkdir(parents=True, exist_ok=True)
    (task / "task.toml").write_text(task_toml)
    (task / "instruction.md").write_text(f"Task {name}.\n")
    if dockerfile is not None:
        (task / "environment").mkdir(exist_ok=True)
        (task / "environment" / "Dockerfile").write_text(dockerfile)
    (task / "solution" / "solve.sh").write_text(solve + "\n")
    (task / "tests" / "test.sh").write_text(test + "\n")
    return task


def unique(name: str) -> str:
    """A job or image name no other run on the shared Docker engine has: labels must not collide."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def slow_tasks(root: Path, n: int, seconds: float = 1.5) -> Path:
    """`n` tasks whose reference solution sleeps, so a job is still running when a test acts on it."""
    for i in range(n):
        write_task(root, f"slow-{i:02d}", solve=f"sleep {seconds}; echo done > /tmp/out.txt")
    return root


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalkit", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def popen_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "evalkit", *args],
        cwd=cwd or REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def expected_outcomes(benchmark: str) -> dict[str, dict]:
    return read_json(BENCHMARKS / benchmark / "expected.json")


async def job_containers(job_name: str) -> list[dict]:
    async with aiodocker.Docker() as docker:
        containers = await docker.containers.list(all=True, filters={"label": [f"evalkit.job={job_name}"]})
        return [c._container for c in containers]


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    return tmp_path / "jobs"
