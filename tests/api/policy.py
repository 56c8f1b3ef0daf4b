"""A scripted policy for the evaluator tests: it reads the task's instruction and answers with the bash the
task asks for, here as a fake OpenAI upstream's replies (`reply`)."""

from __future__ import annotations

import re
import shlex
from typing import Any

SMOKE_TASKS = ["hello-file", "word-freq", "fix-bash-max"]
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
