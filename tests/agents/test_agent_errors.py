"""Agent errors typed from the agents' own output, in real containers: the scripted upstream answers 429 to
every call (the gateway passes it on, no retries), and each agent's own words become AgentRateLimitedError —
with the verifier run after it. The readers themselves are checked on each scaffold's output shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit import evaluate
from evalkit.agents.claude_code import ClaudeCodeAgent
from evalkit.agents.opencode import OpenCodeAgent
from evalkit.agents.openhands import OpenHandsAgent
from evalkit.agents.outcome import crash_error, model_error
from evalkit.config import AgentConfig
from tests.agents.conftest import answer_task, job_config
from tests.gateway.fake_upstream import Fail, FakeUpstream

pytestmark = pytest.mark.docker

RATE_LIMITED = {
    # Claude Code retries a 429 ten times with backoff unless told otherwise; the others give up sooner.
    "claude-code": {"name": "claude-code", "env": {"CLAUDE_CODE_MAX_RETRIES": "0"}},
    "opencode": {"name": "opencode"},
    "openhands-sdk": {"name": "openhands-sdk", "kwargs": {"num_retries": 0}},
    "evalkit": {"name": "evalkit"},
}


@pytest.mark.parametrize("which", list(RATE_LIMITED))
async def test_a_rate_limited_agent_is_typed_from_its_own_output(tmp_path: Path, which: str):
    answer_task(tmp_path / "tasks")
    async with FakeUpstream("limited") as upstream:
        upstream.default = Fail(429, retry_after=0)
        result = await evaluate(job_config(tmp_path, RATE_LIMITED[which], upstream))
    trial = result.trials[0]
    assert (trial.error.type, trial.error.kind, trial.error.phase) == ("AgentRateLimitedError", "agent", "agent"), trial.error
    assert trial.error.message.startswith(f"{which} stopped: the model API rate-limited it")
    assert trial.rewards == {"reward": 0.0}  # the verifier ran
    assert trial.agent_outcome.usage.n_errors >= 1


def agent_of(cls, name: str, tmp_path: Path):
    return cls(AgentConfig(name=name, runtime_host_path=tmp_path))


def test_claude_codes_result_event_is_read(tmp_path: Path):
    claude = agent_of(ClaudeCodeAgent, "claude-code", tmp_path)
    line = b'{"type":"result","subtype":"success","is_error":true,"result":"%s"}'
    assert claude.read_error(b'{"type":"system"}\n' + line % b"API Error: 429 slow down") is not None
    error = claude.read_error(line % b"API Error: 401 bad key")
    assert (type(error).__name__, str(error)) == (
        "AgentAuthenticationError", "claude-code stopped: the model API refused its key (401): API Error: 401 bad key")
    error = claude.read_error(line % b"API Error: 400 prompt is too long: 210000 tokens > 200000 maximum")
    assert type(error).__name__ == "AgentContextWindowError"
    assert claude.read_error(line.replace(b"true", b"false") % b"done") is None
    assert claude.read_error(b'{"type":"result","subtype":"error_max_turns","is_error":true}') is None  # a limit, not a failure
    assert claude.read_error(b"not json at all\n") is None


def test_opencodes_error_event_is_read(tmp_path: Path):
    opencode = agent_of(OpenCodeAgent, "opencode", tmp_path)
    event = b'{"type":"error","error":{"name":"APIError","data":{"message":"%s","statusCode":%s}}}'
    error = opencode.read_error(b'{"type":"step_start"}\n' + event % (b"This model's maximum context length is 8192 tokens", b"400"))
    assert (type(error).__name__, str(error)) == (
        "AgentContextWindowError",
        "opencode stopped: the conversation outgrew the model's context window (400): This model's maximum context "
        "length is 8192 tokens",
    )
    assert type(opencode.read_error(event % (b"upstream unavailable", b"502"))).__name__ == "AgentModelError"
    assert opencode.read_error(b'{"type":"text","part":{}}\n') is None


def test_the_openhands_drivers_error_line_is_read(tmp_path: Path):
    openhands = agent_of(OpenHandsAgent, "openhands-sdk", tmp_path)
    line = b'{"evalkit_error": {"type": "%s", "types": ["ConversationRunError", "%s", "Exception"], "message": "m"}}'
    assert type(openhands.read_error(line % (b"RateLimitError", b"RateLimitError"))).__name__ == "AgentRateLimitedError"
    assert type(openhands.read_error(line % (b"ContextWindowExceededError", b"ContextWindowExceededError"))).__name__ == (
        "AgentContextWindowError")
    assert type(openhands.read_error(line % (b"LLMAuthenticationError", b"LLMAuthenticationError"))).__name__ == (
        "AgentAuthenticationError")
    assert openhands.read_error(b'{"kind": "MessageEvent"}\n') is None


def test_exit_codes_and_model_errors_are_typed():
    assert str(crash_error(137, who="opencode")) == "opencode crashed: killed by SIGKILL (exit code 137)"
    assert str(crash_error(127, who="opencode")) == "opencode could not be started (exit code 127)"
    assert crash_error(1, who="opencode") is None and crash_error(None, who="opencode") is None
    assert type(model_error(None, "Rate limit reached for requests", who="x")).__name__ == "AgentRateLimitedError"
    assert type(model_error(403, "forbidden", who="x")).__name__ == "AgentAuthenticationError"
    assert type(model_error(500, "context length exceeded", who="x")).__name__ == "AgentModelError"  # a 5xx is not the prompt's
    assert str(model_error(None, "ClientConnectorError:   Cannot connect\n", who="evalkit")) == (
        "evalkit stopped: the model API failed: ClientConnectorError: Cannot connect")
