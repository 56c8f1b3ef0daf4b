"""Per-trial keys: what an agent is handed, and what the gateway keeps for each trial while it runs.

A key is random and lives from `open_trial` to `close_trial`; it is the only thing that ties a request to a
trial (and its trajectory file), so an agent can neither reach the upstream's real key nor another trial's log.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from evalkit.gateway.trajectory import Call, JsonlWriter


class TrialAccess(BaseModel):
    """What an agent needs to reach the model: hand these (and nothing else) to the container."""

    model_config = ConfigDict(frozen=True)

    trial_id: str
    api_key: str
    """Random per-trial key; 401 once the trial is closed."""
    base_url: str
    """OpenAI-style base URL (`…/v1`), for OpenAI SDKs and `OPENAI_BASE_URL`."""
    anthropic_base_url: str
    """The gateway root, for Anthropic SDKs and Claude Code's `ANTHROPIC_BASE_URL`."""
    model: str
    """The model name to send."""


class ModelUsage(BaseModel):
    """Model calls of one trial, summed for its result."""

    n_calls: int = 0
    n_errors: int = 0
    """Calls that ended with an HTTP error status or broke off (timeout, disconnect)."""
    input_tokens: int = 0
    """Prompt tokens, cache reads included."""
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float | None = None
    """Sum over calls whose deployment has a known price; None when none had one."""


def new_key() -> str:
    return "ek-" + secrets.token_urlsafe(24)


class Trial:
    """The live state of one open trial."""

    def __init__(self, trial_id: str, api_key: str, trajectory_path: Path) -> None:
        self.trial_id = trial_id
        self.api_key = api_key
        self.closed = False
        self.calls: set[asyncio.Task[object]] = set()
        """Request handlers in flight for this trial; cancelled when the trial closes."""
        self.usage = ModelUsage()
        self._seq = 0
        self._log = JsonlWriter(trajectory_path)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def record(self, call: Call) -> None:
        """Append the call to the trajectory and add it to the trial's totals."""
        self._log.write(call.line())
        usage = self.usage
        usage.n_calls += 1
        if call.error is not None or call.status is None or call.status >= 400:
            usage.n_errors += 1
        if call.usage is not None:
            usage.input_tokens += call.usage.input_tokens
            usage.output_tokens += call.usage.output_tokens
            usage.cache_read_tokens += call.usage.cache_read_tokens
        if call.cost_usd is not None:
            usage.cost_usd = (usage.cost_usd or 0.0) + call.cost_usd

    def close_log(self) -> None:
        self._log.close()
