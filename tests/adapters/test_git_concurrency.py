"""Jobs sharing one cache: file locks keep concurrent fetches from corrupting it, and never block the loop."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sys
from pathlib import Path

from evalkit.adapters.harbor.cache import repo_key
from tests.adapters.conftest import checkouts, git, git_task, resolve, task_files, temp_files, write_registry

REPO = Path(__file__).resolve().parents[2]

RESOLVE = """
import asyncio, json, sys
from pathlib import Path
from evalkit.adapters.harbor import DatasetConfig, resolve_tasks
refs = asyncio.run(resolve_tasks(DatasetConfig.model_validate_json(sys.argv[1]), base_dir=Path(sys.argv[2])))
print(json.dumps([[r.name, str(r.path), r.git_commit] for r in refs]))
"""


def hold_lock(cache_dir: Path, url: str) -> int:
    """Take the repository's lock as another job would; returns the descriptor to close."""
    path = cache_dir / "repos" / f"{repo_key(url)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def test_two_processes_fetching_into_one_cache_do_not_corrupt_it(tmp_path, remote, cache_dir):
    files = {}
    for i in range(30):
        files |= task_files(f"tasks/t{i}", f"t{i}-v4")
    c4 = remote.commit(files)
    tasks = [git_task(f"t{i}", remote, c4[:9], f"tasks/t{i}") for i in range(30)]
    tasks += [git_task("alpha-v1", remote, remote.commits[1], "tasks/alpha"), git_task("head", remote, "HEAD", "tasks/t0")]
    registry = write_registry(tmp_path / "registry.json", tasks)
    config = json.dumps({"registry": str(registry), "name": "gitbench", "cache_dir": str(cache_dir)})

    fd = hold_lock(cache_dir, remote.url)  # both jobs start, then wait for the lock at the same point
    jobs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", RESOLVE, config, str(tmp_path), cwd=REPO,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for _ in range(2)
    ]
    await asyncio.sleep(1.0)
    assert [job.returncode for job in jobs] == [None, None]
    os.close(fd)
    outputs = [await job.communicate() for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], [err.decode() for _, err in outputs]
    first, second = (json.loads(out) for out, _ in outputs)
    assert first == second and len(first) == 32
    for name, path, commit in first:
        expected = "alpha-v1" if name == "alpha-v1" else f"{'t0' if name == 'head' else name}-v4"
        assert (Path(path) / "tests" / "test.sh").read_text() == f"echo {expected}\n"
        assert commit == (remote.commits[1] if name == "alpha-v1" else c4)
    assert len(checkouts(cache_dir)) == 31 and temp_files(cache_dir) == []
    (repo,) = (cache_dir / "repos").glob("*.git")
    git("--git-dir", str(repo), "fsck", "--connectivity-only", "--no-dangling")


async def test_a_job_waiting_for_the_lock_keeps_the_loop_free_and_can_be_cancelled(tmp_path, remote, cache_dir):
    registry = write_registry(tmp_path / "registry.json", [git_task("alpha", remote, "HEAD", "tasks/alpha")])
    fd = hold_lock(cache_dir, remote.url)
    waiting = asyncio.create_task(resolve(registry, cache_dir))
    ticks = 0
    for _ in range(20):  # the loop keeps running while the job waits
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20 and not waiting.done()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    os.close(fd)  # the cancelled waiter's thread now takes the lock, and must let it go
    (ref,) = await asyncio.wait_for(resolve(registry, cache_dir), timeout=30)
    assert (ref.path / "tests" / "test.sh").read_text() == "echo alpha-v3\n"
    assert temp_files(cache_dir) == []


async def test_concurrent_jobs_in_one_process_share_the_cache(tmp_path, remote, cache_dir):
    registry = write_registry(tmp_path / "registry.json", [
        git_task("alpha", remote, remote.commits[2], "tasks/alpha"), git_task("beta", remote, "HEAD", "tasks/beta"),
    ])
    results = await asyncio.gather(*(resolve(registry, cache_dir) for _ in range(3)))
    assert results[0] == results[1] == results[2]
    assert len(checkouts(cache_dir)) == 2
