"""A try's container work, as the engine itself reports it (its event stream): what the per-try overhead is
made of, so a new round trip cannot creep in unnoticed."""

from __future__ import annotations

import asyncio
import collections
import json
import os
from pathlib import Path

import aiodocker

from evalkit import evaluate
from tests.conftest import HOST_NETWORK, write_task
from tests.conftest import unique


async def _engine_events(docker: aiodocker.Docker, job_name: str, seen: list[str], destroyed: asyncio.Event) -> None:
    filters = json.dumps({"label": [f"evalkit.job={job_name}"]})
    async with docker._query("events", params={"filters": filters}, timeout=None) as response:
        async for line in response.content:
            if line.strip():
                action = json.loads(line).get("Action", "").split(":")[0]
                seen.append(action)
                if action == "destroy":
                    destroyed.set()


async def test_a_try_makes_four_execs_two_uploads_and_one_download(tmp_path: Path):
    # start (/logs and the process baseline), solve.sh, the kill before the verifier, test.sh; solution/
    # and tests/ uploaded with their scripts executable (no chmod exec); /logs back in one archive.
    task = write_task(tmp_path / "tasks", "calls")
    (task / "tests" / "test.sh").write_text("#!/bin/sh\n[ -x /tests/test.sh ] && echo 1 > /logs/verifier/reward.txt\n")
    os.chmod(task / "tests" / "test.sh", 0o644)  # the upload makes it executable, not the host's mode
    name = unique("calls")
    seen: list[str] = []
    destroyed = asyncio.Event()
    async with aiodocker.Docker() as docker:
        watch = asyncio.ensure_future(_engine_events(docker, name, seen, destroyed))
        try:
            await asyncio.sleep(0.5)  # the stream is open before the job starts
            result = await evaluate({"job_name": name, **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                                     "dataset": {"path": str(tmp_path / "tasks")}})
            await asyncio.wait_for(destroyed.wait(), timeout=60)
        finally:
            watch.cancel()
            await asyncio.wait([watch])
    assert result.summary.mean_reward == 1.0 and result.summary.errors == {}
    counts = collections.Counter(seen)
    assert {action: counts[action] for action in ("create", "start", "exec_create", "extract-to-dir", "archive-path", "destroy")} == {
        "create": 1, "start": 1, "exec_create": 4, "extract-to-dir": 2, "archive-path": 1, "destroy": 1}
