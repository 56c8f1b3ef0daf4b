"""Agent errors typed from what the agents themselves say: one reading of model-API failures and exit codes,
shared by every scaffold's output parser and the built-in agent."""

from __future__ import annotations

import re
import signal

from evalkit.errors import (
    AgentAuthenticationError,
    AgentContextWindowError,
    AgentCrashError,
    AgentModelError,
    AgentRateLimitedError,
    TrialError,
)

_CONTEXT = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|too many tokens|input is too long"
    r"|input length and `max_tokens` exceed",
    re.IGNORECASE,
)
_RATE = re.compile(r"rate[ _-]?limit|too many requests", re.IGNORECASE)
_AUTH = re.compile(r"authenticat|unauthori[sz]ed|invalid (x-)?api[ _-]?key|not this route's key", re.IGNORECASE)
_MESSAGE_CHARS = 300


def model_error(status: int | None, message: str, *, who: str) -> TrialError:
    """The typed error for a model-API failure the agent gave up on: `status` when it is known, else what the
    message says. `who` names the agent in the message."""
    said = " ".join(message.split())[:_MESSAGE_CHARS]
    code = f" ({status})" if status else ""
    if status == 429 or (status is None and _RATE.search(message)):
        return AgentRateLimitedError(f"{who} stopped: the model API rate-limited it{code}: {said}")
    if _CONTEXT.search(message) and status in (None, 400, 413, 422):
        return AgentContextWindowError(f"{who} stopped: the conversation outgrew the model's context window{code}: {said}")
    if status in (401, 403) or (status is None and _AUTH.search(message)):
        return AgentAuthenticationError(f"{who} stopped: the model API refused its key{code}: {said}")
    return AgentModelError(f"{who} stopped: the model API failed{code}: {said}")


def crash_error(exit_code: int | None, *, who: str) -> TrialError | None:
    """AgentCrashError for an exit code that means a signal (128+N) or a command that could not start; None
    for an ordinary exit."""
    if exit_code in (126, 127):
        return AgentCrashError(f"{who} could not be started (exit code {exit_code})")
    if exit_code is not None and 128 < exit_code < 128 + 65:
        try:
            name = signal.Signals(exit_code - 128).name
        except ValueError:
            name = f"signal {exit_code - 128}"
        return AgentCrashError(f"{who} crashed: killed by {name} (exit code {exit_code})")
    return None
