"""The model route on a Ray cluster: an agent in a container on either node reaches the job's upstreams through
a gateway on its own node; every call is in its try's trajectory in the driver's job directory, each trial
sticks to one replica (homes balanced by the driver), per-replica caps hold cluster-wide, the upstream key
reaches the upstream and nothing else, and no gateway process or scratch directory outlives the job."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from evalkit import evaluate
from evalkit.environments import ray_routes
from evalkit.environments.ray_routes import _Homes, check_reachable
from evalkit.errors import ConfigError
from evalkit.gateway import LLMApiConfig
from evalkit.results import trial_of
from tests.agents.conftest import MODEL, answer_task
from tests.agents.scripted import solver, upstream_calls
from tests.conftest import job_containers, read_json
from tests.gateway.fake_upstream import FakeUpstream, Reply, Step
from tests.ray.conftest import RayTestCluster, _cmdline, _descendants

pytestmark = pytest.mark.docker
N_TASKS = 4


def _lines(try_dir: Path) -> list[dict]:
    return [orjson.loads(line) for line in (try_dir / "agent" / "litellm-trajectory.jsonl").read_bytes().splitlines()]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


async def _watch(job_dir: Path, gateways: dict[int, bytes], first_seen: dict[str, float]) -> None:
    """While the job runs: every gateway process with its parent's command line, and per try when its
    trajectory in the job directory was first seen with a whole line."""
    while True:
        for pid in _descendants(os.getpid()):
            if b"evalkit.gateway.process" in _cmdline(pid) and pid not in gateways:
                gateways[pid] = _cmdline(_parent(pid))
        for trajectory in job_dir.glob("*/agent/litellm-trajectory.jsonl"):
            if trajectory.parent.parent.name not in first_seen and b"\n" in trajectory.read_bytes():
                first_seen[trajectory.parent.parent.name] = time.time()
        await asyncio.sleep(0.1)


def _slow_to_finish(reply_of: Callable[[dict], Step]) -> Callable[[dict], Step]:
    """The scripted model, taking its time over the last answer: the earlier calls are on disk meanwhile."""
    def reply(body: dict) -> Step:
        step = reply_of(body)
        return replace(step, delay=6.0) if isinstance(step, Reply) and step.text.startswith("Done") else step
    return reply


async def test_agents_in_containers_on_both_nodes_reach_the_model_through_their_node(
    ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    key = "sk-ray-route-" + secrets.token_hex(12)
    monkeypatch.setenv("EVALKIT_TEST_RAY_UPSTREAM_KEY", key)
    monkeypatch.setattr(ray_routes, "CHUNK_BYTES", 1000)  # trajectories come back in many chunks
    monkeypatch.setattr(ray_routes, "LIVE_COPY_SEC", 0.2)
    for i in range(N_TASKS):
        answer_task(tmp_path / "tasks", f"answer-{i}")
    name = f"ray-routes-{uuid.uuid4().hex[:6]}"
    async with FakeUpstream("replica-a") as first, FakeUpstream("replica-b") as second:
        for upstream in (first, second):
            upstream.default = _slow_to_finish(solver())
        deployments = [{"model": f"hosted_vllm/{MODEL}", "api_base": u.url, "api_key_env": "EVALKIT_TEST_RAY_UPSTREAM_KEY"}
                       for u in (first, second)]
        gateways: dict[int, bytes] = {}
        first_seen: dict[str, float] = {}
        watcher = asyncio.ensure_future(_watch(jobs_dir / name, gateways, first_seen))
        result = await evaluate({
            "job_name": name, "jobs_dir": str(jobs_dir), "n_concurrent": 4,
            "dataset": {"path": str(tmp_path / "tasks")},
            "agent": {"name": "opencode"},
            "llm_api": {"model": MODEL, "deployments": deployments, "max_retries": 0},
            "environment": {"backend": "ray", "network_mode": "host", "ray": {"resources": {"docker": 1}, "max_trials_per_node": 2}},
        })
        watcher.cancel()
        calls = upstream_calls(first) + upstream_calls(second)
        keys_seen = {r.headers.get("Authorization") for u in (first, second) for r in u.received}

    summary = result.summary
    assert summary.n_trials == summary.n_finished == summary.n_tries == N_TASKS
    assert [(t.error, t.reward) for t in result.trials] == [(None, 1.0)] * N_TASKS
    nodes = read_json(result.job_dir / "results.json")["nodes"]
    assert sorted(n["tries"] for n in nodes.values()) == [2, 2]  # both nodes ran agents

    homes: dict[str, set[str]] = {}
    total = 0
    for trial in result.trials:
        lines = _lines(result.job_dir / trial.trial_name)
        upstream_lines = [line for line in lines if line["route"] != "local"]
        assert len(upstream_lines) >= 2 and all(line["status"] == 200 for line in lines)
        assert [line["seq"] for line in lines] == list(range(len(lines)))  # whole, in order, over many chunks
        assert trial.agent_outcome.usage.n_calls == len(lines) and trial.agent_outcome.usage.trajectory_error is None
        homes[trial.trial_name] = {line["deployment"] for line in upstream_lines}
        assert first_seen[trial.trial_name] < max(line["timing"]["end"] for line in lines)  # lines showed up while the agent ran
        total += len(upstream_lines)
    assert total == calls  # every upstream call once, in the driver's job directory
    assert all(len(h) == 1 for h in homes.values())  # each trial stuck to one replica
    assert sorted(sum(1 for h in homes.values() if d in h) for d in {d for h in homes.values() for d in h}) == [2, 2]
    assert keys_seen == {f"Bearer {key}"}  # the driver's key reached the upstream from both nodes
    assert len(gateways) == 2 and all(parent.startswith(b"ray::NodeAgent") for parent in gateways.values())

    for path in [*result.job_dir.rglob("*"), *(jobs_dir.parent / "litellm").rglob("*")]:
        assert not path.is_file() or key.encode() not in path.read_bytes(), path
    for path in Path(ray_cluster.cluster.head_node.get_session_dir_path()).rglob("*"):  # Ray's own logs too
        assert not path.is_file() or path.stat().st_size > 50_000_000 or key.encode() not in path.read_bytes(), path
    assert await job_containers(name) == []
    gateways = [p for p in _descendants(os.getpid()) if b"evalkit.gateway.process" in _cmdline(p)]
    assert gateways == []
    assert ray_cluster.scratch_dirs() == []  # the nodes' scratch directories, trajectories included


def test_a_loopback_upstream_is_refused_when_a_node_is_on_another_machine():
    config = LLMApiConfig(model="m", deployments=[{"model": "hosted_vllm/m", "api_base": "http://u:p@127.0.0.1:8000/v1"}])
    check_reachable(config, "10.0.0.1", {"aaaa": "10.0.0.1", "bbbb": "10.0.0.1"})  # every node on the driver's machine
    with pytest.raises(ConfigError) as error:
        check_reachable(config, "10.0.0.1", {"aaaa": "10.0.0.1", "bbbb": "10.0.0.2"})
    assert str(error.value) == (
        "llm_api.deployments[0].api_base: http://127.0.0.1:8000/v1 is a loopback address, reachable only from the "
        "driver's machine (10.0.0.1), but Ray node bbbb is at 10.0.0.2; serve the model on an address every node "
        "reaches, or select only nodes on this machine"
    )
    remote = LLMApiConfig(model="m", deployments=[{"model": "hosted_vllm/m", "api_base": "http://models.internal:8000/v1"}])
    check_reachable(remote, "10.0.0.1", {"bbbb": "10.0.0.2"})


def test_every_try_of_a_trial_gets_its_trials_home():
    homes = _Homes([0, 0])
    first, other = homes.take(trial_of("task-a__1")), homes.take(trial_of("task-b__1"))
    assert first != other  # a new trial goes where the fewest live tries are
    homes.give_back(trial_of("task-a__1"))
    assert homes.take(trial_of("task-a__1-try1")) == first  # its retry: the same replica, wherever it runs
    assert homes.live == [1, 1]


async def test_a_replicas_cap_holds_across_the_nodes(ray_cluster: RayTestCluster, tmp_path: Path, jobs_dir: Path):
    for i in range(N_TASKS):
        answer_task(tmp_path / "tasks", f"answer-{i}")
    name = f"ray-caps-{uuid.uuid4().hex[:6]}"
    async with FakeUpstream("replica") as upstream:
        scripted = solver()
        upstream.default = lambda body: replace(step, delay=1.0) if isinstance(step := scripted(body), Reply) else step
        result = await evaluate({
            "job_name": name, "jobs_dir": str(jobs_dir), "n_concurrent": 4,
            "dataset": {"path": str(tmp_path / "tasks")},
            "agent": {"name": "opencode"},
            "llm_api": {"model": MODEL, "max_retries": 0,
                        "deployments": [{"model": f"hosted_vllm/{MODEL}", "api_base": upstream.url, "max_in_flight": 2}]},
            "environment": {"backend": "ray", "network_mode": "host", "ray": {"resources": {"docker": 1}, "max_trials_per_node": 2}},
        })
        most_at_once = upstream.max_in_progress
    assert [(t.error, t.reward) for t in result.trials] == [(None, 1.0)] * N_TASKS
    assert sorted(n["tries"] for n in read_json(result.job_dir / "results.json")["nodes"].values()) == [2, 2]
    assert most_at_once <= 2  # max_in_flight 2: one slot on each node's gateway (the stated tolerance is nodes - 1)

