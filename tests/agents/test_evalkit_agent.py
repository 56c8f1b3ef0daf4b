"""The built-in agent's loop in a real container, driven through its `ModelClient` seam by an in-process
sampler (what a training service plugs in): turns, tool and text actions, per-command timeouts, output cuts,
malformed tool calls, model errors."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from evalkit.agents import Completion, EvalkitAgent, ModelCallError, Sampling
from evalkit.agents.model_client import ToolCall, parse_completion
from evalkit.agents.outcome import model_error
from evalkit.config import AgentConfig, EnvironmentConfig
from evalkit.environments import EnvironmentSpec, JobIdentity, Resources, connect_backend
from evalkit.errors import AgentRateLimitedError
from evalkit.gateway import TrialAccess
from evalkit.tasks import Task, load_task
from tests.conftest import job_containers, write_task

pytestmark = pytest.mark.docker

ACCESS = TrialAccess(trial_id="t", api_key="ek-test", base_url="http://127.0.0.1:9/v1", anthropic_base_url="http://127.0.0.1:9",
                     model="m", socket_path=Path("/nonexistent/gateway.sock"))


class Sampler:
    """An in-process `ModelClient`: replies from a list, and remembers what it was asked."""

    def __init__(self, *replies: Completion | ModelCallError) -> None:
        self.replies = list(replies)
        self.asked: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None, Sampling]] = []
        self.closed = False

    async def complete(self, messages, *, tools, sampling) -> Completion:
        self.asked.append(([dict(m) for m in messages], tools, sampling))
        reply = self.replies.pop(0) if self.replies else Completion(text="done")
        if isinstance(reply, ModelCallError):
            raise reply
        return reply

    async def aclose(self) -> None:
        self.closed = True


def bash(command: str, call_id: str = "c1") -> Completion:
    return Completion(text="", tool_calls=(ToolCall(id=call_id, name="bash", arguments=json.dumps({"command": command})),))


def agent(sampler: Sampler, *, model: dict | None = None, **kwargs: Any) -> EvalkitAgent:
    return EvalkitAgent(AgentConfig(name="evalkit", model=model or {}), client=lambda access: sampler, **kwargs)


@pytest.fixture
async def env_task(tmp_path: Path) -> AsyncIterator[tuple[Any, Task]]:
    task = load_task(write_task(tmp_path / "tasks", "t"))
    job = JobIdentity(job_id=str(uuid.uuid4()), job_name=f"agents-loop-{uuid.uuid4().hex[:8]}", job_dir=tmp_path / "job")
    backend = await connect_backend(EnvironmentConfig(), job)
    spec = EnvironmentSpec(name="t__0", network_mode="none", resources=Resources(cpus=1, memory_mb=512, storage_mb=1024, pids_limit=64))
    environment = backend.environment(task, spec)
    try:
        await environment.start()
        yield environment, task
    finally:
        await environment.stop()
        await backend.close()
    assert await job_containers(job.job_name) == []


async def test_tool_calls_run_in_the_container_and_their_results_go_back(env_task):
    env, task = env_task
    sampler = Sampler(bash("echo hi > /tmp/x; cat /tmp/x; exit 3"), Completion(text="finished"))
    result = await agent(sampler, model={"max_tokens": 64, "temperature": 0.5}).run(task, env, model=ACCESS, timeout_sec=60)
    assert (result.exit_code, result.timed_out, result.error) == (0, False, None)
    assert sampler.closed
    messages, tools, sampling = sampler.asked[1]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1]["content"] == task.instruction
    assert messages[3] == {"role": "tool", "tool_call_id": "c1", "content": "exit code 3\nhi\n"}
    assert all(isinstance(m["content"], str) for m in messages)  # string content: llama.cpp's template needs it
    assert tools[0]["function"]["name"] == "bash" and sampling == Sampling(max_tokens=64, temperature=0.5)
    assert [step.get("end") for step in result.log if "end" in step] == ["done"]
    assert (await env.exec("cat /tmp/x")).output == "hi\n"


async def test_text_actions_take_the_first_bash_block(env_task):
    env, task = env_task
    sampler = Sampler(Completion(text="Let me look.\n```bash\necho one\n```\n```bash\necho two\n```"), Completion(text="all done"))
    result = await agent(sampler, tool_calling=False).run(task, env, model=ACCESS, timeout_sec=60)
    assert result.exit_code == 0
    messages, tools, _ = sampler.asked[1]
    assert tools is None and "```bash" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "exit code 0\none\n"}


async def test_turns_are_bounded(env_task):
    env, task = env_task
    sampler = Sampler(*[bash(f"echo {i}") for i in range(10)])
    result = await agent(sampler, model={"max_turns": 3}).run(task, env, model=ACCESS, timeout_sec=60)
    assert len(sampler.asked) == 3 and result.exit_code == 0 and result.log[-1] == {"end": "max_turns"}


async def test_a_slow_command_is_killed_and_long_output_is_cut(env_task):
    env, task = env_task
    sampler = Sampler(bash("sleep 30"), bash("yes a | tr -d '\\n' | head -c 5000; echo; echo END"), Completion(text="ok"))
    result = await agent(sampler, command_timeout_sec=1, max_output_chars=200).run(task, env, model=ACCESS, timeout_sec=120)
    timeout_message, long_message = sampler.asked[1][0][-1]["content"], sampler.asked[2][0][-1]["content"]
    assert timeout_message == "The command timed out after 1 s and was killed.\n"
    assert long_message.startswith("exit code 0\n" + "a" * 100 + "\n[… 4805 characters omitted …]\n")
    assert long_message.endswith("END\n") and len(long_message) < 400
    assert result.exit_code == 0


async def test_a_malformed_tool_call_is_answered_not_run(env_task):
    env, task = env_task
    bad = Completion(text="", tool_calls=(ToolCall(id="x", name="bash", arguments="{not json"),
                                          ToolCall(id="y", name="python", arguments='{"code": "1"}')))
    sampler = Sampler(bad, Completion(text="ok"))
    await agent(sampler).run(task, env, model=ACCESS, timeout_sec=60)
    replies = [m for m in sampler.asked[1][0] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in replies] == ["x", "y"]
    assert all(m["content"] == 'error: call the `bash` tool with a JSON object {"command": "<command>"}' for m in replies)


async def test_a_model_error_ends_the_run_typed(env_task):
    env, task = env_task
    sampler = Sampler(bash("true"), ModelCallError(model_error(429, "slow down", who="evalkit")))
    result = await agent(sampler).run(task, env, model=ACCESS, timeout_sec=60)
    assert result.exit_code == 1 and isinstance(result.error, AgentRateLimitedError)
    assert str(result.error) == "evalkit stopped: the model API rate-limited it (429): slow down"
    assert sampler.closed and result.log[-1]["end"] == "model_error"


async def test_the_agent_timeout_returns_with_its_log(env_task):
    env, task = env_task
    sampler = Sampler(bash("sleep 20"))
    result = await agent(sampler, command_timeout_sec=60).run(task, env, model=ACCESS, timeout_sec=1)
    assert (result.exit_code, result.timed_out) == (None, True) and result.log[-1] == {"end": "timeout"}


def test_completions_carry_token_ids_and_logprobs_when_the_server_gives_them():
    data = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop", "token_ids": [5, 7],
                         "logprobs": {"content": [{"token": "h", "logprob": -0.5}, {"token": "i", "logprob": -0.25}]}}],
            "usage": {"prompt_tokens": 3}}
    completion = parse_completion(data)
    assert (completion.text, completion.token_ids, completion.logprobs) == ("hi", (5, 7), (-0.5, -0.25))
    plain = parse_completion({"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "a", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]}}]})
    assert plain.text == "" and plain.tool_calls == (ToolCall("a", "bash", '{"command": "ls"}'),) and plain.token_ids is None


def test_bad_options_are_refused():
    with pytest.raises(TypeError, match="max_output_chars must be at least 100"):
        EvalkitAgent(AgentConfig(name="evalkit"), max_output_chars=10)
