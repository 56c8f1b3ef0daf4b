"""Custom agents for the scale tests, loaded by import path like a user's own agent."""

from __future__ import annotations

import asyncio
import dataclasses

from evalkit.agents.base import AgentResult
from evalkit.agents.oracle import OracleAgent
from evalkit.environments import Environment
from evalkit.tasks import Task


class StuckAgent:
    """Ignores its timeout: waits for an hour (as an agent stuck on a hung model call would)."""

    name = "stuck"

    async def setup(self, env: Environment) -> None:
        pass

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        await env.exec("sleep 3600 >/dev/null 2>&1 & echo started")
        await asyncio.sleep(3600)
        return AgentResult(exit_code=0)


class ShortExecsAgent:
    """Short commands, then one that outlives its timeout (the engine kills it while other tries hold
    their connections), then the task's solution."""

    name = "short-execs"

    async def setup(self, env: Environment) -> None:
        pass

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        for _ in range(3):
            assert (await env.exec("true")).exit_code == 0
        cut = await env.exec("sleep 30", timeout_sec=0.5)
        assert cut.timed_out, cut
        done = await env.exec("echo done > /tmp/out.txt")
        return AgentResult(exit_code=done.exit_code)


class StrictOracle(OracleAgent):
    """The oracle, with a non-zero exit of `solve.sh` counted as the agent's error (as a real agent's is)."""

    name = "strict-oracle"

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        result = await super().run(task, env, model=model, timeout_sec=timeout_sec)
        return dataclasses.replace(result, exit_code_is_error=True)
