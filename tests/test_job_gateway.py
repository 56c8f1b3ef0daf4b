"""A job with `llm_api`: the gateway starts with the job, each trial gets its own key and trajectory,
usage lands in the trial's result, and the gateway is gone when the job ends."""

from __future__ import annotations

from pathlib import Path

import openai
import orjson
import pytest

from evalkit import evaluate
from evalkit.agents import AgentResult
from tests.conftest import HOST_NETWORK, write_task
from tests.gateway.fake_upstream import FakeUpstream

pytestmark = pytest.mark.docker

seen_keys: list[str] = []
seen_sockets: list[Path] = []


class ProbeAgent:
    """A host-side agent: asks the model twice through the trial's gateway access, then acts in the container."""

    name = "probe"

    async def setup(self, env) -> None:
        pass

    async def run(self, task, env, *, model, timeout_sec) -> AgentResult:
        seen_keys.append(model.api_key)
        seen_sockets.append(model.socket_path)
        client = openai.AsyncOpenAI(base_url=model.base_url, api_key=model.api_key, max_retries=0)
        for _ in range(2):
            reply = await client.chat.completions.create(
                model=model.model, messages=[{"role": "user", "content": task.instruction}]
            )
        await client.close()
        await env.exec(f"echo {reply.choices[0].message.content.split()[0]} > /tmp/answer.txt; echo done > /tmp/out.txt")
        return AgentResult(exit_code=0)


async def test_trials_reach_the_model_through_the_job_gateway(tmp_path: Path):
    for name in ("a", "b"):
        write_task(tmp_path / "tasks", name)
    seen_keys.clear()
    seen_sockets.clear()
    async with FakeUpstream("replica") as upstream:
        result = await evaluate(
            {
                "job_name": "engine-with-model",
                **HOST_NETWORK, "jobs_dir": str(tmp_path / "artifacts" / "jobs"),
                "n_concurrent": 2,
                "dataset": {"path": str(tmp_path / "tasks")},
                "agent": {"name": "tests.test_job_gateway:ProbeAgent"},
                "llm_api": {"model": "smollm2", "deployments": [{"model": "hosted_vllm/smollm2", "api_base": upstream.url}]},
            }
        )
    assert result.summary.mean_reward == 1.0
    assert len(set(seen_keys)) == 2  # a fresh key per trial
    assert len(set(seen_sockets)) == 2 and not any(path.exists() for path in seen_sockets)  # a route each, removed
    for trial in result.trials:
        lines = (tmp_path / "artifacts" / "jobs" / "engine-with-model" / trial.trial_name / "agent" / "litellm-trajectory.jsonl").read_bytes().splitlines()
        calls = [orjson.loads(line) for line in lines]
        assert len(calls) == 2 and all(call["status"] == 200 for call in calls)
        assert trial.agent_outcome.usage.n_calls == 2
        assert trial.agent_outcome.usage.input_tokens > 0
    assert list((tmp_path / "artifacts" / "litellm" / "engine-with-model").iterdir())
    summary = result.summary
    assert summary.usage.n_calls == 4
    assert summary.usage.input_tokens == sum(t.agent_outcome.usage.input_tokens for t in result.trials)
