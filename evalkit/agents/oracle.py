"""The oracle agent runs the task's reference solution, as Harbor's oracle does: the check that a task and
its verifier agree.

`solve.sh` is executed (its shebang picks the interpreter; without one, bash runs it) with
`DEBIAN_FRONTEND=noninteractive` under the task's `[solution] env`, as the agent user, in the working
directory. No `solve.sh` is `SolutionMissingError`; a non-zero exit is recorded but is not an error.
"""

from __future__ import annotations

import asyncio

from evalkit.agents.base import AgentResult
from evalkit.environments import Environment
from evalkit.errors import SolutionMissingError
from evalkit.tasks import Task

ORACLE_ENV = {"DEBIAN_FRONTEND": "noninteractive"}


class OracleAgent:
    name = "oracle"

    async def setup(self, env: Environment) -> None:
        pass

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        solution = task.solution_dir
        if not await asyncio.to_thread((solution / "solve.sh").is_file):
            raise SolutionMissingError(f"Solution script not found: {(solution / 'solve.sh').relative_to(task.path)}")
        await env.put(solution, "/solution", executable=("solve.sh",))  # mode 0755 in the upload: no chmod exec
        result = await env.exec(
            "(/solution/solve.sh) > /logs/agent/oracle.txt 2>&1",
            timeout_sec=timeout_sec,
            env={**ORACLE_ENV, **task.config.solution.env},
            user=_user(task),
        )
        return AgentResult(exit_code=result.exit_code, timed_out=result.timed_out, exit_code_is_error=False)


def _user(task: Task) -> str | None:
    """The step's `[steps.agent] user`, else the task's `[agent] user` (else the image's USER)."""
    step = next((s for s in task.steps if s.name == task.step), None)
    user = step.config.agent.user if step is not None and step.config.agent.user is not None else task.config.agent.user
    return None if user is None else str(user)
