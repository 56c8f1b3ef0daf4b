"""A node of the cluster dies mid-job (its actor and its raylet killed by PID): its running trials are
infrastructure errors retried on the surviving node, every trial is counted once, nothing is left running; a
node that comes alive while the job runs removes what the lost one left and takes tries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from pathlib import Path

import aiodocker
import pytest

from evalkit import evaluate
from evalkit.environments.ray_cluster import LABEL_NODE
from tests.conftest import job_containers, read_json, write_task
from tests.ray.conftest import LABEL, NODE_B, NODE_C, Gate, RayTestCluster, _cmdline, _descendants, until

pytestmark = pytest.mark.docker
N_TASKS = 6
LONG_AGENT = "[agent]\ntimeout_sec = 900\n[verifier]\ntimeout_sec = 60\n"
"""Gated tries wait as long as the test needs (a loaded machine included)."""


async def _running_on(job_name: str, node_id: str, *, stopped_too: bool = False) -> list[str]:
    """The tries whose agent container runs on that node now (or exists at all, with `stopped_too`)."""
    async with aiodocker.Docker() as docker:
        containers = await docker.containers.list(all=stopped_too, filters={"label": [f"evalkit.job={job_name}", f"{LABEL_NODE}={node_id}"]})
        return [c._container["Labels"]["evalkit.try"] for c in containers]


def _node_agent_pid(raylet_pid: int) -> int:
    (pid,) = [p for p in _descendants(raylet_pid) if _cmdline(p).startswith(b"ray::NodeAgent")]
    return pid


def _kill_node_b(ray_cluster: RayTestCluster) -> None:
    """Node B dies: its evalkit actor and its raylet, SIGKILLed by PID."""
    ray_cluster.snapshot()
    raylet = ray_cluster.raylet_pid(ray_cluster.node_b)
    os.kill(_node_agent_pid(raylet), signal.SIGKILL)
    os.kill(raylet, signal.SIGKILL)


async def _stop(job: asyncio.Future) -> None:
    """A job the test leaves running when it fails: cancelled, and its clean-up awaited."""
    if not job.done():
        job.cancel()
        with contextlib.suppress(BaseException):
            await job


def two_node_job(name: str, jobs_dir: Path, tasks: list[Path], **ray: object) -> dict:
    """Four tries in flight over both nodes (two each: the second node gets tries even though images follow
    them), infrastructure errors retried."""
    return {"job_name": name, "jobs_dir": str(jobs_dir), "n_concurrent": 4,
            "dataset": {"tasks": [{"path": str(t)} for t in tasks]},
            "retry": {"max_retries": 2, "backoff_sec": 0.1},
            "environment": {"backend": "ray", "network_mode": "host",
                            "ray": {"resources": {"docker": 1}, "max_trials_per_node": 2, **ray}}}


async def test_a_node_killed_mid_job_loses_no_trial(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    tasks = [write_task(tmp_path / "tasks", f"slow-{i}", solve="sleep 6; echo done > /tmp/out.txt") for i in range(N_TASKS)]
    name = f"ray-faults-{uuid.uuid4().hex[:6]}"
    node_b = ray_cluster.node_ids()[NODE_B]
    config = two_node_job(name, jobs_dir, tasks)
    job = asyncio.ensure_future(evaluate(config))
    try:
        while not (victims := await _running_on(name, node_b)):
            assert not job.done(), "the job ended before anything ran on node B"
            await asyncio.sleep(0.2)
        _kill_node_b(ray_cluster)
        result = await asyncio.wait_for(job, timeout=600)
    finally:
        await _stop(job)
        ray_cluster.replace_node_b()

    summary = result.summary
    assert summary.status == "finished"
    assert summary.n_trials == summary.n_finished == N_TASKS and summary.n_errored == 0
    assert sorted(t.task_name for t in result.trials) == sorted(f"slow-{i}" for i in range(N_TASKS))
    assert all(t.rewards == {"reward": 1.0} for t in result.trials)
    for victim in victims:  # the try that ran on node B: an infrastructure error, retried elsewhere
        first = read_json(jobs_dir / name / victim / "result.json")
        assert first["error"]["type"] == "RayNodeError" and first["error"]["kind"] == "infrastructure"
        assert first["error"]["message"].startswith(f"Ray node {node_b[:12]} ")
        assert first["will_retry"] is True
        assert read_json(jobs_dir / name / f"{victim}-try1" / "result.json")["rewards"] == {"reward": 1.0}
    nodes = read_json(jobs_dir / name / "results.json")["nodes"]
    assert nodes[node_b[:12]]["lost"] is True and nodes[node_b[:12]]["failures"] >= len(victims)
    assert [(n["lost"], n["failures"]) for k, n in nodes.items() if k != node_b[:12]] == [(False, 0)]
    assert summary.n_tries == N_TASKS + sum(1 for t in result.trials for _ in range(t.try_index))
    assert await job_containers(name) == []


async def test_a_node_that_comes_alive_removes_what_the_lost_one_left_and_takes_tries(
        ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path, gate: Gate, caplog: pytest.LogCaptureFixture):
    tasks = [write_task(tmp_path / "tasks", f"gated-{i}", solve=gate.solve, task_toml=LONG_AGENT) for i in range(4)]
    name = f"ray-rejoin-{uuid.uuid4().hex[:6]}"
    old_b = ray_cluster.node_ids()[NODE_B]
    config = two_node_job(name, jobs_dir, tasks)
    job = asyncio.ensure_future(evaluate(config))
    replaced, broken = False, None
    try:
        async def all_waiting() -> bool:  # every try runs, held at the gate: two on each node
            assert not job.done(), "the job ended before its tries were all running"
            return len(await _running_on(name, old_b)) == 2 and len(await job_containers(name)) == 4
        await until(all_waiting, "four tries held at the gate")
        victims = await _running_on(name, old_b)
        _kill_node_b(ray_cluster)
        caplog.set_level(logging.WARNING, logger="evalkit.environments.ray_cluster")
        ray_cluster.drop_node_b()
        broken = ray_cluster.add_node_without_docker()  # comes alive first, cannot join: refused, nothing left

        async def refused() -> bool:
            return any("came alive but cannot join the job: InfrastructureError" in r.getMessage() for r in caplog.records)

        await until(refused, "the node without Docker refused")
        assert not any(f"-{ray_cluster.node_ids()[NODE_C][:12]}-" in d for d in ray_cluster.scratch_dirs())
        ray_cluster.replace_node_b()  # a fresh node B on the same engine and disk (Ray starts nodes from the main thread)
        replaced = True
        new_b = ray_cluster.node_ids()[NODE_B]

        async def leftovers_gone() -> bool:
            return await _running_on(name, old_b, stopped_too=True) == []

        async def retries_on_new_b() -> bool:
            return len(await _running_on(name, new_b)) == 2

        await until(leftovers_gone, "the lost node's containers removed")
        await until(retries_on_new_b, "the victims' retries running on the new node")
        assert [d for d in ray_cluster.scratch_dirs() if f"-{old_b[:12]}-" in d] == []  # the lost actor's scratch
        assert not job.done()
        gate.open()
        result = await asyncio.wait_for(job, timeout=600)
    finally:
        await _stop(job)
        if not replaced:
            ray_cluster.replace_node_b()
        if broken is not None:
            ray_cluster.cluster.remove_node(broken)

    summary = result.summary
    assert summary.status == "finished" and summary.n_trials == summary.n_finished == 4 and summary.n_errored == 0
    assert all(t.rewards == {"reward": 1.0} for t in result.trials)
    for victim in victims:
        first = read_json(jobs_dir / name / victim / "result.json")
        assert (first["error"]["type"], first["will_retry"]) == ("RayNodeError", True)
        assert read_json(jobs_dir / name / f"{victim}-try1" / "result.json")["rewards"] == {"reward": 1.0}
    nodes = read_json(jobs_dir / name / "results.json")["nodes"]
    assert (nodes[old_b[:12]]["lost"], nodes[old_b[:12]]["tries"]) == (True, 2)
    assert (nodes[new_b[:12]]["lost"], nodes[new_b[:12]]["tries"]) == (False, 2)
    assert len(nodes) == 3  # the node without Docker never joined
    assert summary.n_tries == 6
    assert await job_containers(name) == []


async def test_every_node_lost_pauses_the_job_until_a_node_comes_alive(
        ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path, gate: Gate):
    tasks = [write_task(tmp_path / "tasks", f"gated-{i}", solve=gate.solve, task_toml=LONG_AGENT) for i in range(2)]
    name = f"ray-outage-{uuid.uuid4().hex[:6]}"
    old_b = ray_cluster.node_ids()[NODE_B]
    config = two_node_job(name, jobs_dir, tasks, labels={LABEL: "b"})  # node B is the job's only node
    config["retry"]["max_retries"] = 0  # an outage's retries are not the trial's
    job = asyncio.ensure_future(evaluate(config))
    replaced = False
    try:
        async def both_waiting() -> bool:
            assert not job.done(), "the job ended before its tries were running"
            return len(await _running_on(name, old_b)) == 2
        await until(both_waiting, "both tries held at the gate on node B")
        victims = await _running_on(name, old_b)
        _kill_node_b(ray_cluster)

        async def recorded() -> bool:
            assert not job.done(), "the job stopped when its last node was lost"
            return all((jobs_dir / name / v / "result.json").exists() for v in victims)
        await until(recorded, "the lost tries recorded")
        ray_cluster.replace_node_b()
        replaced = True
        new_b = ray_cluster.node_ids()[NODE_B]

        async def retries_on_new_b() -> bool:
            return len(await _running_on(name, new_b)) == 2
        await until(retries_on_new_b, "the retries running on the node that came alive")
        gate.open()
        result = await asyncio.wait_for(job, timeout=600)
    finally:
        await _stop(job)
        if not replaced:
            ray_cluster.replace_node_b()

    summary = result.summary
    assert summary.status == "finished" and summary.n_trials == summary.n_finished == 2 and summary.n_errored == 0
    assert all(t.rewards == {"reward": 1.0} for t in result.trials)
    for victim in victims:
        first = read_json(jobs_dir / name / victim / "result.json")
        assert (first["error"]["type"], first["outage"], first["will_retry"]) == ("RayNodeError", True, True)
    nodes = read_json(jobs_dir / name / "results.json")["nodes"]
    assert (nodes[old_b[:12]]["lost"], nodes[new_b[:12]]["lost"], nodes[new_b[:12]]["tries"]) == (True, False, 2)
    assert await job_containers(name) == []
