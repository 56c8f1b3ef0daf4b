"""The per-job model gateway: OpenAI- and Anthropic-compatible endpoints in front of the job's upstreams.

Agents get a per-trial key, TCP URLs and a Unix socket of their own (`await Gateway.open_trial(...)`); every
call they make is appended to their trial's `litellm-trajectory.jsonl` (read it with
`evalkit.gateway.trajectory.read_trajectory`), and its usage is summed into the trial's `ModelUsage`. The
gateway runs in processes of its own; names are imported on first use, so importing this package (or the
trajectory reader) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evalkit.gateway.config import DeploymentConfig, LLMApiConfig
    from evalkit.gateway.gateway import Gateway
    from evalkit.gateway.trials import TrialAccess
    from evalkit.results import ModelUsage

__all__ = ["DeploymentConfig", "Gateway", "LLMApiConfig", "ModelUsage", "TrialAccess"]

_HOMES = {
    "DeploymentConfig": "evalkit.gateway.config",
    "LLMApiConfig": "evalkit.gateway.config",
    "Gateway": "evalkit.gateway.gateway",
    "ModelUsage": "evalkit.results",
    "TrialAccess": "evalkit.gateway.trials",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
