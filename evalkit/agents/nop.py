"""The nop agent does nothing: a baseline (what reward does an untouched environment get?) and a probe."""

from __future__ import annotations

from evalkit.agents.base import AgentResult
from evalkit.environments import Environment
from evalkit.tasks import Task


class NopAgent:
    name = "nop"

    async def setup(self, env: Environment) -> None:
        pass

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        return AgentResult(exit_code=0)
