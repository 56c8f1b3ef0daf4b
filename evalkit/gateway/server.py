"""The HTTP front: authenticate the trial key, validate, route, relay the answer, and record the call.

It runs on aiohttp's low-level server (one dict lookup per request instead of a router and middlewares), with
handler cancellation on: an agent that hangs up also aborts its upstream request, which frees the vLLM slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from evalkit.gateway.config import LLMApiConfig, Protocol
from evalkit.gateway.passthrough import forward
from evalkit.gateway.protocols import (
    Usage,
    error_body,
    error_event,
    has_usage_only_event,
    reassemble,
    split_usage_events,
    usage_of,
)
from evalkit.gateway.routing import Deployment, DeploymentPool, Reply, UpstreamUnavailable
from evalkit.gateway.trajectory import Call, JsonlWriter, json_fragment, raw_text, redact
from evalkit.gateway.translate import translate
from evalkit.gateway.trials import Trial

_JSON = {"Content-Type": "application/json"}


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` (declared or streamed)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {limit}")
    chunks, size, read = [], 0, request.content.readany
    while chunk := await read():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def key_of(headers: Mapping[str, str]) -> str | None:
    """The key from `x-api-key` (Anthropic clients) or `Authorization: Bearer` (OpenAI clients)."""
    if key := headers.get("x-api-key"):
        return key
    auth = headers.get("Authorization", "")
    return auth[7:] if auth[:7].lower() == "bearer " else None


def _message_of(obj: Any, status: int) -> str:
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return error if isinstance(error, str) else f"upstream answered {status}"


class Front:
    """Request handling for one gateway; all state it touches belongs to that gateway."""

    def __init__(
        self,
        config: LLMApiConfig,
        pool: DeploymentPool,
        session: aiohttp.ClientSession,
        trials: dict[str, Trial],
        closed_keys: Mapping[str, object],
        rejected: JsonlWriter,
        secrets: list[str],
    ) -> None:
        self._config, self._pool, self._session = config, pool, session
        self._trials, self._closed_keys, self._rejected, self._secrets = trials, closed_keys, rejected, secrets
        self.stopping = False
        self._routes = {
            ("POST", "/v1/chat/completions"): partial(self._model_call, protocol="openai_chat"),
            ("POST", "/v1/responses"): partial(self._model_call, protocol="openai_responses"),
            ("POST", "/v1/messages"): partial(self._model_call, protocol="anthropic_messages"),
            ("POST", "/v1/messages/count_tokens"): partial(self._model_call, protocol="anthropic_count_tokens"),
            ("GET", "/v1/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,  # Claude Code probes the base URL
        }

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        route = self._routes.get((request.method, request.path))
        if route is None:
            return web.Response(
                status=404,
                body=error_body("openai_chat", 404, f"no route {request.method} {request.path}"),
                headers=_JSON,
            )
        return await route(request)

    # ------------------------------------------------------------------------------------ small endpoints

    async def _root(self, request: web.BaseRequest) -> web.Response:
        return web.Response(text="evalkit gateway\n")

    async def _health(self, request: web.BaseRequest) -> web.Response:
        status = {
            "status": "ok",
            "model": self._config.model,
            "deployments": [d.status() for d in self._pool.deployments],
        }
        return web.Response(body=orjson.dumps(status), headers=_JSON)

    async def _models(self, request: web.BaseRequest) -> web.Response:
        if self._trial_of(request) is None:
            return self._reject(request, "openai_chat")
        # One body both SDKs accept: OpenAI's `object`/`owned_by` and Anthropic's `type`/`display_name`.
        model = {
            "id": self._config.model,
            "object": "model",
            "type": "model",
            "display_name": self._config.model,
            "created": 0,
            "created_at": "1970-01-01T00:00:00Z",
            "owned_by": "evalkit",
        }
        listing = {
            "object": "list",
            "data": [model],
            "has_more": False,
            "first_id": model["id"],
            "last_id": model["id"],
        }
        return web.Response(body=orjson.dumps(listing), headers=_JSON)

    def _trial_of(self, request: web.BaseRequest) -> Trial | None:
        key = key_of(request.headers)
        return self._trials.get(key) if key else None

    def _reject(self, request: web.BaseRequest, protocol: Protocol) -> web.Response:
        """401, and a line in the job's `rejected.jsonl` (no trial owns the request, so no trajectory does)."""
        key = key_of(request.headers)
        reason = "missing key" if not key else "finished trial's key" if key in self._closed_keys else "unknown key"
        self._rejected.write(
            {
                "v": 1,
                "time": time.time(),
                "method": request.method,
                "endpoint": request.path,
                "status": 401,
                "reason": reason,
            }
        )
        return web.Response(
            status=401, body=error_body(protocol, 401, f"{reason}: use the key evalkit gave this trial"), headers=_JSON
        )

    # --------------------------------------------------------------------------------------- model calls

    async def _model_call(self, request: web.BaseRequest, protocol: Protocol) -> web.StreamResponse:
        trial = self._trial_of(request)
        if trial is None:
            return self._reject(request, protocol)
        call = Call(trial.trial_id, trial.next_seq(), request.path, protocol)
        task = asyncio.current_task()
        assert task is not None
        trial.calls.add(task)
        try:
            return await self._serve(request, trial, call, protocol)
        except asyncio.CancelledError:
            reason = "gateway stopped" if self.stopping else "trial closed" if trial.closed else "client disconnected"
            call.error = call.error or reason
            raise
        except Exception as exc:
            call.error = call.error or redact(f"gateway error: {type(exc).__name__}: {exc}", self._secrets)
            raise
        finally:
            trial.calls.discard(task)
            call.end = time.time()
            trial.record(call)

    async def _serve(
        self, request: web.BaseRequest, trial: Trial, call: Call, protocol: Protocol
    ) -> web.StreamResponse:
        try:
            raw = await read_body(request, self._config.max_body_bytes)
        except BodyTooLarge as exc:
            return self._error(call, protocol, 413, str(exc))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            call.request_raw = raw_text(raw)
            return self._error(call, protocol, 400, f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            call.request_raw = raw_text(raw)
            return self._error(call, protocol, 400, "request body must be a JSON object")
        call.request = json_fragment(raw)
        call.stream = stream = body.get("stream") is True
        model = body.get("model")
        if not model:
            return self._error(call, protocol, 400, "missing `model`")
        if model != self._config.model:
            return self._error(call, protocol, 404, f"model {model!r} is not served here; use {self._config.model!r}")
        attempt = partial(self._attempt, protocol, body, stream, request.headers)
        try:
            reply = await self._pool.call(trial.api_key, attempt, call.attempts)
        except UpstreamUnavailable as exc:
            return self._error(call, protocol, 504 if exc.timed_out else 502, f"upstream unavailable: {exc}")
        assert reply.deployment is not None
        call.route, call.deployment = reply.route, reply.deployment.label
        try:
            if reply.read is None:
                return self._complete(call, reply)
            return await self._relay(request, call, reply, protocol)
        finally:
            if reply.close is not None:
                await reply.close()
            self._pool.release(reply.deployment)

    async def _attempt(
        self, protocol: Protocol, body: dict[str, Any], stream: bool, headers: Mapping[str, str], deployment: Deployment
    ) -> Reply:
        if protocol in deployment.native:
            return await forward(self._session, deployment, protocol, body, stream, headers)
        return await translate(deployment, protocol, body, stream, self._config.timeout_sec, self._secrets)

    def _error(self, call: Call, protocol: Protocol, status: int, message: str) -> web.Response:
        """An error the gateway itself answers (bad input, no upstream), in the client's protocol."""
        body = error_body(protocol, status, message)
        call.status, call.error, call.response = status, message, json_fragment(body)
        call.first_byte = time.time()
        return web.Response(status=status, body=body, headers=_JSON)

    def _complete(self, call: Call, reply: Reply) -> web.Response:
        call.first_byte = time.time()
        call.status = reply.status
        try:
            obj = orjson.loads(reply.body)
            call.response = json_fragment(reply.body)
        except orjson.JSONDecodeError:
            obj = None
            call.response_raw = raw_text(reply.body)
        if reply.status >= 400:
            call.error = _message_of(obj, reply.status)
        else:
            self._account(call, reply, usage_of(obj))
        return web.Response(status=reply.status, body=reply.body, headers={"Content-Type": reply.content_type})

    async def _relay(
        self, request: web.BaseRequest, call: Call, reply: Reply, protocol: Protocol
    ) -> web.StreamResponse:
        """Forward a stream chunk by chunk as it arrives; keep the bytes to reassemble once it ends."""
        assert reply.read is not None
        response = web.StreamResponse(
            status=reply.status, headers={"Content-Type": reply.content_type, "Cache-Control": "no-cache"}
        )
        call.status = reply.status
        await response.prepare(request)
        sent: list[bytes] = []
        withheld: list[bytes] = []
        append, read, write, withhold = sent.append, reply.read, response.write, reply.withhold_usage
        try:
            async with asyncio.timeout_at(reply.deadline):
                if reply.body:
                    call.first_byte = time.time()
                    append(reply.body)
                    await write(reply.body)
                while chunk := await read():
                    if call.first_byte is None:
                        call.first_byte = time.time()
                    if withhold and has_usage_only_event(chunk):
                        chunk, hidden = split_usage_events(chunk)
                        withheld.append(hidden)
                        if not chunk:
                            continue
                    append(chunk)
                    await write(chunk)
            await response.write_eof()
        except Exception as exc:  # headers are out: whatever broke, end the stream cleanly and say why
            if request.transport is None or request.transport.is_closing():
                call.error = "client disconnected"
            else:
                call.error = (
                    "upstream timed out mid-stream"
                    if isinstance(exc, TimeoutError)
                    else redact(f"upstream broke off the stream: {type(exc).__name__}: {exc}", self._secrets)
                )
                event = error_event(protocol, call.error)
                append(event)
                with contextlib.suppress(OSError, aiohttp.ClientError):  # the agent may be gone by now too
                    await response.write(event)
                    await response.write_eof()
        finally:
            data = b"".join(sent)
            call.response = reassemble(protocol, data)
            if call.response is None and data:
                call.response_raw = raw_text(data)
            usage = usage_of(call.response)
            if usage is None and withheld:
                usage = usage_of(reassemble(protocol, b"".join(withheld)))
            self._account(call, reply, usage)
            if isinstance(call.response, dict) and isinstance(call.response.get("error"), dict):
                call.error = call.error or _message_of(call.response, reply.status)
        return response

    @staticmethod
    def _account(call: Call, reply: Reply, usage: Usage | None) -> None:
        call.usage = usage
        price = reply.deployment.price if reply.deployment else None
        if usage is not None and price is not None:
            call.cost_usd = price.cost(usage)
