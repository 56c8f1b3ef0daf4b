"""Clients whose protocol the upstream does not speak: the in-house Anthropic → OpenAI path, LiteLLM for the rest,
prices, and a local token count.

Anthropic clients reach OpenAI-chat upstreams (vLLM) through `anthropic_to_openai` on a pooled connection, as
cheap as pass-through. Every other pairing goes through LiteLLM: OpenAI chat clients to other providers with
`litellm.acompletion`, Anthropic clients to providers without OpenAI chat with
`litellm.anthropic.messages.acreate` (not the Router, whose streaming Anthropic path needs fastapi). Routing,
retries and cooldowns stay in `routing.py`, so LiteLLM is called with `num_retries=0` for one deployment at a
time. LiteLLM is imported only in gateway processes that need it, in a thread.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
from types import ModuleType
from typing import Any

import aiohttp
import httpx
import orjson

from evalkit.gateway import anthropic_to_openai
from evalkit.gateway.bodies import malformed
from evalkit.gateway.config import DeploymentConfig, Protocol
from evalkit.gateway.passthrough import post, upstream_headers
from evalkit.gateway.protocols import adds_stream_usage, error_body, forwarded_headers
from evalkit.gateway.records import redact
from evalkit.gateway.routing import Deployment, Price, Reply, retry_after_of

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else `import litellm` fetches a price map


def load_litellm() -> ModuleType:
    """Import LiteLLM (seconds of CPU: call it in a thread, once, before serving)."""
    first_import = "litellm" not in sys.modules
    import litellm

    if first_import:
        # Its import leaves ~300k long-lived objects that every full garbage collection would walk again:
        # with 64 calls in flight that was a third of a forwarded call's CPU. Exempt them from collection.
        gc.collect()
        gc.freeze()

    litellm.suppress_debug_info = True  # its "Provider List" banners would go to the job's output
    if "litellm.proxy.proxy_server" not in sys.modules:
        try:
            import litellm.proxy.proxy_server  # noqa: F401
        except Exception:
            # The Anthropic adapter tries this import on every translated call to find a proxy router; without
            # fastapi it fails, failures are not cached, and each retry costs ~8 ms of CPU. Cache the failure.
            sys.modules["litellm.proxy.proxy_server"] = None  # type: ignore[assignment]
    return litellm


LOCAL_PROVIDERS = frozenset({"hosted_vllm", "custom_openai"})
"""Providers of models LiteLLM's price map does not know (local servers): no price lookup, no LiteLLM import."""


def price_of(config: DeploymentConfig) -> Price | None:
    """USD per token: the config's override, else LiteLLM's price map (imports LiteLLM: call it in a thread)."""
    if config.usd_per_million_input is not None and config.usd_per_million_output is not None:
        per_input = config.usd_per_million_input / 1e6
        return Price(per_input, config.usd_per_million_output / 1e6, per_input)
    if config.provider in LOCAL_PROVIDERS:
        return None
    try:
        info = load_litellm().get_model_info(config.model)
    except Exception:  # not in LiteLLM's map: local and custom models
        return None
    per_input, per_output = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if per_input is None or per_output is None:
        return None
    return Price(per_input, per_output, info.get("cache_read_input_token_cost") or per_input)


def _jsonable(value: Any) -> Any:
    return value.model_dump(exclude_none=True) if hasattr(value, "model_dump") else str(value)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_jsonable)


def in_house(deployment: Deployment, protocol: Protocol) -> bool:
    """Whether this pairing is translated in-house (Anthropic client, OpenAI-chat upstream)."""
    return protocol == "anthropic_messages" and "openai_chat" in deployment.native


async def translate(
    session: aiohttp.ClientSession,
    deployment: Deployment,
    protocol: Protocol,
    body: dict[str, Any],
    stream: bool,
    model: str,
    timeouts: tuple[float, float],
    secrets: list[str],
    litellm: Callable[[], Awaitable[ModuleType]],
) -> Reply:
    """One attempt on one deployment whose native protocols do not include the client's; upstream errors come
    back as replies in the client's protocol.

    `body` holds only the fields this deployment may receive; `model` is the name the agent asked for (answers
    carry it); `timeouts` are (the whole attempt, the idle limit of a stream). A failure to reach the upstream
    is raised as `ConnectionError` / `TimeoutError`, as on the pass-through path, so both protocols get the same
    502 / 504.
    """
    if protocol == "openai_responses":
        return Reply(
            404, error_body(protocol, 404, f"deployment {deployment.label} has no Responses API"), route="local"
        )
    if problem := malformed(protocol, body):
        return Reply(400, error_body(protocol, 400, problem), route="translated")
    if protocol == "anthropic_count_tokens":
        return await _count_tokens(body)
    if in_house(deployment, protocol):
        return await _anthropic_via_openai(session, deployment, body, stream, model)
    return await _through_litellm(await litellm(), deployment, protocol, body, stream, timeouts, secrets)


async def _anthropic_via_openai(
    session: aiohttp.ClientSession,
    deployment: Deployment,
    body: dict[str, Any],
    stream: bool,
    model: str,
) -> Reply:
    upstream = anthropic_to_openai.request(
        body,
        deployment.config.upstream_model,
        vllm=deployment.config.provider == "hosted_vllm",
        stream_usage=deployment.config.stream_usage,
    )
    headers = upstream_headers(deployment, "openai_chat", {})
    response, reply = await post(session, deployment, "openai_chat", orjson.dumps(upstream), stream, headers)
    stops = body.get("stop_sequences") or []
    reply.route = "translated"
    if reply.status != 200:
        try:
            detail = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            detail = None
        reply.body = error_body("anthropic_messages", reply.status, _message_of(detail, reply.status))
        reply.content_type = "application/json"
        return reply
    if reply.read is None:
        try:
            completion = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            completion = None
        if not isinstance(completion, dict):
            raise ConnectionError("the upstream's answer is not a JSON object")
        reply.body = orjson.dumps(anthropic_to_openai.message(completion, model, stops))
        reply.content_type = "application/json"
        return reply
    translator = anthropic_to_openai.StreamTranslator(model, stops)
    upstream_read = reply.read

    async def read() -> bytes:
        while chunk := await upstream_read():
            if out := translator.feed(chunk):
                return out
        return translator.end()

    reply.body, reply.read, reply.content_type = translator.feed(reply.body), read, "text/event-stream"
    reply.withhold_usage = False
    return reply


def _message_of(obj: Any, status: int) -> str:
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return error if isinstance(error, str) else f"upstream answered {status}"


async def _through_litellm(
    litellm: ModuleType,
    deployment: Deployment,
    protocol: Protocol,
    body: dict[str, Any],
    stream: bool,
    timeouts: tuple[float, float],
    secrets: list[str],
) -> Reply:
    timeout, idle_timeout = timeouts
    params = {k: v for k, v in body.items() if k not in ("model", "stream")}
    params.update(deployment.config.litellm_params)
    params.update(
        model=deployment.config.model,
        api_base=deployment.config.api_base,
        api_key=deployment.api_key,
        timeout=timeout,
        num_retries=0,
    )
    withhold_usage = adds_stream_usage(protocol, body, stream, deployment.config.stream_usage)
    if withhold_usage:
        params["stream_options"] = {"include_usage": True}
    try:
        if protocol == "anthropic_messages":
            result = await litellm.anthropic.messages.acreate(stream=stream, **params)
        else:
            result = await litellm.acompletion(stream=stream, **params)
        if not stream:
            return Reply(200, _dumps(result), route="translated")
        events = _anthropic_events(result) if protocol == "anthropic_messages" else _openai_events(result)
        first = await anext(events, b"")
    except Exception as exc:
        if (failure := _transport_failure(exc, secrets)) is not None:
            raise failure from None
        message = redact(str(getattr(exc, "message", exc)), secrets)
        status = getattr(exc, "status_code", None)
        if not isinstance(status, int):
            if isinstance(exc, ValueError | TypeError | LookupError | AttributeError):
                # LiteLLM could not translate this body: resending it cannot help, so not a 5xx.
                problem = f"the request could not be translated: {message}"
                return Reply(400, error_body(protocol, 400, problem), route="translated")
            raise  # a bug, not an upstream answer: the server reports it as a gateway error
        upstream_headers = getattr(exc, "litellm_response_headers", None) or {}
        headers = forwarded_headers(upstream_headers)
        return Reply(
            status,
            error_body(protocol, status, message),
            retry_after=retry_after_of(headers),
            headers=headers,
            route="translated",
        )

    async def read() -> bytes:
        async with asyncio.timeout(idle_timeout):
            return await anext(events, b"")

    return Reply(
        200, first, "text/event-stream", read, events.aclose, withhold_usage=withhold_usage, route="translated"
    )


_CONNECTION_FAILURES = (httpx.TransportError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)


def _transport_failure(exc: BaseException, secrets: list[str]) -> OSError | TimeoutError | None:
    """LiteLLM wraps a refused connection or a dropped one as a "500", a read timeout as a "408": find the cause."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, httpx.TimeoutException | aiohttp.ServerTimeoutError | TimeoutError):
            return TimeoutError("upstream timed out")
        if isinstance(cause, _CONNECTION_FAILURES):
            return ConnectionError(redact(f"{type(cause).__name__}: {cause}", secrets))
        cause = cause.__cause__ or cause.__context__
    return None


async def _anthropic_events(stream: Any) -> AsyncIterator[bytes]:
    """LiteLLM yields ready-made SSE events, as `bytes` or `str` depending on the path taken."""
    try:
        async for chunk in stream:
            if chunk:  # an empty read means the end to the relay
                yield chunk if isinstance(chunk, bytes) else chunk.encode()
    finally:
        await stream.aclose()


async def _openai_events(stream: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield b"data: " + _dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        await stream.aclose()


@cache
def _encoding() -> Any:
    """cl100k_base from the tokenizer files LiteLLM ships (offline), without importing LiteLLM itself."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(spec.submodule_search_locations[0], "litellm_core_utils", "tokenizers"))
    import tiktoken

    return tiktoken.get_encoding("cl100k_base")


def _token_count(body: dict[str, Any]) -> int:
    text = orjson.dumps([body.get("system"), body.get("messages"), body.get("tools")]).decode()
    return len(_encoding().encode(text, disallowed_special=()))


async def _count_tokens(body: dict[str, Any]) -> Reply:
    """An estimate with the cl100k tokenizer (no upstream has the endpoint); in a thread, as it is CPU."""
    tokens = await asyncio.to_thread(_token_count, body)
    return Reply(200, orjson.dumps({"input_tokens": tokens}), route="local")
