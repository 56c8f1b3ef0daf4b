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


async def _distinct_images_job(tmp_path: Path, jobs_dir: Path, **environment: object) -> tuple[str, dict, dict]:
    """N_IMAGES tasks, each with an image of its own, over both nodes (half the slots each); returns the
    job's name, outcomes by task and `results.json`. The images the job left are removed."""
    marker = uuid.uuid4().hex
    tasks = [write_task(tmp_path / "tasks", f"image-{i}", dockerfile="FROM debian:bookworm-slim\nCOPY id /image-id\n")
             for i in range(N_IMAGES)]
    for i, task in enumerate(tasks):  # a layer of its own: the image has a size beyond its base
        (task / "environment" / "id").write_text(f"{marker}-{i}\n")
    name = f"ray-images-{marker[:6]}"
    try:
        result = await evaluate({"job_name": name, "jobs_dir": str(jobs_dir), "n_concurrent": N_IMAGES,
                                 "dataset": {"tasks": [{"path": str(t)} for t in tasks]},
                                 "environment": {"backend": "ray", "network_mode": "host", **environment,
                                                 "ray": {"resources": {"docker": 1}, "max_trials_per_node": N_IMAGES // 2}}})
    finally:
        async with aiodocker.Docker() as docker:
            for image in await docker.images.list(filters={"label": [f"evalkit.built-by={name}"]}):
                await docker.images.delete(image["Id"], force=True)
    outcomes = {t.task_name: (t.rewards, t.error) for t in result.trials}
    assert await job_containers(name) == []
    return name, outcomes, read_json(result.job_dir / "results.json")


@pytest.mark.docker
async def test_each_image_is_made_on_one_node_when_capacity_allows(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    _, outcomes, summary = await _distinct_images_job(tmp_path, jobs_dir)
    assert outcomes == {f"image-{i}": ({"reward": 1.0}, None) for i in range(N_IMAGES)}
    nodes = summary["nodes"]
    assert set(nodes) == {node_id[:12] for node_id in ray_cluster.node_ids().values()}
    # Both nodes share this machine's engine: an image made on one node would be found ("reused") by the
    # other if a try went there, and built twice if both prepared it. Neither happens.
    assert sorted(n["images"]["built"] for n in nodes.values()) == [N_IMAGES // 2, N_IMAGES // 2]
    assert [n["images"]["reused"] for n in nodes.values()] == [0, 0]
    assert [n["tries"] for n in nodes.values()] == [N_IMAGES // 2, N_IMAGES // 2]
    assert summary["images"]["built"] == N_IMAGES


@pytest.mark.docker
async def test_images_are_released_on_the_node_that_holds_them(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    """Under a budget no image fits, each node evicts an image once the trial it was prepared for is final
    (the release reaches the node that holds it) and never before (no try had to build its image again)."""
    _, outcomes, summary = await _distinct_images_job(tmp_path, jobs_dir, image_cache_gb=1e-9)
    assert outcomes == {f"image-{i}": ({"reward": 1.0}, None) for i in range(N_IMAGES)}
    images = [n["images"] for n in summary["nodes"].values()]
    assert [(i["built"], i["evicted"], i["reused"]) for i in images] == [(N_IMAGES // 2, N_IMAGES // 2, 0)] * 2
    assert (summary["images"]["built"], summary["images"]["evicted"]) == (N_IMAGES, N_IMAGES)
