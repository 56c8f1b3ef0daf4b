"""The image half of the Harbor task format (#9 item 5, built in `images.py` by the `scale` work): BuildKit-only
Dockerfiles build, a heredoc this engine's frontend cannot parse is refused naming the feature, and a task
image follows its rebuilt base image (the cache key holds every FROM image's digest)."""

from __future__ import annotations

import fcntl
import json
import uuid
from pathlib import Path

import aiodocker
import pytest

from evalkit import evaluate
from evalkit.environments.images import build_image, tar_directory
from tests.conftest import BENCHMARKS, expected_outcomes, job_containers

pytestmark = pytest.mark.docker
BENCH = BENCHMARKS / "evalkit-harbor-format"
BASE_LOCK = Path("/tmp/evalkit-harbor-format-base.lock")
"""The base tag is global to the engine: runs of this test on one engine must not interleave rebuilds."""


async def _build_base(generation: str) -> None:
    context = tar_directory(BENCH / "changed-base" / "base-image")
    async with aiodocker.Docker() as docker:
        lines: list[str] = []
        error = await build_image(docker, context, {"t": "evalkit-harbor-format-base:latest",
                                                    "buildargs": json.dumps({"GENERATION": generation})}, lines.append)
    assert error is None, "".join(lines)[-500:]


async def _run(jobs_dir: Path, tasks: list[str]) -> dict[str, dict]:
    name = f"harbor-images-{uuid.uuid4().hex[:6]}"
    result = await evaluate({"job_name": name, "jobs_dir": str(jobs_dir), "environment": {"network_mode": "none"},
                             "dataset": {"tasks": [{"path": str(BENCH / t)} for t in tasks]}})
    assert await job_containers(name) == []
    return {t.task_name: {"rewards": t.rewards, "error": t.error and t.error.type,
                          "message": t.error and t.error.message} for t in result.trials}


async def test_buildkit_dockerfiles_and_a_changed_base_image(jobs_dir: Path):
    expected = expected_outcomes("evalkit-harbor-format")
    with BASE_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        await _build_base("1")
        first = await _run(jobs_dir, ["buildkit-features", "buildkit-heredoc", "changed-base"])
        await _build_base("2")
        second = await _run(jobs_dir, ["changed-base"])
    for task in first:
        assert {k: first[task][k] for k in ("rewards", "error")} == {k: expected[task][k] for k in ("rewards", "error")}, first[task]
    for text in expected["buildkit-heredoc"]["extra"]["error_message_contains"]:
        assert text in first["buildkit-heredoc"]["message"]
    rerun = expected["changed-base"]["extra"]["rerun_after_rebuilding_base"]
    assert {k: second["changed-base"][k] for k in ("rewards", "error")} == {"rewards": rerun["rewards"], "error": rerun["error"]}
