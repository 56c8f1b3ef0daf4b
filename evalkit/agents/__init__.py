"""Agents by name. `create_agent` is the one place a config's `agent.name` becomes an object."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from evalkit.agents.base import Agent, AgentResult
from evalkit.agents.nop import NopAgent
from evalkit.agents.oracle import OracleAgent
from evalkit.errors import ConfigError

AGENTS: dict[str, type] = {"oracle": OracleAgent, "nop": NopAgent}


def create_agent(name: str, kwargs: dict[str, Any] | None = None) -> Agent:
    """A built-in agent by name, or your own class by import path (`package.module:ClassName`)."""
    cls = AGENTS.get(name) or _import_agent(name)
    try:
        return cls(**(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"agent.kwargs: invalid options for agent {name!r}: {exc}") from None


__all__ = ["AGENTS", "Agent", "AgentResult", "create_agent"]


def _import_agent(path: str) -> type:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ConfigError(
            f"agent.name: unknown agent {path!r}; available: {', '.join(sorted(AGENTS))}, "
            "or an import path like 'my_package.agents:MyAgent'"
        )
    try:
        return getattr(import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"agent.name: cannot import agent {path!r}: {exc}") from None
