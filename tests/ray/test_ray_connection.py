"""Whose Ray connection a job uses: the caller's (left open), or one evalkit opens from `environment.ray.address`
(and shuts down), a Ray Client `ray://` address included; config mistakes name the field and leave nothing behind."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import ray

from evalkit import evaluate
from evalkit.errors import ConfigError
from tests.conftest import job_containers, read_json, run_cli, write_config, write_task
from tests.ray.conftest import LABEL, NODE_A, NODE_B, RayTestCluster

pytestmark = pytest.mark.docker


def _config(tmp_path: Path, jobs_dir: Path, name: str, ray_config: dict) -> dict:
    task = write_task(tmp_path / "tasks", "hello")
    return {"job_name": name, "jobs_dir": str(jobs_dir), "dataset": {"tasks": [{"path": str(task)}]},
            "environment": {"backend": "ray", "network_mode": "host", "ray": ray_config}}


async def test_a_connection_evalkit_opens_is_closed_and_node_selection_is_kept(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    address = ray_cluster.cluster.address
    ray.shutdown()
    try:
        name = f"ray-owned-{uuid.uuid4().hex[:6]}"
        result = await evaluate(_config(tmp_path, jobs_dir, name, {"address": address, "resources": {NODE_A: 1}}))
        assert not ray.is_initialized()  # evalkit opened it, evalkit closed it
    finally:
        ray.init(address=address, log_to_driver=False)
    assert [t.rewards for t in result.trials] == [{"reward": 1.0}]
    nodes = read_json(result.job_dir / "results.json")["nodes"]
    assert list(nodes) == [ray_cluster.node_ids()[NODE_A][:12]]  # only the node with the resource
    assert nodes[ray_cluster.node_ids()[NODE_A][:12]]["tries"] == 1
    assert await job_containers(name) == []


async def test_no_node_with_the_resources_is_a_config_error(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    name = f"ray-nores-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigError) as caught:
        await evaluate(_config(tmp_path, jobs_dir, name, {"resources": {"gpu_docker": 2}}))
    assert str(caught.value) == "environment.ray.resources: no live Ray node offers gpu_docker>=2 (2 node(s) alive)"
    assert ray.is_initialized()
    assert not (jobs_dir / name / "results.json").exists()
    assert await job_containers(name) == []


async def test_nodes_are_selected_by_label(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    name = f"ray-label-{uuid.uuid4().hex[:6]}"
    result = await evaluate(_config(tmp_path, jobs_dir, name, {"resources": {"docker": 1}, "labels": {LABEL: "b"}}))
    assert [t.rewards for t in result.trials] == [{"reward": 1.0}]
    assert list(read_json(result.job_dir / "results.json")["nodes"]) == [ray_cluster.node_ids()[NODE_B][:12]]

    name = f"ray-nolabel-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ConfigError) as caught:
        await evaluate(_config(tmp_path, jobs_dir, name, {"resources": {NODE_A: 1}, "labels": {LABEL: "b"}}))
    assert str(caught.value) == (
        f"environment.ray.labels: no live Ray node carries {LABEL}=b (1 node(s) offer the resources)"
    )
    assert not (jobs_dir / name / "results.json").exists()
    assert await job_containers(name) == []


async def test_no_connection_and_no_address_is_a_config_error(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    ray.shutdown()
    try:
        name = f"ray-noaddr-{uuid.uuid4().hex[:6]}"
        with pytest.raises(ConfigError) as caught:
            await evaluate(_config(tmp_path, jobs_dir, name, {}))
        assert not ray.is_initialized()  # nothing was started
    finally:
        ray.init(address=ray_cluster.cluster.address, log_to_driver=False)
    assert str(caught.value) == (
        "environment.ray.address: Ray is not initialised in this process; set an address "
        "(auto, ray://host:port, host:port) or call ray.init() before running the job"
    )
    assert not (jobs_dir / name / "results.json").exists()


async def test_the_cli_runs_on_the_cluster_and_shows_the_nodes(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    name = f"ray-cli-{uuid.uuid4().hex[:6]}"
    config = _config(tmp_path, jobs_dir, name, {"address": ray_cluster.cluster.address, "resources": {"docker": 1}})
    config["dataset"]["tasks"].append({"path": str(write_task(tmp_path / "tasks", "hello-2"))})
    path = write_config(tmp_path / "config.yaml", {**config, "after_run": {"analyze": False, "archive": False}})
    ray_cluster.snapshot()
    run = await asyncio.to_thread(run_cli, "run", str(path))
    ray_cluster.snapshot()  # the CLI's own Ray processes are checked at the end too
    assert run.returncode == 0, run.stderr[-2000:]
    nodes = read_json(jobs_dir / name / "results.json")["nodes"]
    assert sorted(nodes) == sorted(node_id[:12] for node_id in ray_cluster.node_ids().values())
    for node, stats in nodes.items():
        assert f"node {node}" in run.stderr and stats["in_flight"] == 0
    assert sum(stats["tries"] for stats in nodes.values()) == 2
    assert await job_containers(name) == []


async def test_a_ray_client_address_runs_the_job_like_a_local_run(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    """`ray://`: the driver talks to the cluster through the head's Ray Client server (gRPC), actor calls
    awaited as in a driver on the cluster; the CLI process has no other Ray connection."""
    tasks = [write_task(tmp_path / "tasks", "hello"), write_task(tmp_path / "tasks", "fails", solve="true")]
    runs = {}
    for backend, ray_config in (("docker", {}), ("ray", {"address": f"ray://127.0.0.1:{ray_cluster.client_port}", "resources": {"docker": 1}})):
        name = f"ray-client-{backend}-{uuid.uuid4().hex[:6]}"
        config = {"job_name": name, "jobs_dir": str(jobs_dir), "dataset": {"tasks": [{"path": str(t)} for t in tasks]},
                  "environment": {"backend": backend, "network_mode": "host", "ray": ray_config},
                  "after_run": {"analyze": False, "archive": False}}
        ray_cluster.snapshot()
        run = await asyncio.to_thread(run_cli, "run", str(write_config(tmp_path / f"{backend}.yaml", config)), "--quiet")
        ray_cluster.snapshot()
        assert run.returncode in (0, 1), run.stderr[-2000:]
        runs[backend] = {**read_json(jobs_dir / name / "results.json"), "exit": run.returncode}
        assert await job_containers(name) == []
    local, remote = runs["docker"], runs["ray"]
    assert (remote["status"], remote["exit"]) == (local["status"], local["exit"]) and local["status"] == "finished"
    assert {k: (v["mean_reward"], v["errors"]) for k, v in remote["tasks"].items()} == \
        {k: (v["mean_reward"], v["errors"]) for k, v in local["tasks"].items()}
    assert (remote["n_trials"], remote["n_finished"]) == (local["n_trials"], local["n_finished"]) == (2, 2)
    assert sum(n["tries"] for n in remote["nodes"].values()) == 2 and not any(n["lost"] for n in remote["nodes"].values())
