"""Images follow the tries: a task's images are made on one node, tries go where their images are while it
has a free slot, and a node that lacks them makes them when a try starts there."""

from __future__ import annotations

import uuid
from pathlib import Path

import aiodocker
import pytest

from evalkit import evaluate
from evalkit.config import EnvironmentConfig
from evalkit.environments import JobIdentity
from evalkit.environments.ray_cluster import Node, RayBackend
from evalkit.tasks import load_task
from tests.conftest import job_containers, read_json, write_task
from tests.ray.conftest import RayTestCluster

N_IMAGES = 4


async def test_placement_prefers_the_node_with_the_images_then_the_most_free_slots(tmp_path: Path):
    x, y = (load_task(write_task(tmp_path / "tasks", name, dockerfile=f"FROM debian:bookworm-slim\nENV T={name}\n"))
            for name in ("x", "y"))
    a, b = Node("a" * 32, "node-a", None), Node("b" * 32, "node-b", None)
    config = EnvironmentConfig(backend="ray", ray={"max_trials_per_node": 2})
    backend = RayBackend(config, JobIdentity(job_id="j", job_name="j", job_dir=tmp_path), [a, b], owns_connection=False,
                         driver_address="node-a", run_id="r")
    a.image_keys.add(str(x.environment_dir))

    assert [(await backend.place(x)).node_id[0] for _ in range(3)] == ["a", "a", "b"]  # a is full: b makes x's image
    assert str(x.environment_dir) in b.image_keys
    assert (await backend.place(y)).node_id[0] == "b"  # nobody has y's: the most free slots
    backend.free(a)
    assert (await backend.place(y)).node_id[0] == "a"  # b (which has y's now) is full
    assert (a.in_flight, a.tries, b.in_flight, b.tries) == (2, 3, 2, 2)


@pytest.mark.docker
async def test_each_image_is_made_on_one_node_when_capacity_allows(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    marker = uuid.uuid4().hex
    tasks = [write_task(tmp_path / "tasks", f"image-{i}", dockerfile=f"FROM debian:bookworm-slim\nENV IMAGE={marker}-{i}\n")
             for i in range(N_IMAGES)]
    name = f"ray-images-{marker[:6]}"
    try:
        result = await evaluate({"job_name": name, "jobs_dir": str(jobs_dir), "n_concurrent": N_IMAGES,
                                 "dataset": {"tasks": [{"path": str(t)} for t in tasks]},
                                 "environment": {"backend": "ray", "network_mode": "host",
                                                 "ray": {"resources": {"docker": 1}, "max_trials_per_node": N_IMAGES // 2}}})
    finally:
        async with aiodocker.Docker() as docker:
            for image in await docker.images.list(filters={"label": [f"evalkit.built-by={name}"]}):
                await docker.images.delete(image["Id"], force=True)

    assert sorted((t.task_name, t.rewards["reward"] if t.rewards else None, t.error) for t in result.trials) == [
        (f"image-{i}", 1.0, None) for i in range(N_IMAGES)]
    nodes = read_json(result.job_dir / "results.json")["nodes"]
    assert set(nodes) == {node_id[:12] for node_id in ray_cluster.node_ids().values()}
    # Both nodes share this machine's engine: an image made on one node would be found ("reused") by the
    # other if a try went there, and built twice if both prepared it. Neither happens.
    assert sorted(n["images"]["built"] for n in nodes.values()) == [N_IMAGES // 2, N_IMAGES // 2]
    assert [n["images"]["reused"] for n in nodes.values()] == [0, 0]
    assert [n["tries"] for n in nodes.values()] == [N_IMAGES // 2, N_IMAGES // 2]
    assert read_json(result.job_dir / "results.json")["images"]["built"] == N_IMAGES
    assert await job_containers(name) == []
