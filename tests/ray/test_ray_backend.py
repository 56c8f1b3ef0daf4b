"""The Ray backend on a real two-node cluster: the bundled benchmarks give a local run's outcomes and job
directory, trials land on both nodes, and evalkit leaves the caller's Ray connection as it found it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import ray

from evalkit import evaluate
from tests.conftest import BENCHMARKS, expected_outcomes, job_containers, read_json
from tests.ray.conftest import RayTestCluster

pytestmark = pytest.mark.docker


def _tasks(*benchmarks: str) -> list[dict]:
    return [{"path": str(BENCHMARKS / bench / name)} for bench in benchmarks for name in expected_outcomes(bench)]


def _files(job_dir: Path) -> dict[str, set[str]]:
    """Per try directory (by task), the relative paths of the files in it."""
    return {
        read_json(d / "result.json")["task_name"]: {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}
        for d in job_dir.iterdir() if (d / "result.json").exists()
    }


async def test_bundled_benchmarks_on_two_nodes_match_a_local_run(ray_cluster: RayTestCluster, jobs_dir: Path):
    expected = {**expected_outcomes("evalkit-smoke"), **expected_outcomes("evalkit-faults")}
    tasks = _tasks("evalkit-smoke", "evalkit-faults")
    runs = {}
    for backend in ("docker", "ray"):
        name = f"ray-bundled-{backend}-{uuid.uuid4().hex[:6]}"
        environment = {"backend": backend, "network_mode": "host", "ray": {"resources": {"docker": 1}, "max_trials_per_node": 2}}
        runs[backend] = await evaluate({"job_name": name, "jobs_dir": str(jobs_dir), "n_concurrent": 4,
                                        "dataset": {"tasks": tasks}, "environment": environment})
        assert await job_containers(name) == []
    local, remote = runs["docker"], runs["ray"]

    outcomes = {t.task_name: {"rewards": t.rewards, "error": t.error and t.error.type} for t in remote.trials}
    assert outcomes == expected
    kinds = lambda run: {t.task_name: (t.error.kind, t.error.phase) for t in run.trials if t.error}  # noqa: E731
    assert kinds(remote) == kinds(local)
    assert remote.summary.n_trials == remote.summary.n_finished == len(expected) == remote.summary.n_tries
    assert _files(remote.job_dir) == _files(local.job_dir)
    assert sorted(p.name for p in remote.job_dir.iterdir()) == sorted(
        p.name for p in local.job_dir.iterdir())
    for trial in remote.trials:
        read_json(remote.job_dir / trial.trial_name / "evaluation" / "verdict.json")
        if trial.environment is not None:
            assert trial.downloads["agent"].error is None

    nodes = read_json(remote.job_dir / "results.json")["nodes"]
    assert set(nodes) == {node_id[:12] for node_id in ray_cluster.node_ids().values()}
    assert all(n["tries"] >= 1 and n["in_flight"] == 0 and not n["lost"] for n in nodes.values())
    # A task whose image failed to build on the node that prepared it fails there and then, never placed.
    placed = [t for t in remote.trials if not (t.error and t.error.type == "EnvironmentBuildError")]
    assert len(placed) == len(expected) - 1 and sum(n["tries"] for n in nodes.values()) >= len(placed)
    assert read_json(local.job_dir / "results.json")["nodes"] is None
    assert ray.is_initialized()  # the test's own connection: evalkit used it and left it open
