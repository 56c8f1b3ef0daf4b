"""The driver's side of a job on the cluster: `evalkit run` killed mid-job leaves a job directory the next run
finishes like a local SIGKILL (the dead driver's actors die with it), and a cancelled `evaluate()` leaves no
container, no actor and no scratch file, keeps the caller's Ray connection, and resumes."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import pytest
import ray

from evalkit import evaluate
from tests.conftest import job_containers, popen_cli, read_json, run_cli, write_config, write_task
from tests.ray.conftest import Gate, RayTestCluster, until
from tests.ray.test_ray_faults import LONG_AGENT, two_node_job

pytestmark = pytest.mark.docker


def _config(tmp_path: Path, jobs_dir: Path, name: str, gate: Gate, *, quick: int, gated: int, **ray: str) -> dict:
    tasks = [write_task(tmp_path / "tasks", f"quick-{i}") for i in range(quick)]
    tasks += [write_task(tmp_path / "tasks", f"gated-{i}", solve=gate.solve, task_toml=LONG_AGENT) for i in range(gated)]
    return two_node_job(name, jobs_dir, tasks, **ray)


def _finished(job_dir: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in job_dir.glob("*/result.json")}


def _gated_running(name: str, n: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return sum(c["Labels"]["evalkit.try"].startswith("gated-") and c["State"] == "running" for c in await job_containers(name)) == n
    return check


async def test_a_killed_driver_leaves_a_job_the_next_run_finishes(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path, gate: Gate):
    name = f"ray-driver-{uuid.uuid4().hex[:6]}"
    config = _config(tmp_path, jobs_dir, name, gate, quick=2, gated=2, address=ray_cluster.cluster.address)
    path = write_config(tmp_path / "config.yaml", {**config, "after_run": {"analyze": False, "archive": False}})
    job_dir = jobs_dir / name

    async def quick_done_gated_running() -> bool:
        return len(_finished(job_dir)) == 2 and await _gated_running(name, 2)()

    ray_cluster.snapshot()
    driver = popen_cli("run", str(path), "--quiet")
    try:
        await until(quick_done_gated_running, "the quick trials finished and the gated ones running")
        assert len(ray_cluster.node_agents()) == 2  # the driver's actors, one per node
        ray_cluster.snapshot()
        driver.send_signal(signal.SIGKILL)  # by PID
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.communicate()
    before = _finished(job_dir)
    job_id = read_json(job_dir / "job.json")["job_id"]

    async def actors_gone() -> bool:
        return ray_cluster.node_agents() == []

    await until(actors_gone, "the dead driver's actors gone")  # Ray kills a dead driver's actors
    assert await job_containers(name) != []  # a killed driver cannot clean up: the next run must
    assert [d for d in ray_cluster.scratch_dirs() if job_id in d] != []  # nor can its killed actors

    gate.open()
    again = await asyncio.to_thread(run_cli, "run", str(path), "--quiet")
    ray_cluster.snapshot()
    assert again.returncode == 0, again.stderr[-2000:]
    after = _finished(job_dir)
    for trial, result in before.items():
        assert after[trial] == result  # finished trials were not run again
    summary = read_json(job_dir / "results.json")
    assert summary["status"] == "finished" and summary["n_trials"] == summary["n_finished"] == 4
    assert sorted(summary["trials"]) == sorted(f"{kind}-{i}__0" for kind in ("quick", "gated") for i in range(2))
    assert summary["mean_reward"] == 1.0
    assert await job_containers(name) == []
    await until(actors_gone, "the second run's actors gone")
    assert [d for d in ray_cluster.scratch_dirs() if job_id in d] == []  # the second run removed the first's


async def test_cancelling_evaluate_mid_call_leaves_nothing_and_the_job_resumes(
        ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path, gate: Gate):
    name = f"ray-cancel-{uuid.uuid4().hex[:6]}"
    config = _config(tmp_path, jobs_dir, name, gate, quick=0, gated=4)
    job = asyncio.ensure_future(evaluate(config))
    try:
        await until(_gated_running(name, 4), "four tries running (their actor calls in flight)")
        assert len(ray_cluster.node_agents()) == 2
    finally:
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
    assert await job_containers(name) == []
    assert ray.is_initialized()  # the caller's connection is the caller's
    job_id = read_json(jobs_dir / name / "job.json")["job_id"]
    assert [d for d in ray_cluster.scratch_dirs() if job_id in d] == []

    async def actors_gone() -> bool:
        return ray_cluster.node_agents() == []

    await until(actors_gone, "the cancelled job's actors gone")
    assert read_json(jobs_dir / name / "results.json")["status"] == "interrupted"

    gate.open()
    result = await evaluate(config)
    assert result.summary.status == "finished" and result.summary.n_trials == result.summary.n_finished == 4
    assert all(t.rewards == {"reward": 1.0} for t in result.trials)
    assert await job_containers(name) == []
