"""How the built-in agent calls a model: `ModelClient`, a small protocol (messages and sampling settings in, one
completion out), and `HTTPModelClient`, its OpenAI-chat implementation over HTTP.

The protocol is the seam for training: an in-process sampler that returns token ids and logprobs plugs in
where the HTTP client is, and the agent loop does not change. The HTTP client is deliberately plain:
non-streaming, string message content, `tools` only when the agent uses tool calling — what llama.cpp's
server and vLLM both take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from evalkit.agents.outcome import model_error
from evalkit.errors import TrialError


@dataclass(frozen=True)
class Sampling:
    """Per-call settings; None leaves the server's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    logprobs: bool = False
    """Ask for the sampled tokens' logprobs (and, from vLLM, their ids)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Passed to the server's chat template (vLLM, llama.cpp), e.g. `{"enable_thinking": False}`."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """The arguments as the model wrote them (JSON text, possibly malformed)."""


@dataclass(frozen=True)
class Completion:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    token_ids: tuple[int, ...] | None = None
    """The completion's token ids, when the sampler knows them (vLLM with `return_token_ids`, an in-process one)."""
    logprobs: tuple[float, ...] | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class ModelCallError(Exception):
    """A model call that failed for good; `error` is the typed trial error it means."""

    def __init__(self, error: TrialError) -> None:
        super().__init__(str(error))
        self.error = error


class ModelClient(Protocol):
    async def complete(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None, sampling: Sampling
    ) -> Completion:
        """One completion; ModelCallError when the model cannot give one."""

    async def aclose(self) -> None:
        """Release connections."""


class HTTPModelClient:
    """OpenAI chat completions at `base_url` (`…/v1`) with `api_key`: the trial's gateway access."""

    def __init__(self, base_url: str, api_key: str, model: str, *, timeout_sec: float = 900.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {api_key}"}, timeout=aiohttp.ClientTimeout(total=timeout_sec)
        )

    async def complete(
        self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None, sampling: Sampling
    ) -> Completion:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": False}
        if tools:
            body["tools"] = tools
        if sampling.max_tokens is not None:
            body["max_tokens"] = sampling.max_tokens
        if sampling.temperature is not None:
            body["temperature"] = sampling.temperature
        if sampling.logprobs:
            body["logprobs"] = True
        if sampling.chat_template_kwargs is not None:
            body["chat_template_kwargs"] = sampling.chat_template_kwargs
        try:
            async with self._session.post(self.url, data=orjson.dumps(body),
                                          headers={"Content-Type": "application/json"}) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ModelCallError(model_error(None, f"{type(exc).__name__}: {exc}", who="evalkit")) from None
        if status != 200:
            raise ModelCallError(model_error(status, _error_message(payload), who="evalkit"))
        try:
            return parse_completion(orjson.loads(payload))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise ModelCallError(model_error(None, f"unreadable completion ({type(exc).__name__})", who="evalkit")) from None

    async def aclose(self) -> None:
        await self._session.close()


def parse_completion(data: dict[str, Any]) -> Completion:
    choice = data["choices"][0]
    message = choice["message"]
    calls = tuple(
        ToolCall(id=str(c.get("id") or f"call_{i}"), name=str(c["function"]["name"]),
                 arguments=str(c["function"].get("arguments") or "{}"))
        for i, c in enumerate(message.get("tool_calls") or [])
    )
    logprobs = None
    if isinstance(choice.get("logprobs"), dict) and isinstance(choice["logprobs"].get("content"), list):
        logprobs = tuple(float(t["logprob"]) for t in choice["logprobs"]["content"])
    token_ids = tuple(int(t) for t in choice["token_ids"]) if isinstance(choice.get("token_ids"), list) else None
    return Completion(
        text=message.get("content") or "",
        tool_calls=calls,
        finish_reason=choice.get("finish_reason"),
        token_ids=token_ids,
        logprobs=logprobs,
        usage=data.get("usage") or {},
    )


def _error_message(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:300].decode("utf-8", "replace")
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or data)
