"""Jobs with a model for the agent tests: a no-network task the scripted model knows how to solve, a scripted
upstream on 127.0.0.1 behind a `hosted_vllm/` deployment, and job names unique per test."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.agents.scripted import INSTRUCTION, TEST_SH
from tests.conftest import write_task
from tests.gateway.fake_upstream import FakeUpstream

MODEL = "scripted"
NO_NETWORK = '[agent]\ntimeout_sec = 240\n[verifier]\ntimeout_sec = 60\n[environment]\nnetwork_mode = "no-network"\n'


def answer_task(root: Path, name: str = "answer", *, task_toml: str = NO_NETWORK) -> Path:
    """A task whose instruction asks for the scripted answer in /app/answer.txt, and whose test checks it."""
    task = write_task(root, name, test=TEST_SH, task_toml=task_toml)
    (task / "instruction.md").write_text(INSTRUCTION + "\n")
    return task


def job_config(tmp_path: Path, agent: dict[str, Any], upstream: FakeUpstream, **extra: Any) -> dict[str, Any]:
    """A job over `tmp_path/tasks` with the agent and a gateway in front of the scripted upstream."""
    return {
        "job_name": f"agents-{uuid.uuid4().hex[:10]}",
        "jobs_dir": str(tmp_path / "artifacts" / "jobs"),
        "dataset": {"path": str(tmp_path / "tasks")},
        "agent": agent,
        "llm_api": {"model": MODEL, "deployments": [{"model": f"hosted_vllm/{MODEL}", "api_base": upstream.url}],
                    "max_retries": 0},
        **extra,
    }
