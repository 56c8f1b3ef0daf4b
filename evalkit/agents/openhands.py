"""The OpenHands SDK: a small driver (`openhands_driver.py`, passed to the tree's Python with `-c`, so nothing is
written into the container) runs one conversation with the terminal tool against the trial's route, its events
captured to `/logs/agent/openhands.jsonl`. `string_content: true` sends message content as plain strings, for
servers whose chat template cannot take content lists (llama.cpp's)."""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING

from evalkit.agents.outcome import model_error
from evalkit.agents.scaffold import InContainerAgent, Route, Var, json_lines
from evalkit.errors import TrialError
from evalkit.tasks import Task

if TYPE_CHECKING:
    from evalkit.config import AgentConfig

DRIVER = Var("EVALKIT_OPENHANDS_DRIVER")
_ERROR_TYPES = {
    "RateLimitError": 429,
    "LLMRateLimitError": 429,
    "ContextWindowExceededError": 400,
    "LLMContextWindowExceedError": 400,
    "AuthenticationError": 401,
    "LLMAuthenticationError": 401,
    "PermissionDeniedError": 403,
}
"""LiteLLM's and the SDK's exception classes (in the driver's `evalkit_error.types`) and the status each means;
the context-window ones name themselves in the message too."""


class OpenHandsAgent(InContainerAgent):
    output = "openhands.jsonl"

    def __init__(self, config: AgentConfig, *, extra_args: list[str] | None = None, string_content: bool = False,
                 num_retries: int = 2) -> None:
        super().__init__(config, extra_args=extra_args)
        self.string_content = string_content
        self.num_retries = num_retries
        self.driver = resources.files("evalkit.agents").joinpath("openhands_driver.py").read_text()

    def command(self, task: Task, route: Route) -> list[str]:
        return [self.executable, "-c", DRIVER]

    def environment(self, task: Task, route: Route) -> dict[str, str]:
        model = self.config.model
        settings = {
            "events": f"/logs/agent/{self.output}",
            "model": route.model,
            "base_url": route.openai_base_url,
            "string_content": self.string_content,
            "num_retries": self.num_retries,
            "temperature": model.temperature,
            "max_tokens": model.max_tokens,
            "max_turns": model.max_turns or 100,
        }
        return {
            "EVALKIT_OPENHANDS_DRIVER": self.driver,
            "EVALKIT_OPENHANDS": json.dumps(settings),
            "EVALKIT_MODEL_KEY": route.api_key,
            "OPENHANDS_SUPPRESS_BANNER": "1",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else LiteLLM fetches its price list from the internet
        }

    def read_error(self, output: bytes) -> TrialError | None:
        """The driver's `{"evalkit_error": {"type", "types", "message"}}` line, typed by LiteLLM's class names."""
        errors = [r["evalkit_error"] for r in json_lines(output) if isinstance(r.get("evalkit_error"), dict)]
        if not errors:
            return None
        error = errors[-1]
        types = [t for t in error.get("types") or [] if isinstance(t, str)]
        status = next((_ERROR_TYPES[t] for t in types if t in _ERROR_TYPES), None)
        context = any("ContextWindowExceed" in t for t in types)
        message = f"{'ContextWindowExceeded ' if context else ''}{error.get('type')}: {error.get('message')}"
        return model_error(status, message, who="openhands-sdk")
