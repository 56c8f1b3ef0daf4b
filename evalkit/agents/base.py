"""The `Agent` protocol: set up inside an environment, then run the task's instruction in it.

An agent never sees Docker: it gets an `Environment` (exec / put) and, when the job has a model, the
gateway access of its trial (URL, per-trial key, model name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from evalkit.environments import Environment
from evalkit.tasks import Task

if TYPE_CHECKING:
    from evalkit.gateway import TrialAccess


@dataclass(frozen=True)
class AgentResult:
    exit_code: int | None
    """None when the run was killed on timeout."""
    timed_out: bool = False
    exit_code_is_error: bool = True
    """Whether a non-zero `exit_code` is the agent's error (`AgentExitError`); the oracle says no, as Harbor's."""


class Agent(Protocol):
    name: str

    async def setup(self, env: Environment) -> None:
        """Prepare the environment (mounts are already there); runs under the agent-setup timeout."""

    async def run(
        self, task: Task, env: Environment, *, model: TrialAccess | None, timeout_sec: float | None
    ) -> AgentResult:
        """Work on `task.instruction`; must return when `timeout_sec` passes (killing what it started)."""
