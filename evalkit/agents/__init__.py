"""Agents by name. `create_agent` is the one place a config's `agent.name` becomes an object."""

from __future__ import annotations

from typing import Any

from evalkit.agents.base import Agent, AgentResult
from evalkit.agents.nop import NopAgent
from evalkit.agents.oracle import OracleAgent
from evalkit.errors import ConfigError

AGENTS: dict[str, type] = {"oracle": OracleAgent, "nop": NopAgent}


def create_agent(name: str, kwargs: dict[str, Any] | None = None) -> Agent:
    try:
        cls = AGENTS[name]
    except KeyError:
        raise ConfigError(f"agent.name: unknown agent {name!r}; available: {', '.join(sorted(AGENTS))}") from None
    try:
        return cls(**(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"agent.kwargs: invalid options for agent {name!r}: {exc}") from None


__all__ = ["AGENTS", "Agent", "AgentResult", "create_agent"]
