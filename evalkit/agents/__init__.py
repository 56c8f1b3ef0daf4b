"""Agents by name. `agent_factory` is the one place a config's `agent:` block becomes agents: it checks the
block once (name, options, the scaffold's runtime tree) and returns a function that makes one agent per trial.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from evalkit.agents.base import Agent, AgentResult
from evalkit.agents.claude_code import ClaudeCodeAgent
from evalkit.agents.evalkit_agent import EvalkitAgent
from evalkit.agents.model_client import Completion, HTTPModelClient, ModelCallError, ModelClient, Sampling
from evalkit.agents.nop import NopAgent
from evalkit.agents.opencode import OpenCodeAgent
from evalkit.agents.openhands import OpenHandsAgent
from evalkit.agents.oracle import OracleAgent
from evalkit.errors import ConfigError
from evalkit.runtimes import SCAFFOLDS, check_runtime

if TYPE_CHECKING:
    from evalkit.config import AgentConfig

AGENTS: dict[str, type] = {"oracle": OracleAgent, "nop": NopAgent}
"""Built-ins that take only `kwargs`."""
MODEL_AGENTS: dict[str, type] = {
    "evalkit": EvalkitAgent,
    "claude-code": ClaudeCodeAgent,
    "opencode": OpenCodeAgent,
    "openhands-sdk": OpenHandsAgent,
}
"""Agents that call the job's model and read the whole `agent:` block; the last three run in the container
from a runtime tree (`evalkit.runtimes.SCAFFOLDS`)."""


def agent_factory(config: AgentConfig, *, has_model: bool, base_dir: Path | None = None) -> Callable[[], Agent]:
    """Check the `agent:` block once, before the first trial, and return a maker of one agent per trial.

    Unknown names list the known ones; a scaffold's runtime tree must be built and current (`check_runtime`:
    reads one small file); an agent that calls a model needs the job's `llm_api`. Relative
    `runtime_host_path`s are resolved against `base_dir` (the config file's directory)."""
    name = config.name
    if name in MODEL_AGENTS:
        if not has_model:
            raise ConfigError(f"agent.name: the {name} agent calls a model: the config needs an llm_api block")
        cls = MODEL_AGENTS[name]
        config = _resolve_runtime(config, base_dir or Path.cwd())
        make: Callable[[], Agent] = lambda: cls(config, **config.kwargs)  # noqa: E731
    else:
        for field in ("version", "runtime_image", "runtime_host_path"):
            if getattr(config, field) is not None:
                raise ConfigError(
                    f"agent.{field}: only in-container scaffolds ({', '.join(SCAFFOLDS)}) have a runtime; "
                    f"agent {name!r} takes none"
                )
        cls = AGENTS.get(name) or _import_agent(name)
        make = lambda: cls(**config.kwargs)  # noqa: E731
    try:
        make()
    except TypeError as exc:
        raise ConfigError(f"agent.kwargs: invalid options for agent {name!r}: {exc}") from None
    return make


def create_agent(config: AgentConfig, *, has_model: bool = True) -> Agent:
    """One agent from an `agent:` block (see `agent_factory`)."""
    return agent_factory(config, has_model=has_model)()


def _resolve_runtime(config: AgentConfig, base_dir: Path) -> AgentConfig:
    """The block with the scaffold's defaults filled in and its runtime tree checked; as is for `evalkit`."""
    if config.name not in SCAFFOLDS:
        for field in ("version", "runtime_image", "runtime_host_path"):
            if getattr(config, field) is not None:
                raise ConfigError(f"agent.{field}: the evalkit agent runs on the host and takes no runtime")
        return config
    scaffold = SCAFFOLDS[config.name]
    if config.runtime_image not in (None, scaffold.runtime_image):
        raise ConfigError(
            f"agent.runtime_image: this evalkit builds {scaffold.name} as {scaffold.runtime_image}, "
            f"not {config.runtime_image!r} (leave it out, or set it to that)"
        )
    host_path = config.runtime_host_path
    host_path = scaffold.runtime_host_path if host_path is None else (base_dir / host_path.expanduser()).absolute()
    version = config.version or scaffold.version
    check_runtime(scaffold, host_path, version)
    return config.model_copy(update={"version": version, "runtime_image": scaffold.runtime_image,
                                     "runtime_host_path": host_path})


def _import_agent(path: str) -> type:
    module_name, _, attr = path.partition(":")
    if not attr:
        known = ", ".join([*AGENTS, *MODEL_AGENTS])
        raise ConfigError(
            f"agent.name: unknown agent {path!r}; known: {known}, or an import path like 'my_package.agents:MyAgent'"
        )
    try:
        return getattr(import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"agent.name: cannot import agent {path!r}: {exc}") from None


__all__ = [
    "AGENTS",
    "MODEL_AGENTS",
    "Agent",
    "AgentResult",
    "Completion",
    "HTTPModelClient",
    "ModelCallError",
    "ModelClient",
    "Sampling",
    "agent_factory",
    "create_agent",
]
