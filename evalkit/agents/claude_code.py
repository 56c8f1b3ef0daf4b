"""Claude Code (`@anthropic-ai/claude-code`'s native executable): print mode, stream-json events captured to
`/logs/agent/claude-code.jsonl`, pointed at the trial's route with the trial's key. It speaks only Anthropic
`/v1/messages`; the gateway translates for OpenAI-only upstreams."""

from __future__ import annotations

import re

from evalkit.agents.outcome import model_error
from evalkit.agents.scaffold import INSTRUCTION, InContainerAgent, Route, json_lines
from evalkit.errors import TrialError
from evalkit.tasks import Task

_API_STATUS = re.compile(r"API Error: (\d{3})")


class ClaudeCodeAgent(InContainerAgent):
    output = "claude-code.jsonl"

    def command(self, task: Task, route: Route) -> list[str]:
        argv = [self.executable, "-p", INSTRUCTION, "--dangerously-skip-permissions",
                "--output-format", "stream-json", "--verbose", "--model", route.model]
        if self.config.model.max_turns is not None:
            argv += ["--max-turns", str(self.config.model.max_turns)]
        return argv

    def environment(self, task: Task, route: Route) -> dict[str, str]:
        env = {
            "ANTHROPIC_BASE_URL": route.root,
            "ANTHROPIC_API_KEY": route.api_key,
            "ANTHROPIC_MODEL": route.model,
            # Its small side requests (titles, summaries) go to the same model: the gateway serves only one.
            "ANTHROPIC_SMALL_FAST_MODEL": route.model,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": route.model,
            "ANTHROPIC_DEFAULT_SONNET_MODEL": route.model,
            "ANTHROPIC_DEFAULT_OPUS_MODEL": route.model,
            "IS_SANDBOX": "1",  # `--dangerously-skip-permissions` is refused as root without it
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",  # else a per-request hash in the system prompt defeats prefix caching
        }
        if self.config.model.max_tokens is not None:
            env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(self.config.model.max_tokens)
        return env

    def read_error(self, output: bytes) -> TrialError | None:
        """The final `{"type": "result", "is_error": true, ...}` event says why it stopped."""
        results = [r for r in json_lines(output) if r.get("type") == "result"]
        if not results or not results[-1].get("is_error"):
            return None
        result = results[-1]
        text = str(result.get("result") or result.get("subtype") or "")
        status = result.get("api_error_status")
        if not isinstance(status, int):
            found = _API_STATUS.search(text)
            status = int(found.group(1)) if found else None
        if result.get("subtype") == "error_max_turns":
            return None  # a limit the config set, not a failure: the verifier decides
        return model_error(status, text, who="claude-code")
