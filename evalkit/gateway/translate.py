"""The LiteLLM side: clients whose protocol the upstream does not speak, prices, and a local token count.

Anthropic clients reach OpenAI-only upstreams through `litellm.anthropic.messages.acreate` (not the Router,
whose streaming Anthropic path needs fastapi); OpenAI chat clients reach other providers through
`litellm.acompletion`. Routing, retries and cooldowns stay in `routing.py`, so LiteLLM is called with
`num_retries=0` for one deployment at a time.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import aiohttp
import httpx
import orjson

from evalkit.gateway.bodies import malformed
from evalkit.gateway.config import DeploymentConfig, Protocol
from evalkit.gateway.protocols import adds_stream_usage, error_body, forwarded_headers
from evalkit.gateway.routing import Deployment, Price, Reply, retry_after_of
from evalkit.gateway.trajectory import redact

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


def price_of(config: DeploymentConfig) -> Price | None:
    if config.usd_per_million_input is not None and config.usd_per_million_output is not None:
        per_input = config.usd_per_million_input / 1e6
        return Price(per_input, config.usd_per_million_output / 1e6, per_input)
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


async def translate(
    deployment: Deployment, protocol: Protocol, body: dict[str, Any], stream: bool, timeout: float, secrets: list[str]
) -> Reply:
    """One attempt on one deployment through LiteLLM; upstream errors come back as replies in the client's protocol.

    `body` holds only the fields this deployment may receive. A failure to reach the upstream is raised as
    `ConnectionError` / `TimeoutError`, as on the pass-through path, so both protocols get the same 502 / 504.
    """
    if protocol == "openai_responses":
        return Reply(
            404, error_body(protocol, 404, f"deployment {deployment.label} has no Responses API"), route="local"
        )
    if problem := malformed(protocol, body):
        return Reply(400, error_body(protocol, 400, problem), route="translated")
    if protocol == "anthropic_count_tokens":
        return await _count_tokens(body)
    litellm = load_litellm()
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


async def _count_tokens(body: dict[str, Any]) -> Reply:
    """An estimate with LiteLLM's bundled tokenizer (no upstream has the endpoint); in a thread, as it is CPU."""
    from litellm.litellm_core_utils.default_encoding import encoding

    text = orjson.dumps([body.get("system"), body.get("messages"), body.get("tools")]).decode()
    tokens = await asyncio.to_thread(encoding.encode, text, disallowed_special=())
    return Reply(200, orjson.dumps({"input_tokens": len(tokens)}), route="local")
