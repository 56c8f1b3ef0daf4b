"""Per-trial keys: what an agent is handed, and what the gateway keeps for each trial while it runs.

A key is random and lives from `open_trial` to `close_trial`; it is the only thing that ties a request to a
trial (and its trajectory file), so an agent can neither reach the upstream's real key nor another trial's log.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from evalkit.gateway.protocols import Usage
from evalkit.gateway.trajectory import Call, JsonlWriter
from evalkit.results import ModelUsage


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
        # Plain counters, not a ModelUsage: this runs once per call, and pydantic's setattr is not free.
        self._calls = self._errors = 0
        self._tokens = Usage()
        self._cost: float | None = None
        self._seq = 0
        self._log = JsonlWriter(trajectory_path)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def record(self, call: Call) -> None:
        """Append the call to the trajectory and add it to the trial's totals."""
        self._log.write(call.line())
        self._calls += 1
        if call.error is not None or call.status is None or call.status >= 400:
            self._errors += 1
        if (usage := call.usage) is not None:
            self._tokens.input_tokens += usage.input_tokens
            self._tokens.output_tokens += usage.output_tokens
            self._tokens.cache_read_tokens += usage.cache_read_tokens
        if call.cost_usd is not None:
            self._cost = (self._cost or 0.0) + call.cost_usd

    def usage(self) -> ModelUsage:
        return ModelUsage(n_calls=self._calls, n_errors=self._errors, **self._tokens.as_dict(), cost_usd=self._cost)

    def close_log(self) -> None:
        self._log.close()
