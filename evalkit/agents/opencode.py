"""OpenCode (`opencode-ai`'s native executable): `opencode run --format json`, its JSON events captured to
`/logs/agent/opencode.jsonl`, with a provider config generated per trial (passed in the environment, nothing
written) that points `@ai-sdk/openai-compatible` at the trial's route. Model-list fetches, auto-update, LSP
downloads, default plugins, sharing and the task directory's own `opencode.json` are off."""

from __future__ import annotations

import json

from evalkit.agents.outcome import model_error
from evalkit.agents.scaffold import AGENT_HOME, INSTRUCTION, InContainerAgent, Route, json_lines
from evalkit.errors import TrialError
from evalkit.tasks import Task

PROVIDER = "evalkit"


class OpenCodeAgent(InContainerAgent):
    output = "opencode.jsonl"

    def command(self, task: Task, route: Route) -> list[str]:
        return [self.executable, "run", "-m", f"{PROVIDER}/{route.model}", "--format", "json", INSTRUCTION]

    def provider_config(self, route: Route) -> dict:
        model: dict = {"name": route.model, "tool_call": True}
        if self.config.model.max_tokens is not None:
            model["limit"] = {"output": self.config.model.max_tokens, "context": 0}
        if self.config.model.temperature is not None:
            model["options"] = {"temperature": self.config.model.temperature}
        return {
            "$schema": "https://opencode.ai/config.json",
            "provider": {
                PROVIDER: {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "evalkit gateway",
                    "options": {"baseURL": route.openai_base_url, "apiKey": "{env:EVALKIT_MODEL_KEY}"},
                    "models": {route.model: model},
                }
            },
            "model": f"{PROVIDER}/{route.model}",
            "autoupdate": False,
            "share": "disabled",
            "lsp": False,
            "formatter": False,
            "permission": {"edit": "allow", "bash": "allow", "webfetch": "allow"},
        }

    def environment(self, task: Task, route: Route) -> dict[str, str]:
        return {
            "OPENCODE_CONFIG_CONTENT": json.dumps(self.provider_config(route)),
            "EVALKIT_MODEL_KEY": route.api_key,
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
            "OPENCODE_DISABLE_SHARE": "1",
            "OPENCODE_DISABLE_PROJECT_CONFIG": "1",
            "XDG_CONFIG_HOME": f"{AGENT_HOME}/.config",
            "XDG_DATA_HOME": f"{AGENT_HOME}/.local/share",
            "XDG_STATE_HOME": f"{AGENT_HOME}/.local/state",
            "XDG_CACHE_HOME": f"{AGENT_HOME}/.cache",
        }

    def read_error(self, output: bytes) -> TrialError | None:
        """The last `{"type": "error", "error": {"name", "data": {"message", "statusCode"}}}` event."""
        errors = [r for r in json_lines(output) if r.get("type") == "error"]
        if not errors:
            return None
        error = errors[-1].get("error") or {}
        data = error.get("data") if isinstance(error, dict) else None
        data = data if isinstance(data, dict) else {}
        status = data.get("statusCode")
        message = str(data.get("message") or data.get("responseBody") or error.get("name") or error)
        return model_error(status if isinstance(status, int) else None, message, who="opencode")
