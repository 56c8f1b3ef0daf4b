"""Secrets stay secret: an upstream key in the environment and an agent's key and bearer header in the config
reach the upstream (they must work), but no file of the job, of the gateway, no container and no log line."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import openai
import orjson
import pytest

from evalkit import evaluate
from evalkit.agents import AgentResult
from tests.conftest import HOST_NETWORK, write_task
from tests.gateway.fake_upstream import FakeUpstream

pytestmark = pytest.mark.docker


class SecretProbe:
    """A host-side agent holding secrets of its own (config kwargs) that calls the model through its trial's
    gateway access, then records what its container can see."""

    name = "secret-probe"

    def __init__(self, api_key: str, headers: dict[str, str]) -> None:
        self.api_key, self.headers = api_key, headers

    async def setup(self, env) -> None:
        pass

    async def run(self, task, env, *, model, timeout_sec) -> AgentResult:
        async with openai.AsyncOpenAI(base_url=model.base_url, api_key=model.api_key, max_retries=0) as client:
            reply = await client.chat.completions.create(model=model.model, messages=[{"role": "user", "content": "hi"}])
        await env.exec("env > /logs/agent/container-env.txt; cat /proc/1/environ | tr '\\0' '\\n' >> /logs/agent/container-env.txt")
        await env.exec(f"echo {reply.choices[0].message.content.split()[0]} > /tmp/answer.txt; echo done > /tmp/out.txt")
        return AgentResult(exit_code=0)


def every_file(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("route", ["passthrough", "translated"])
async def test_no_secret_is_written_anywhere(route: str, tmp_path: Path, monkeypatch, caplog, capfd):
    upstream_key, agent_key, bearer = (f"{p}-{uuid.uuid4().hex}" for p in ("sk-upstream", "sk-agent", "tok-bearer"))
    monkeypatch.setenv("EVALKIT_ENGINE_UPSTREAM_KEY", upstream_key)
    write_task(tmp_path / "tasks", "asks")
    async with FakeUpstream("replica") as upstream:
        deployment = (
            {"model": "hosted_vllm/smollm2", "api_base": upstream.url, "api_key_env": "EVALKIT_ENGINE_UPSTREAM_KEY"}
            if route == "passthrough"
            else {"model": "anthropic/claude-test", "api_base": upstream.root, "api_key_env": "EVALKIT_ENGINE_UPSTREAM_KEY"}
        )
        with caplog.at_level(logging.DEBUG):
            result = await evaluate({
                "job_name": f"engine-secrets-{uuid.uuid4().hex[:6]}",
                **HOST_NETWORK, "jobs_dir": str(tmp_path / "artifacts" / "jobs"),
                "dataset": {"path": str(tmp_path / "tasks")},
                "agent": {"name": "tests.test_secrets:SecretProbe",
                          "kwargs": {"api_key": agent_key, "headers": {"Authorization": f"Bearer {bearer}"}}},
                "llm_api": {"model": "smollm2", "deployments": [deployment]},
            })
        received = upstream.received
    assert result.summary.mean_reward == 1.0
    (trial,) = result.trials
    assert trial.agent_outcome.usage.n_calls == 1
    # The secrets did their job: the upstream saw its key on the route under test.
    (call,) = received
    assert call.path == ("/v1/chat/completions" if route == "passthrough" else "/v1/messages")
    assert upstream_key in str(call.headers)
    (line,) = [orjson.loads(x) for x in (result.job_dir / trial.trial_name / "agent" / "litellm-trajectory.jsonl").read_bytes().splitlines()]
    assert line["route"] == route

    # ...and went nowhere else: not the job directory, the gateway's files, the container, the logs.
    container_env = (result.job_dir / trial.trial_name / "agent" / "container-env.txt").read_text()
    assert "PATH=" in container_env  # the probe really looked
    out, err = capfd.readouterr()
    written = "\n".join([every_file(tmp_path / "artifacts"), caplog.text, out, err])
    assert (tmp_path / "artifacts" / "litellm").is_dir() and (result.job_dir / "job.json").is_file()
    for secret in (upstream_key, agent_key, bearer):
        assert secret not in written
