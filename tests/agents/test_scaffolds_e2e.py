"""Each of the four agents end to end in real containers: a scripted model on 127.0.0.1 (OpenAI chat, through
the job's gateway; Claude Code's Anthropic requests translated) drives the agent through its own shell tool on
a `no-network` task, and the verifier decides."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from evalkit import evaluate
from tests.agents.conftest import MODEL, answer_task, job_config
from tests.agents.scripted import SOLVE, quitter, solver, upstream_calls
from tests.gateway.fake_upstream import FakeUpstream

pytestmark = pytest.mark.docker

AGENTS = {
    "claude-code": ({"name": "claude-code"}, "claude-code.jsonl"),
    "opencode": ({"name": "opencode"}, "opencode.jsonl"),
    "openhands-sdk": ({"name": "openhands-sdk"}, "openhands.jsonl"),
    "evalkit": ({"name": "evalkit"}, "agent-log.jsonl"),
    "evalkit-text": ({"name": "evalkit", "kwargs": {"tool_calling": False}}, "agent-log.jsonl"),
}


def trajectory(try_dir: Path) -> list[dict]:
    return [orjson.loads(line) for line in (try_dir / "agent" / "litellm-trajectory.jsonl").read_bytes().splitlines()]


@pytest.mark.parametrize("which", list(AGENTS))
async def test_the_model_solves_the_task_through_the_agent(tmp_path: Path, which: str):
    agent, own_log = AGENTS[which]
    answer_task(tmp_path / "tasks")
    async with FakeUpstream("scripted") as upstream:
        upstream.default = solver()
        result = await evaluate(job_config(tmp_path, agent, upstream))
        calls = upstream_calls(upstream)
        commands = [r.body for r in upstream.received]
    trial = result.trials[0]
    try_dir = result.job_dir / trial.trial_name
    assert trial.error is None, trial.error
    assert trial.reward == 1.0
    assert (trial.agent, trial.agent_outcome.model, trial.agent_outcome.exit_code) == (agent["name"], MODEL, 0)
    lines = trajectory(try_dir)
    upstream_lines = [line for line in lines if line["route"] != "local"]
    assert len(upstream_lines) == calls >= 2  # every upstream call once: at least the tool call and the answer
    assert sorted(line["seq"] for line in lines) == list(range(len(lines)))
    assert all(line["status"] == 200 for line in lines)
    assert trial.agent_outcome.usage.n_calls == len(lines)
    assert any(SOLVE in orjson.dumps(body).decode() for body in commands[1:])  # the command came back as a result
    assert (try_dir / "agent" / own_log).stat().st_size > 0


@pytest.mark.parametrize("which", list(AGENTS))
async def test_a_model_that_gives_up_scores_zero_without_an_infrastructure_error(tmp_path: Path, which: str):
    agent, own_log = AGENTS[which]
    answer_task(tmp_path / "tasks")
    async with FakeUpstream("scripted") as upstream:
        upstream.default = quitter()
        result = await evaluate(job_config(tmp_path, agent, upstream))
    trial = result.trials[0]
    assert trial.reward == 0.0
    assert trial.error is None, trial.error
    assert trial.agent_outcome.usage.n_calls >= 1
    assert (result.job_dir / trial.trial_name / "agent" / own_log).exists()
