"""In-container scaffolds: an agent from a runtime tree mounted read-only at `/opt/evalkit/agent`, started with
one exec. Nothing is installed in the task's container.

Each scaffold is a subclass that says three things: its command line, its environment variables, and how to
read an error out of its own output. The route to the model is the same for all: on `none` (and `bridge`) the
trial's socket directory is mounted at `/run/evalkit/model` and the exec first starts the tree's
`evalkit-forward` on the container's `127.0.0.1:ROUTE_PORT`; on `host` the container shares the host's
loopback, so the agent is pointed at the gateway's TCP port instead (a fixed port there would be shared by
every trial).
"""

from __future__ import annotations

import shlex

import orjson
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from evalkit.agents.base import AgentResult
from evalkit.agents.outcome import crash_error
from evalkit.environments import Environment, Mount
from evalkit.environments.base import FileReadError, NetworkMode
from evalkit.errors import TrialError
from evalkit.runtimes import FORWARDER, RUNTIME_MOUNT, scaffold
from evalkit.tasks import Task

if TYPE_CHECKING:
    from evalkit.config import AgentConfig
    from evalkit.gateway import TrialAccess

ROUTE_PORT = 47017
"""The forwarder's port on the container's own loopback (network `none` or `bridge`)."""
AGENT_HOME = "/tmp/evalkit-agent"
"""The agent's HOME: made fresh by the exec, writable by the task's agent user, whoever that is."""
LOG_DIR = "/logs/agent"


class Var(str):
    """An argv element that is the value of an environment variable of the exec: written `"$NAME"`, so long or
    hostile text (the instruction) is never pasted into the script."""


INSTRUCTION = Var("EVALKIT_INSTRUCTION")
"""The task's instruction in a command line."""
OUTPUT_MAX_BYTES = 64 * 1024 * 1024
"""Largest output file read back for error typing (an agent that wrote more is typed by its exit code)."""


@dataclass(frozen=True)
class Route:
    """Where the agent in the container finds its trial's model."""

    root: str
    """`http://127.0.0.1:<port>`: the Anthropic base URL; OpenAI clients add `/v1`."""
    api_key: str
    model: str
    socket: str | None
    """The route's socket inside the container, for the forwarder; None on `host` (no forwarder)."""

    @property
    def openai_base_url(self) -> str:
        return self.root + "/v1"


def container_route(access: TrialAccess, network_mode: NetworkMode) -> Route:
    if network_mode == "host":
        return Route(root=access.anthropic_base_url, api_key=access.api_key, model=access.model, socket=None)
    return Route(root=f"http://127.0.0.1:{ROUTE_PORT}", api_key=access.api_key, model=access.model,
                 socket=str(access.container_socket_path))


class InContainerAgent:
    """Base of the scaffolds. `config` is the job's `agent:` block with the runtime already checked
    (`evalkit.agents.agent_factory`); `extra_args` are appended to the scaffold's command line."""

    in_container = True
    output: ClassVar[str]
    """The file under `/logs/agent` holding the scaffold's own event stream (read back for error typing)."""

    def __init__(self, config: AgentConfig, *, extra_args: list[str] | None = None) -> None:
        self.config = config
        self.scaffold = scaffold(config.name)
        self.name = config.name
        self.version = config.version or self.scaffold.version
        assert config.runtime_host_path is not None, "agent_factory resolves the runtime path"
        self.mounts = (Mount(config.runtime_host_path, RUNTIME_MOUNT),)
        self.extra_args = list(extra_args or [])

    @property
    def executable(self) -> str:
        return f"{RUNTIME_MOUNT}/{self.scaffold.executable}"

    def command(self, task: Task, route: Route) -> list[str]:
        """The scaffold's argv; `INSTRUCTION` (a `Var`) stands for the task's instruction."""
        raise NotImplementedError

    def environment(self, task: Task, route: Route) -> dict[str, str]:
        raise NotImplementedError

    def read_error(self, output: bytes) -> TrialError | None:
        """The error the scaffold's own output reports, if any."""
        raise NotImplementedError

    async def setup(self, env: Environment) -> None:
        pass  # the runtime is mounted: nothing to install

    async def run(
        self, task: Task, env: Environment, *, model: TrialAccess | None, timeout_sec: float | None
    ) -> AgentResult:
        if model is None:
            raise ValueError(f"the {self.name} agent needs a model: give the job an llm_api block")
        route = container_route(model, env.network_mode)
        result = await env.exec(
            self.script(task, route),
            timeout_sec=timeout_sec,
            env={**self.config.env, "HOME": AGENT_HOME, **self.environment(task, route),
                 "EVALKIT_INSTRUCTION": task.instruction},
            user=task.config.agent.user,
        )
        if result.timed_out:
            return AgentResult(exit_code=None, timed_out=True)
        error = crash_error(result.exit_code, who=self.name) or await self._error_from_output(env)
        return AgentResult(exit_code=result.exit_code, error=error)

    def script(self, task: Task, route: Route) -> str:
        """The exec's shell script: a fresh HOME, the forwarder (when the route needs it), then the agent with
        its output captured under /logs/agent."""
        steps = [f"mkdir -p {AGENT_HOME}"]
        if route.socket is not None:
            steps.append(f"{FORWARDER} -d {ROUTE_PORT} {route.socket} 2>>{LOG_DIR}/evalkit-forward.log")
        argv = [*self.command(task, route), *self.extra_args]
        line = " ".join(f'"${a}"' if isinstance(a, Var) else shlex.quote(a) for a in argv)
        stem = self.output.rsplit(".", 1)[0]
        steps.append(f"{line} >{LOG_DIR}/{self.output} 2>{LOG_DIR}/{stem}.stderr")
        return " && ".join(steps)

    async def _error_from_output(self, env: Environment) -> TrialError | None:
        try:
            output = await env.read_file(f"{LOG_DIR}/{self.output}", max_bytes=OUTPUT_MAX_BYTES)
        except FileReadError:  # missing, replaced by a link, too large: the exit code is all there is
            return None
        return self.read_error(output)


def json_lines(output: bytes) -> list[dict[str, Any]]:
    """The JSON objects among an output's lines (anything else a scaffold printed is skipped)."""
    records = []
    for line in output.splitlines():
        if line.startswith(b"{"):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
