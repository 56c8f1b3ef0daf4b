"""Replaying a recorded job: a host-side scripted agent runs real trials (Docker) through a real gateway, then
`evalkit loadtest --replay` sends the same calls to two timed replicas — same message prefixes, same think-times,
each replayed trial on one replica — directly and through a gateway the load test starts."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from evalkit import evaluate
from evalkit.agents import AgentResult
from evalkit.analysis.reader import TRAJECTORY
from evalkit.gateway.trajectory import read_trajectory
from tests.conftest import HOST_NETWORK, write_task
from tests.gateway.fake_upstream import FakeUpstream, Reply
from tests.loadtest.conftest import gateway_processes, loadtest_cli
from tests.loadtest.timed_server import Arrival, TimedServer

pytestmark = pytest.mark.docker

THINK = {"alpha": [0.2, 0.6, 0.3], "beta": [0.5, 0.2, 0.4], "gamma": [0.3, 0.3, 0.7]}
"""Per task, the agent's pause after each of its first three answers (its fourth call ends the trial)."""
THINK_TOLERANCE_SEC = 0.12


class RecordingAgent:
    """A host-side agent with a growing conversation: ask, run a command in the container, think, ask again."""

    name = "recording"

    async def setup(self, env) -> None:
        pass

    async def run(self, task, env, *, model, timeout_sec) -> AgentResult:
        client = openai.AsyncOpenAI(base_url=model.base_url, api_key=model.api_key, max_retries=0)
        messages = [{"role": "system", "content": "You are a careful agent."},
                    {"role": "user", "content": task.instruction}]
        try:
            for turn in range(4):
                stream = await client.chat.completions.create(model=model.model, messages=messages, stream=True)
                text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                messages.append({"role": "assistant", "content": text})
                if turn == 3:
                    break
                result = await env.exec(f"echo turn {turn} of {task.name} > /tmp/out.txt; cat /tmp/out.txt")
                await asyncio.sleep(THINK[task.name][turn])
                messages.append({"role": "user", "content": f"Output: {result.output.strip()} " + "x" * 200 * turn})
        finally:
            await client.close()
        await env.exec("echo done > /tmp/out.txt")
        return AgentResult(exit_code=0)


@dataclass
class Recorded:
    job_dir: Path
    calls: dict[str, list[dict]]
    """Per task, its trajectory's calls as the reader gives them."""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    root = tmp_path_factory.mktemp("loadtest-recorded")
    for name in THINK:
        write_task(root / "tasks", name)

    async def record() -> Path:
        async with FakeUpstream("recording") as upstream:
            upstream.default = Reply(text="I looked at it and will run a command next.", chunks=6, chunk_delay=0.01)
            result = await evaluate({
                **HOST_NETWORK, "job_name": f"loadtest-record-{uuid.uuid4().hex[:8]}", "jobs_dir": str(root / "jobs"),
                "n_concurrent": 3, "dataset": {"path": str(root / "tasks")},
                "agent": {"name": "tests.loadtest.test_loadtest_replay:RecordingAgent"},
                "llm_api": {"model": "m", "deployments": [{"model": "hosted_vllm/m", "api_base": upstream.url}]},
            })
        return result.job_dir

    job_dir = asyncio.run(record())
    calls = {path.parent.parent.name.split("__")[0]: list(read_trajectory(path))
             for path in job_dir.glob(f"*/{TRAJECTORY}")}
    assert sorted(calls) == sorted(THINK) and all(len(c) == 4 for c in calls.values())
    return Recorded(job_dir, calls)


def _by_trial(arrivals: list[Arrival]) -> dict[str, list[Arrival]]:
    out: dict[str, list[Arrival]] = {}
    for arrival in arrivals:
        out.setdefault(arrival.body["messages"][1]["content"], []).append(arrival)
    return out


def _check_replay(recorded: Recorded, servers: list[TimedServer]) -> None:
    """Every recorded call arrived once, in order, with its recorded messages and think-time, on one server."""
    placed = {}
    for server in servers:
        for instruction, arrivals in _by_trial(server.arrivals).items():
            assert instruction not in placed, f"{instruction!r} reached two replicas"
            placed[instruction] = (server.name, arrivals)
    assert len(placed) == 3 and {name for name, _ in placed.values()} == {"a", "b"}, "both replicas got trials"
    for task, calls in recorded.calls.items():
        _, arrivals = placed[f"Task {task}.\n"]
        assert [a.body["messages"] for a in arrivals] == [c["request"]["messages"] for c in calls]
        assert all(a.body["model"] == "m" and a.body["stream"] is True for a in arrivals)
        for k in range(1, 4):
            recorded_think = calls[k]["timing"]["start"] - calls[k - 1]["timing"]["end"]
            replayed_think = arrivals[k].received - arrivals[k - 1].finished
            assert recorded_think >= THINK[task][k - 1]
            assert abs(replayed_think - recorded_think) <= THINK_TOLERANCE_SEC, (task, k, recorded_think, replayed_think)


async def test_a_replayed_job_sends_the_same_calls_with_the_same_think_times_one_replica_per_trial(
    recorded: Recorded, tmp_path: Path
) -> None:
    async with TimedServer("a", ttft=0.02, itl=0.005, tokens=5) as a, TimedServer("b", ttft=0.02, itl=0.005, tokens=5) as b:
        run = await loadtest_cli("--replay", str(recorded.job_dir), "--endpoint", a.url, "--endpoint", b.url,
                                 "--model", "m", "--loads", "3", "--max-requests", "12", out=tmp_path / "out")
        assert run.code == 0, run.stderr
        _check_replay(recorded, [a, b])
    report = run.report
    assert report["workload"] == "replay" and report["replay"] == {"trials": 3, "calls": 12, "skipped": {}, "problems": []}
    step = report["steps"][0]
    assert (step["requests"], step["completed"], step["trials"], step["trials_on_several_replicas"]) == (12, 12, 3, 0)
    assert sorted(r["requests"] for r in step["per_replica"].values()) == [4, 8]


async def test_a_replay_through_a_gateway_keeps_each_trial_on_one_replica_and_stops_the_gateway(
    recorded: Recorded, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    async with TimedServer("a", ttft=0.02, itl=0.005, tokens=5) as a, TimedServer("b", ttft=0.02, itl=0.005, tokens=5) as b:
        run = await loadtest_cli("--replay", str(recorded.job_dir), "--endpoint", a.url, "--endpoint", b.url,
                                 "--via-gateway", "--model", "m", "--loads", "3", "--max-requests", "12", out=out)
        assert run.code == 0, run.stderr
        _check_replay(recorded, [a, b])
    step = run.report["steps"][0]
    assert run.report["target"] == "gateway" and run.report["addresses"] == [a.url, b.url]
    assert (step["requests"], step["completed"], step["trials_on_several_replicas"]) == (12, 12, 0)
    assert sorted(r["requests"] for r in step["per_replica"].values()) == [4, 8]
    assert step["gateway"]["cpu_sec"] > 0 and step["gateway"]["peak_rss_mib"] > 0
    assert len(list((out / "gateway" / "trials").glob(f"*/{TRAJECTORY}"))) == 3
    assert gateway_processes(out) == []
