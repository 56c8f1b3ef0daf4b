"""The live-sampler path: the built-in `evalkit` agent driven by an in-process sampler, with no HTTP.

`SamplerRoutes` stands where the job's gateway stands (`open_trial` / `close_trial` / `release_route`): each
trial gets a key, and the agent's `ModelClient` for that key calls the sampler directly. Every call is appended
to the trial's `agent/litellm-trajectory.jsonl` as the gateway's own `Call` line (an OpenAI chat request,
delta-encoded against the trial's earlier ones, and response, usage, timing; `route: in_process`), so analysis,
the dashboard and the rollouts' token ids and logprobs read both engines alike.
`ChatTemplateClient` shapes prompts the same way on both paths (`chat_template`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import msgspec
import orjson
from pydantic import BaseModel

from evalkit.agents.model_client import Completion, ModelCallError, ModelClient, Sampling
from evalkit.agents.outcome import model_error
from evalkit.gateway import TrialAccess
from evalkit.gateway.logfile import LogFile, open_log
from evalkit.gateway.protocols import Usage
from evalkit.gateway.records import Call
from evalkit.results import ModelUsage

ENDPOINT, PROTOCOL, ROUTE = "/v1/chat/completions", "openai_chat", "in_process"


class Sampler(Protocol):
    """An in-process model: messages and sampling settings in, one completion out (with token ids and logprobs
    when it has them). The built-in agent's `ModelClient` without `aclose`."""

    async def complete(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None, sampling: Sampling
    ) -> Completion: ...


class ChatTemplate(BaseModel):
    """`chat_template`: the same prompt shape for the in-loop eval and the final test, on both engines."""

    model_config = {"extra": "forbid"}

    system_prompt: str | None = None
    """Replaces the agent's system prompt."""
    user_template: str | None = None
    """The first user message; `{instruction}` stands for the task's instruction."""
    enable_thinking: bool | None = None
    """Sent as `chat_template_kwargs.enable_thinking` (vLLM, llama.cpp) and handed to the sampler."""

    def model_post_init(self, _: Any) -> None:
        if self.user_template is not None and "{instruction}" not in self.user_template:
            raise ValueError("chat_template.user_template must contain {instruction}, where the task's instruction goes")

    def apply(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out, first_user = [], True
        for message in messages:
            if message.get("role") == "system" and self.system_prompt is not None:
                message = {**message, "content": self.system_prompt}
            elif message.get("role") == "user" and first_user:
                first_user = False
                if self.user_template is not None:
                    message = {**message, "content": self.user_template.replace("{instruction}", str(message.get("content") or ""))}
            out.append(message)
        return out

    def sampling(self, sampling: Sampling) -> Sampling:
        if self.enable_thinking is None:
            return sampling
        return replace(sampling, chat_template_kwargs={**(sampling.chat_template_kwargs or {}),
                                                        "enable_thinking": self.enable_thinking})


class ChatTemplateClient:
    """A `ModelClient` that applies a `ChatTemplate` before the wrapped client sees the call."""

    def __init__(self, inner: ModelClient, template: ChatTemplate) -> None:
        self.inner, self.template = inner, template

    async def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None,
                       sampling: Sampling) -> Completion:
        return await self.inner.complete(self.template.apply(messages), tools=tools, sampling=self.template.sampling(sampling))

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Trial:
    def __init__(self, trial_id: str, log: LogFile) -> None:
        self.trial_id, self.log = trial_id, log
        self.seq = 0
        self.usage = ModelUsage()
        self.closed = False


class SamplerRoutes:
    """The gateway's per-trial interface, served by one in-process sampler for a whole job."""

    def __init__(self, sampler: Sampler, model: str) -> None:
        self.sampler, self.model = sampler, model
        self._trials: dict[str, _Trial] = {}

    async def open_trial(self, trial_id: str, trajectory_path: Path) -> TrialAccess:
        log = await asyncio.to_thread(open_log, trajectory_path)
        key = "ek-" + secrets.token_urlsafe(24)
        self._trials[key] = _Trial(trial_id, log)
        return TrialAccess(trial_id=trial_id, api_key=key, base_url="in-process:", anthropic_base_url="in-process:",
                           model=self.model, socket_path=Path("/nonexistent/in-process"))

    async def close_trial(self, api_key: str) -> ModelUsage:
        trial = self._trials.pop(api_key)
        trial.closed = True
        await asyncio.to_thread(trial.log.close)
        if trial.log.error is not None:
            trial.usage.trajectory_error = trial.log.error
        return trial.usage

    async def release_route(self, access: TrialAccess) -> None:
        """Nothing is mounted: there is no route directory to remove."""

    def client(self, access: TrialAccess) -> ModelClient:
        return _SamplerClient(self, self._trials[access.api_key])

    async def _call(self, trial: _Trial, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    sampling: Sampling) -> Completion:
        if trial.closed:
            raise ModelCallError(model_error(401, "the trial is closed", who="evalkit"))
        request = _request(self.model, messages, tools, sampling)
        call = Call(trial_id=trial.trial_id, seq=trial.seq, endpoint=ENDPOINT, protocol=PROTOCOL, route=ROUTE,
                    deployment="sampler", request_fields={k: msgspec.Raw(orjson.dumps(v)) for k, v in request.items()})
        trial.seq += 1
        try:
            completion = await self.sampler.complete(messages, tools=tools, sampling=sampling)
        except Exception as exc:  # any sampler failure is this trial's model error, recorded like an HTTP one
            call.error, call.end = f"{type(exc).__name__}: {exc}", time.time()
            await self._write(trial, call)
            raise ModelCallError(model_error(None, f"the sampler raised {type(exc).__name__}: {exc}", who="evalkit")) from exc
        call.usage = _usage(completion)
        call.status, call.response, call.end = 200, _response(self.model, completion, call.usage), time.time()
        await self._write(trial, call)
        return completion

    async def _write(self, trial: _Trial, call: Call) -> None:
        trial.usage.n_calls += 1
        trial.usage.n_errors += call.error is not None
        if call.usage is not None:
            trial.usage.input_tokens += call.usage.input_tokens
            trial.usage.output_tokens += call.usage.output_tokens

        def write() -> None:  # the line is built where the gateway builds its own: off the event loop
            trial.log.write(orjson.dumps(call.line(trial.log.history)) + b"\n")

        await asyncio.to_thread(write)


class _SamplerClient:
    def __init__(self, routes: SamplerRoutes, trial: _Trial) -> None:
        self.routes, self.trial = routes, trial

    async def complete(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None,
                       sampling: Sampling) -> Completion:
        return await self.routes._call(self.trial, messages, tools, sampling)

    async def aclose(self) -> None:
        pass


def _request(model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, sampling: Sampling) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": False}
    if tools:
        body["tools"] = tools
    for key, value in (("max_tokens", sampling.max_tokens), ("temperature", sampling.temperature),
                       ("chat_template_kwargs", sampling.chat_template_kwargs)):
        if value is not None:
            body[key] = value
    if sampling.logprobs:
        body["logprobs"] = True
    return body


def _usage(completion: Completion) -> Usage:
    u = completion.usage or {}
    output = u.get("completion_tokens", u.get("output_tokens"))
    if output is None:
        output = len(completion.token_ids or ())
    return Usage(input_tokens=int(u.get("prompt_tokens", u.get("input_tokens")) or 0), output_tokens=int(output))


def _response(model: str, completion: Completion, usage: Usage) -> dict[str, Any]:
    """The completion as the OpenAI chat object an HTTP server would have sent (vLLM's `token_ids` included)."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.text}
    if completion.tool_calls:
        message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in completion.tool_calls]
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": completion.finish_reason}
    if completion.logprobs is not None:
        choice["logprobs"] = {"content": [{"logprob": lp} for lp in completion.logprobs]}
    if completion.token_ids is not None:
        choice["token_ids"] = list(completion.token_ids)
    return {"object": "chat.completion", "model": model, "choices": [choice],
            "usage": {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                      "total_tokens": usage.input_tokens + usage.output_tokens}}

