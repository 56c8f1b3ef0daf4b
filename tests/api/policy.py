"""A scripted policy for the evaluator tests: it reads the task's instruction and answers with the bash the
task asks for, as an in-process sampler (`ScriptedSampler`) or as a fake OpenAI upstream's replies (`reply`)."""

from __future__ import annotations

import asyncio
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import orjson

SMOKE_TASKS = ["hello-file", "word-freq", "fix-bash-max"]
SYSTEM = "You are the policy under evaluation."
USER = "Solve this task:\n{instruction}"
"""The policy solves the first two and gives up on the third: mean reward and pass rate 2/3."""
WORD_FREQ = ("tr -cs 'A-Za-z' '\\n' < /app/data/corpus.txt | tr 'A-Z' 'a-z' | grep -v '^$' | sort | uniq -c "
             "| sort -k1,1nr -k2,2 | head -5 | awk '{print $1\" \"$2}' > /app/top5.txt")


def command_for(instruction: str) -> str | None:
    if "/app/hello.txt" in instruction:
        line = re.search(r"```\n(.*?)\n```", instruction, re.S).group(1)
        return f"printf '%s\\n' {shlex.quote(line)} > /app/hello.txt"
    if "most frequent" in instruction:
        return WORD_FREQ
    return None


def next_command(messages: list[dict[str, Any]]) -> str | None:
    """The command for this turn: the task's, until a command has run; then nothing (the agent stops)."""
    if any(m.get("role") == "tool" for m in messages):
        return None
    user = next(m for m in messages if m.get("role") == "user")
    return command_for(str(user["content"]))


def reply(body: dict[str, Any]) -> Any:
    """The policy as a fake OpenAI upstream's answer to a request body."""
    from tests.gateway.fake_upstream import Reply

    command = next_command(body["messages"])
    if command is None:
        return Reply(text="Done.")
    return Reply(text="", tool_calls=[{"name": "bash", "arguments": {"command": command}}])


@dataclass
class ScriptedSampler:
    """The policy in process, as a trainer's sampler: token ids and logprobs with every completion; it records
    what it was given."""

    delay: float = 0.0
    calls: list[tuple[list[dict[str, Any]], Any]] = field(default_factory=list)

    async def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None, sampling: Any) -> Any:
        from evalkit.agents import Completion
        from evalkit.agents.model_client import ToolCall

        self.calls.append(([dict(m) for m in messages], sampling))
        await asyncio.sleep(self.delay)
        command = next_command(messages)
        if command is None:
            return Completion(text="Done.", finish_reason="stop", token_ids=(7, 8), logprobs=(-0.5, -0.25),
                              usage={"prompt_tokens": 40, "completion_tokens": 2})
        call = ToolCall(id=f"call_{len(self.calls)}", name="bash", arguments=orjson.dumps({"command": command}).decode())
        return Completion(text="", tool_calls=(call,), finish_reason="tool_calls", token_ids=(1, 2, 3),
                          logprobs=(-0.1, -0.2, -0.3), usage={"prompt_tokens": 30, "completion_tokens": 3})
