"""The oracle agent runs the task's reference solution: the check that a task and its verifier agree."""

from __future__ import annotations

from evalkit.agents.base import AgentResult
from evalkit.environments import Environment
from evalkit.tasks import Task


class OracleAgent:
    name = "oracle"

    async def setup(self, env: Environment) -> None:
        pass

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        await env.put(task.solution_dir, "/solution")
        result = await env.exec(
            "bash /solution/solve.sh > /logs/agent/oracle.txt 2>&1",
            timeout_sec=timeout_sec,
            env=task.config.solution.env,
            user=task.config.agent.user,
        )
        return AgentResult(exit_code=result.exit_code, timed_out=result.timed_out)
