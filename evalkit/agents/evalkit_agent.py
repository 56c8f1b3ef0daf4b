"""`evalkit`, the built-in agent: a loop in evalkit's own process that asks the model for the next command and
runs it in the task's container through `Environment.exec`.

Two ways to act: tool calling (one `bash` tool; several calls per turn run in order), or text actions for
models without tool calling (`tool_calling: false`: the first fenced ```bash block of each reply is the
command). A reply that acts no more ends the run. Each command has its own timeout, and its output is cut to
its first and last characters before the model sees it. The model is reached through a `ModelClient`: by
default the trial's gateway over HTTP (so every call lands in the trial's trajectory), or whatever a caller
plugs in (an in-process sampler).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from evalkit.agents.base import AgentResult
from evalkit.agents.model_client import Completion, HTTPModelClient, ModelCallError, ModelClient, Sampling
from evalkit.environments import Environment
from evalkit.tasks import Task

if TYPE_CHECKING:
    from evalkit.config import AgentConfig
    from evalkit.gateway import TrialAccess

DEFAULT_MAX_TURNS = 50
BASH_TOOL = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a bash command in the task's Linux environment and return its output and exit code.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The command to run."}},
            "required": ["command"],
        },
    },
}
TOOL_PROMPT = (
    "You are an autonomous agent working on a task in a Linux environment. Run commands with the `bash` tool; "
    "you see each command's output. Work until the task is done, then reply without calling a tool."
)
TEXT_PROMPT = (
    "You are an autonomous agent working on a task in a Linux environment. To run a command, put it in a "
    "fenced block:\n```bash\n<command>\n```\nOne command per reply; its output comes back in the next message. "
    "Work until the task is done, then reply without a bash block."
)
_FENCE = re.compile(r"```(?:bash|sh|shell)?[ \t]*\n(.*?)```", re.DOTALL)


class EvalkitAgent:
    name = "evalkit"
    version = "1"

    def __init__(
        self,
        config: AgentConfig,
        *,
        tool_calling: bool = True,
        command_timeout_sec: float = 180.0,
        max_output_chars: int = 10_000,
        system_prompt: str | None = None,
        client: Callable[[TrialAccess], ModelClient] | None = None,
    ) -> None:
        if max_output_chars < 100:
            raise TypeError("max_output_chars must be at least 100")
        self.config = config
        self.tool_calling = tool_calling
        self.command_timeout_sec = command_timeout_sec
        self.max_output_chars = max_output_chars
        self.system_prompt = system_prompt or (TOOL_PROMPT if tool_calling else TEXT_PROMPT)
        self.max_turns = config.model.max_turns or DEFAULT_MAX_TURNS
        self.sampling = Sampling(max_tokens=config.model.max_tokens, temperature=config.model.temperature)
        self.client = client or (lambda access: HTTPModelClient(access.base_url, access.api_key, access.model))

    async def setup(self, env: Environment) -> None:
        pass

    async def run(
        self, task: Task, env: Environment, *, model: TrialAccess | None, timeout_sec: float | None
    ) -> AgentResult:
        if model is None:
            raise ValueError("the evalkit agent needs a model: give the job an llm_api block")
        log: list[dict[str, Any]] = []
        client = self.client(model)
        try:
            async with asyncio.timeout(timeout_sec):
                await self._loop(task, env, client, log)
        except TimeoutError:
            log.append({"end": "timeout"})
            return AgentResult(exit_code=None, timed_out=True, log=tuple(log))
        except ModelCallError as exc:
            log.append({"end": "model_error", "error": str(exc)})
            return AgentResult(exit_code=1, error=exc.error, log=tuple(log))
        finally:
            await client.aclose()
        return AgentResult(exit_code=0, log=tuple(log))

    async def _loop(self, task: Task, env: Environment, client: ModelClient, log: list[dict[str, Any]]) -> None:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": task.instruction},
        ]
        tools = [BASH_TOOL] if self.tool_calling else None
        for turn in range(self.max_turns):
            completion = await client.complete(messages, tools=tools, sampling=self.sampling)
            step: dict[str, Any] = {"turn": turn, "text": completion.text, "finish_reason": completion.finish_reason}
            log.append(step)
            if self.tool_calling:
                acted = await self._tool_turn(task, env, completion, messages, step)
            else:
                acted = await self._text_turn(task, env, completion, messages, step)
            if not acted:
                log.append({"end": "done"})
                return
        log.append({"end": "max_turns"})

    async def _tool_turn(self, task: Task, env: Environment, completion: Completion, messages: list[dict[str, Any]],
                         step: dict[str, Any]) -> bool:
        calls = completion.tool_calls
        message: dict[str, Any] = {"role": "assistant", "content": completion.text}
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls
            ]
        messages.append(message)
        step["commands"] = []
        for call in calls:
            command = _command_of(call.name, call.arguments)
            if command is None:
                observation = 'error: call the `bash` tool with a JSON object {"command": "<command>"}'
                step["commands"].append({"tool": call.name, "arguments": call.arguments, "refused": True})
            else:
                observation = await self._execute(task, env, command, step)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": observation})
        return bool(calls)

    async def _text_turn(self, task: Task, env: Environment, completion: Completion, messages: list[dict[str, Any]],
                         step: dict[str, Any]) -> bool:
        messages.append({"role": "assistant", "content": completion.text})
        found = _FENCE.search(completion.text)
        if found is None:
            return False
        step["commands"] = []
        messages.append({"role": "user", "content": await self._execute(task, env, found.group(1).strip(), step)})
        return True

    async def _execute(self, task: Task, env: Environment, command: str, step: dict[str, Any]) -> str:
        """Run one command; what the model sees of it (exit code and output, cut to `max_output_chars`)."""
        result = await env.exec(command, timeout_sec=self.command_timeout_sec, env=self.config.env or None,
                                user=task.config.agent.user)
        output = _truncate(result.output, self.max_output_chars)
        step["commands"].append({"command": command, "exit_code": result.exit_code, "timed_out": result.timed_out,
                                 "output": output})
        if result.timed_out:
            return f"The command timed out after {self.command_timeout_sec:g} s and was killed.\n{output}"
        return f"exit code {result.exit_code}\n{output}"


def _command_of(name: str, arguments: str) -> str | None:
    if name != "bash":
        return None
    try:
        args = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return None
    command = args.get("command") if isinstance(args, dict) else None
    return command if isinstance(command, str) and command.strip() else None


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[… {len(text) - 2 * half} characters omitted …]\n{text[-half:]}"
