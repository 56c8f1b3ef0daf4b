"""The repo's default `config.yaml` evaluates a real model: the built-in `evalkit` agent (text actions) against
SmolLM2-135M served by llama.cpp, which the job itself starts and stops, through the job's gateway, in real
containers. Two smoke tasks; the model is tiny, so the rewards are whatever it earns — what must hold is the
path: no infrastructure error, the model's own words in every trajectory, and no server left behind."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from evalkit import evaluate
from tests.conftest import REPO, job_containers
from tests.test_serving import pids_with

pytestmark = pytest.mark.docker

TASKS = ["hello-file", "no-network"]


def default_config(tmp_path: Path, model: str) -> dict:
    """The repo's config.yaml as is, but for where the job goes, which tasks run, and a model name no other
    server on this machine has (so its process can be found)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["job_name"] = f"agents-default-{uuid.uuid4().hex[:8]}"
    config["jobs_dir"] = str(tmp_path / "artifacts" / "jobs")
    config["dataset"] = {**config["dataset"], "registry": str(REPO / config["dataset"]["registry"]), "include": TASKS}
    config["llm_api"] = {**config["llm_api"], "model": model}
    return config


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_the_default_config_evaluates_smollm2_with_the_built_in_agent(tmp_path: Path):
    config = default_config(tmp_path, model := f"smollm2-{uuid.uuid4().hex[:8]}")
    assert (config["agent"]["name"], config["agent"]["kwargs"]["tool_calling"]) == ("evalkit", False)
    assert "serve" in config["llm_api"] and "deployments" not in config["llm_api"]

    result = await evaluate(config)

    assert sorted(t.task_name for t in result.trials) == TASKS
    assert result.summary.n_trials == len(TASKS)
    for trial in result.trials:
        assert trial.error is None or trial.error.kind != "infrastructure", trial.error
        assert trial.rewards is not None  # the verifier ran and decided, whatever the model did
        assert (trial.agent, trial.agent_outcome.model) == ("evalkit", model)
        try_dir = result.job_dir / trial.trial_name
        calls = lines(try_dir / "agent" / "litellm-trajectory.jsonl")
        assert calls and all(c["status"] == 200 and c["route"] == "passthrough" for c in calls)
        assert all(c["deployment"].startswith(f"hosted_vllm/{model}@http://127.0.0.1:") for c in calls)
        replies = [c["response"]["choices"][0]["message"]["content"] for c in calls]
        assert all(isinstance(r, str) for r in replies) and any(r.strip() for r in replies)
        assert all(isinstance(m["content"], str) for c in calls for m in c["request"]["messages"])
        assert trial.agent_outcome.usage.n_calls == len(calls) and trial.agent_outcome.usage.output_tokens > 0
        turns = [step for step in lines(try_dir / "agent" / "agent-log.jsonl") if "turn" in step]
        assert [step["text"] for step in turns] == replies  # the agent acted on what the model said
    log = result.job_dir.parents[1] / "litellm" / config["job_name"] / "model-server" / "llama_cpp-0.log"
    assert log.stat().st_size > 0
    assert pids_with(model) == []
    assert await job_containers(config["job_name"]) == []
