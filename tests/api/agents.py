"""Agents for the API tests, loaded by import path like a user's own."""

from __future__ import annotations

from evalkit.agents import AgentResult
from evalkit.environments import Environment
from evalkit.errors import AgentSetupError
from evalkit.tasks import Task


class FlakySetupAgent:
    """Fails its setup (an infrastructure error) in images that carry `/setup-fails`; elsewhere it writes
    the answer the test tasks check."""

    name = "flaky-setup"

    async def setup(self, env: Environment) -> None:
        probe = await env.exec("test -e /setup-fails", timeout_sec=30)
        if probe.exit_code == 0:
            raise AgentSetupError("the agent's tool download failed (registry rate limit)")

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        result = await env.exec("echo done > /tmp/out.txt", timeout_sec=timeout_sec)
        return AgentResult(exit_code=result.exit_code, timed_out=result.timed_out)


class ChatAgent:
    """A host-side agent with a real OpenAI client: asks the job's model (through the gateway) for bash tool
    calls and runs them in the task's container until the model stops calling tools."""

    name = "chat-agent"
    system = "You are the policy under evaluation."
    tools = [{"type": "function", "function": {"name": "bash", "description": "Run a bash command.", "parameters": {
        "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]

    async def setup(self, env: Environment) -> None:
        pass

    async def run(self, task: Task, env: Environment, *, model: object, timeout_sec: float | None) -> AgentResult:
        import openai
        import orjson

        client = openai.AsyncOpenAI(base_url=model.base_url, api_key=model.api_key, max_retries=0)
        messages: list[dict] = [{"role": "system", "content": self.system}, {"role": "user", "content": task.instruction}]
        try:
            for _ in range(5):
                answer = await client.chat.completions.create(model=model.model, tools=self.tools, messages=messages,
                                                              max_tokens=256, temperature=0.0)
                message = answer.choices[0].message
                messages.append(message.model_dump(exclude_none=True))
                if not message.tool_calls:
                    break
                for call in message.tool_calls:
                    result = await env.exec(orjson.loads(call.function.arguments)["command"], timeout_sec=60)
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result.output or "(no output)"})
        finally:
            await client.close()
        return AgentResult(exit_code=0)
