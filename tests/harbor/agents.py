"""A real agent for tests (loaded by import path, like a user's own): it works in the container through the
Environment and exits non-zero, which — unlike the oracle's exit code — is the agent's error."""

from __future__ import annotations

from evalkit.agents import AgentResult
from evalkit.environments import Environment
from evalkit.tasks import Task


class ExitingAgent:
    """Writes the answer the task asks for (`42` to `/app/answer.txt`, or each step's file), then exits 3."""

    name = "exiting-agent"

    async def setup(self, env: Environment) -> None:
        pass

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        answer = f"echo {task.step} > /app/{task.step}.txt" if task.step else "echo 42 > /app/answer.txt"
        result = await env.exec(f"{answer}; exit 3", timeout_sec=timeout_sec)
        return AgentResult(exit_code=result.exit_code, timed_out=result.timed_out)
