"""The `Agent` protocol: set up inside an environment, then run the task's instruction in it.

An agent never sees Docker: it gets an `Environment` (exec / put / read_file) and, when the job has a model,
the gateway access of its trial (per-trial key, model name, TCP URLs, the Unix-socket route).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from evalkit.environments import Environment, Mount
from evalkit.errors import TrialError
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
    error: TrialError | None = None
    """What went wrong, as the agent's own output tells it (rate limited, context window, a crash); None when
    it tells nothing. The engine records it in preference to a bare non-zero exit."""
    log: tuple[Mapping[str, Any], ...] = field(default=())
    """A host-side agent's own record of its steps; the engine writes it to `agent/agent-log.jsonl` (an
    in-container agent writes its logs under `/logs/agent` instead)."""


class Agent(Protocol):
    """What every agent has. Optional attributes the engine reads when present: `version` (recorded in each
    result), `mounts` (read-only mounts the agent's runtime needs) and `in_container` (True: the trial's
    model route is mounted into the container too)."""

    name: str

    async def setup(self, env: Environment) -> None:
        """Prepare the environment (mounts are already there); runs under the agent-setup timeout."""

    async def run(
        self, task: Task, env: Environment, *, model: TrialAccess | None, timeout_sec: float | None
    ) -> AgentResult:
        """Work on `task.instruction`; must return when `timeout_sec` passes (killing what it started)."""


def agent_mounts(agent: Agent) -> tuple[Mount, ...]:
    return tuple(getattr(agent, "mounts", ()))


def uses_route(agent: Agent) -> bool:
    """Whether the agent runs in the container and reaches its model through the mounted route."""
    return bool(getattr(agent, "in_container", False))
