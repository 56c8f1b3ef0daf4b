"""Agents for the API tests, loaded by import path like a user's own."""

from __future__ import annotations

from evalkit.agents import AgentResult
from evalkit.environments import Environment
from evalkit.errors import AgentSetupError
from evalkit.tasks import Task


class FlakySetupAgent:
    """Fails its setup (an infrastructure error) in images that carry `/setup-fails`; elsewhere it writes
    the answer the test tasks check."""

    name = "flaky-setup"

    async def setup(self, env: Environment) -> None:
        probe = await env.exec("test -e /setup-fails", timeout_sec=30)
        if probe.exit_code == 0:
            raise AgentSetupError("the agent's tool download failed (registry rate limit)")

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        result = await env.exec("echo done > /tmp/out.txt", timeout_sec=timeout_sec)
        return AgentResult(exit_code=result.exit_code, timed_out=result.timed_out)
