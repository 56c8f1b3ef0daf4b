"""A scripted model behind the gateway: the real OpenAI chat wire protocol (tests/gateway/fake_upstream.py), with
replies chosen from each request the way a model would choose them — from what the agent sent, not from where
it sits in a script.

`solver(...)` drives any scaffold through its own shell tool: it finds the scaffold's bash-like tool among the
request's `tools`, calls it with `SOLVE` until a tool result is in the conversation, then says it is done.
Without tools (a text-action agent) it answers with a fenced ```bash block instead. It never assumes the
instruction is the last user message (Claude Code appends a system reminder after it); it only checks that
the instruction's marker is somewhere in what the agent sent. `quitter()` gives up at once, without a tool call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.gateway.fake_upstream import FakeUpstream, Reply, Step

MARKER = "evalkit-agents-marker-7f3a"
INSTRUCTION = f"Write the text {MARKER} into the file /app/answer.txt. ({MARKER})"
SOLVE = f"echo {MARKER} > /app/answer.txt"
TEST_SH = f'grep -qx {MARKER} /app/answer.txt && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt'
SHELL_TOOLS = ("bash", "terminal", "execute_bash", "shell")
"""The scaffolds' shell tools by name: Claude Code `Bash`, OpenCode `bash`, OpenHands `terminal`, evalkit `bash`."""


def shell_tool(body: dict[str, Any]) -> str | None:
    """The name of the request's bash-like tool, as the agent spelled it."""
    for tool in body.get("tools") or []:
        name = (tool.get("function") or {}).get("name", "")
        if name.lower() in SHELL_TOOLS:
            return name
    return None


def _texts(body: dict[str, Any]) -> str:
    parts = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return "\n".join(parts)


def _ran_tool(body: dict[str, Any]) -> bool:
    """A tool result (or, for a text-action agent, a command's output) is already in the conversation."""
    messages = body.get("messages") or []
    if any(m.get("role") == "tool" for m in messages):
        return True
    roles = [m.get("role") for m in messages]
    return "assistant" in roles and "user" in roles[roles.index("assistant"):]


def solver() -> Callable[[dict[str, Any]], Step]:
    def reply(body: dict[str, Any]) -> Step:
        if MARKER not in _texts(body):  # a side request (a title, a summary): plain text
            return Reply(text="A short title", chunks=1)
        if _ran_tool(body):
            return Reply(text="Done: the file is written.", chunks=2)
        tool = shell_tool(body)
        if tool is None:  # a text-action agent
            return Reply(text=f"I will write the file.\n```bash\n{SOLVE}\n```", chunks=3)
        arguments: dict[str, Any] = {"command": SOLVE}
        if tool == "bash" and any("description" in str(t) for t in body.get("tools") or []):
            arguments["description"] = "Write the answer file"
        return Reply(text="", tool_calls=[{"name": tool, "arguments": arguments}])

    return reply


def quitter() -> Callable[[dict[str, Any]], Step]:
    return lambda body: Reply(text="I give up: I cannot do this task.", chunks=2)


def upstream_calls(upstream: FakeUpstream) -> int:
    return sum(1 for r in upstream.received if r.path == "/v1/chat/completions")
