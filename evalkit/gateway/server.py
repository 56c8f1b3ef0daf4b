"""The HTTP front (in a gateway process): authenticate the trial key, validate, route, relay the answer, and
record the call.

It runs on aiohttp's low-level server (one dict lookup per request instead of a router and middlewares), with
handler cancellation on: an agent that hangs up also aborts its upstream request, which frees the vLLM slot.
The same handler serves the gateway's TCP port and every trial's Unix socket; on a socket (`bound`) only
that trial's key is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from types import ModuleType
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from evalkit.gateway.bodies import BodyError, RawFields, filtered, parse, refused_field, spliced, value_of
from evalkit.gateway.config import LLMApiConfig, Protocol
from evalkit.gateway.logfile import LineWriter, LogFile
from evalkit.gateway.passthrough import STREAM_USAGE, forward
from evalkit.gateway.protocols import (
    Usage,
    UsageWithholder,
    adds_stream_usage,
    error_body,
    error_event,
    stream_finished,
    stream_summary,
    usage_of,
)
from evalkit.gateway.records import Call, json_fragment, raw_text, redact
from evalkit.gateway.routing import Deployment, DeploymentPool, NoSlot, Reply, UpstreamUnavailable
from evalkit.gateway.translate import translate
from evalkit.gateway.trials import Trial

_JSON = {"Content-Type": "application/json"}
_RETRY_AFTER_STATUSES = (429, 502, 503, 504)
"""Statuses of the gateway's own answers that carry `Retry-After` (upstream answers keep their own headers)."""


class BodyTooLarge(Exception):
    pass


class ByteBudget:
    """Request bytes held by calls in flight, against a limit; a call waits (bounded) for room."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._freed = asyncio.Event()

    async def take(self, n: int, timeout: float) -> bool:
        """Reserve `n` bytes, waiting up to `timeout` s for others to give theirs back; False if there was no room."""
        if self.used + n <= self.limit or self.used == 0:  # one body alone always fits
            self.used += n
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.used + n > self.limit and self.used:
            self._freed.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._freed.wait()
            except TimeoutError:
                return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
        self._freed.set()


class IdleWatch:
    """Ends a stream silent for `timeout` s (by `abort`ing its upstream connection) for the cost of one store per
    read: its timer is re-armed only when it fires, for the time left, never at every read."""

    __slots__ = ("last", "expired", "_loop", "_timeout", "_abort", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, abort: Callable[[], None]) -> None:
        self.last = loop.time()
        self.expired = False
        self._loop, self._timeout, self._abort = loop, timeout, abort
        self._handle = loop.call_at(self.last + timeout, self._check)

    def _check(self) -> None:
        due = self.last + self._timeout
        if self._loop.time() < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self.expired = True
        self._abort()

    def cancel(self) -> None:
        self._handle.cancel()


class _Body:
    """One request's body while its call runs: the agent's bytes, their top-level fields, and (translated path
    only) the parsed object, dropped as soon as no further attempt can need it."""

    __slots__ = ("raw", "fields", "_parsed")

    def __init__(self, raw: bytes, fields: RawFields) -> None:
        self.raw, self.fields = raw, fields
        self._parsed: dict[str, Any] | None = None

    def parsed(self) -> dict[str, Any]:
        if self._parsed is None:
            self._parsed = orjson.loads(self.raw)
        return self._parsed

    def release(self) -> None:
        self._parsed = None


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


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


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
        writer: LineWriter,
        secrets: list[str],
        admin_key: str,
        litellm: Callable[[], Awaitable[ModuleType]],
    ) -> None:
        self._config, self._pool, self._session = config, pool, session
        self._trials, self._closed_keys, self._writer, self._secrets = trials, closed_keys, writer, secrets
        self._admin_key = admin_key
        self._litellm = litellm
        self._bytes = ByteBudget(config.max_bytes_in_flight)
        self.rejected: LogFile | None = None
        """`rejected.jsonl`, set once the gateway opened it."""
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

    async def handle(self, request: web.BaseRequest, bound: Trial | None = None) -> web.StreamResponse:
        """Serve a request; `bound` is the trial whose Unix socket it arrived on (None: the TCP port)."""
        route = self._routes.get((request.method, request.path))
        if route is None:
            protocol: Protocol = "anthropic_messages" if "x-api-key" in request.headers else "openai_chat"
            return web.Response(
                status=404, body=error_body(protocol, 404, f"no route {request.method} {request.path}"), headers=_JSON
            )
        return await route(request, bound)

    # ------------------------------------------------------------------------------------ small endpoints

    async def _root(self, request: web.BaseRequest, bound: Trial | None) -> web.Response:
        return web.Response(text="evalkit gateway\n")

    async def _health(self, request: web.BaseRequest, bound: Trial | None) -> web.Response:
        """A bare status without a key (no addresses, names or counts: no map for a bypass); per-deployment
        health with a trial's key; names and counts with the gateway's admin key."""
        deployments = self._pool.deployments
        status: dict[str, object] = {"status": "ok" if any(d.healthy() for d in deployments) else "degraded"}
        key = key_of(request.headers)
        admin = bound is None and key is not None and _same(key, self._admin_key)
        if admin or self._trial_of(request, bound) is not None:
            status["model"] = self._config.model
            status["deployments"] = [d.status(detailed=admin) for d in deployments]
        if admin:
            status["open_trials"] = len(self._trials)
        return web.Response(body=orjson.dumps(status), headers=_JSON)

    async def _models(self, request: web.BaseRequest, bound: Trial | None) -> web.Response:
        if self._trial_of(request, bound) is None:
            return await self._reject(request, "openai_chat", bound)
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

    def _trial_of(self, request: web.BaseRequest, bound: Trial | None) -> Trial | None:
        key = key_of(request.headers)
        if key is None:
            return None
        if bound is None:
            return self._trials.get(key)
        return bound if not bound.closed and _same(key, bound.api_key) else None

    async def _reject(self, request: web.BaseRequest, protocol: Protocol, bound: Trial | None) -> web.Response:
        """401, and a line in the job's `rejected.jsonl` (no trial owns the request, so no trajectory does)."""
        key = key_of(request.headers)
        if not key:
            reason = "missing key"
        elif key in self._closed_keys or (bound is not None and bound.closed and _same(key, bound.api_key)):
            reason = "finished trial's key"
        elif bound is not None:
            reason = "not this route's key"
        else:
            reason = "unknown key"
        if self.rejected is not None:
            await self._writer.wait_for_room()
            line = {"v": 1, "time": time.time(), "method": request.method, "endpoint": request.path, "status": 401}
            self._writer.submit(self.rejected, line | {"reason": reason, "route": bound and bound.trial_id})
        return web.Response(
            status=401, body=error_body(protocol, 401, f"{reason}: use the key evalkit gave this trial"), headers=_JSON
        )

    # --------------------------------------------------------------------------------------- model calls

    async def _model_call(
        self, request: web.BaseRequest, bound: Trial | None, protocol: Protocol
    ) -> web.StreamResponse:
        trial = self._trial_of(request, bound)
        if trial is None:
            return await self._reject(request, protocol, bound)
        call = Call(trial.trial_id, trial.next_seq(), request.path, protocol)
        task = asyncio.current_task()
        assert task is not None
        trial.calls.add(task)  # before any await: closing the trial cancels and waits for this call
        try:
            await self._writer.wait_for_room()  # the disk lags: new calls wait; calls in flight get their line
            return await self._serve(request, trial, call, protocol)
        except asyncio.CancelledError:
            if not call.delivered:
                ended = "gateway stopped" if self.stopping else "trial closed" if trial.closed else None
                call.error = call.error or ended or "client disconnected"
            raise
        except Exception as exc:  # a bug, before any byte went out: still an error the agent's SDK can read
            message = redact(f"gateway error: {type(exc).__name__}: {exc}", self._secrets)
            return self._error(call, protocol, 500, message)
        finally:
            trial.calls.discard(task)
            call.end = time.time()
            trial.record(call)

    async def _serve(
        self, request: web.BaseRequest, trial: Trial, call: Call, protocol: Protocol
    ) -> web.StreamResponse:
        cfg = self._config
        declared = request.content_length
        if declared is not None and declared > cfg.max_body_bytes:
            return self._error(call, protocol, 413, f"request body of {declared} bytes exceeds the limit of {cfg.max_body_bytes}")
        held = declared or cfg.max_body_bytes  # a body of unknown length may be as large as the limit
        if trial.bytes_in_flight and trial.bytes_in_flight + held > cfg.max_trial_bytes_in_flight:
            message = f"this trial already has {trial.bytes_in_flight} bytes of requests in flight (limit {cfg.max_trial_bytes_in_flight})"
            return self._error(call, protocol, 429, message, retry_after=1)
        if not await self._bytes.take(held, cfg.slot_wait_sec):
            return self._error(call, protocol, 503, "the gateway is holding too many request bytes; retry", retry_after=1)
        trial.bytes_in_flight += held
        try:
            try:
                raw = await read_body(request, cfg.max_body_bytes)
            except BodyTooLarge as exc:
                return self._error(call, protocol, 413, str(exc))
            self._bytes.give(held - len(raw))  # hold what the body really is
            trial.bytes_in_flight -= held - len(raw)
            held = len(raw)
            return await self._forward(request, trial, call, protocol, raw)
        finally:
            self._bytes.give(held)
            trial.bytes_in_flight -= held

    async def _forward(
        self, request: web.BaseRequest, trial: Trial, call: Call, protocol: Protocol, raw: bytes
    ) -> web.StreamResponse:
        try:
            fields = parse(raw)
        except BodyError as exc:
            call.request_raw = raw_text(raw)
            return self._error(call, protocol, 400, str(exc))
        call.request_fields = fields
        stream = value_of(fields["stream"]) if "stream" in fields else False
        if not isinstance(stream, bool):
            return self._error(call, protocol, 400, "`stream` must be true or false")
        call.streamed = stream
        model = value_of(fields["model"]) if "model" in fields else None
        if not model:
            return self._error(call, protocol, 400, "missing `model`")
        if model != self._config.model:
            return self._error(call, protocol, 404, f"model {model!r} is not served here; use {self._config.model!r}")
        if refused := refused_field(protocol, fields):
            return self._error(call, protocol, 400, refused)
        body = _Body(raw, fields)
        attempt = partial(self._attempt, call, protocol, body, stream, request.headers)
        try:
            reply = await self._pool.call(trial.api_key, attempt, call.attempts)
        except UpstreamUnavailable as exc:  # the details (addresses) go to the trajectory, not to the agent
            status, message = (504, "upstream timed out") if exc.timed_out else (502, "upstream unavailable")
            detail = message if exc.timed_out else f"{message}: {exc}"
            return self._error(call, protocol, status, message, exc.retry_after, detail=detail)
        except NoSlot as exc:
            return self._error(call, protocol, 503, f"every deployment is at its in-flight cap: {exc}", 1.0)
        finally:
            body.release()
        assert reply.deployment is not None
        call.route, call.deployment = reply.route, reply.deployment.label
        try:
            if reply.read is None:
                return self._complete(call, reply)
            return await self._relay(request, call, reply, protocol)
        finally:
            if reply.close is not None:
                # Releasing the upstream side must not fail the call: its answer may already be out.
                with contextlib.suppress(Exception):
                    await reply.close()
            self._pool.release(reply.deployment)

    async def _attempt(
        self,
        call: Call,
        protocol: Protocol,
        body: _Body,
        stream: bool,
        headers: Mapping[str, str],
        deployment: Deployment,
    ) -> Reply:
        cfg, allowed = self._config, deployment.fields[protocol]
        if protocol in deployment.native:
            withhold = adds_stream_usage(protocol, body.fields, stream, deployment.config.stream_usage)
            payload, dropped = spliced(
                body.raw, body.fields, allowed, deployment.upstream_model_json, STREAM_USAGE if withhold else b""
            )
            call.dropped = dropped or None
            reply = await forward(self._session, deployment, protocol, payload, stream, headers)
            reply.withhold_usage = withhold and reply.read is not None
            return reply
        payload_obj, dropped = filtered(body.parsed(), allowed)
        call.dropped = dropped or None
        timeouts = (cfg.timeout_sec, cfg.idle_timeout_sec)
        return await translate(
            self._session, deployment, protocol, payload_obj, stream, cfg.model, timeouts, self._secrets, self._litellm
        )

    def _error(
        self,
        call: Call,
        protocol: Protocol,
        status: int,
        message: str,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> web.Response:
        """An error the gateway itself answers (bad input, no upstream), in the client's protocol; `detail`
        replaces `message` in the trajectory."""
        message = redact(message, self._secrets)
        body = error_body(protocol, status, message)
        call.status, call.response = status, json_fragment(body)
        call.error = redact(detail, self._secrets) if detail else message
        call.first_byte = time.time()
        headers = _JSON
        if status in _RETRY_AFTER_STATUSES:
            headers = {**_JSON, "Retry-After": str(math.ceil(retry_after or 1))}
        return web.Response(status=status, body=body, headers=headers)

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
        headers = {"Content-Type": reply.content_type, **reply.headers}
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    async def _relay(
        self, request: web.BaseRequest, call: Call, reply: Reply, protocol: Protocol
    ) -> web.StreamResponse:
        """Forward a stream chunk by chunk as it arrives; keep the bytes for the record (reassembled when the
        line is written, in the writer thread). Between reads the idle limit applies."""
        assert reply.read is not None
        response = web.StreamResponse(
            status=reply.status,
            headers={"Content-Type": reply.content_type, "Cache-Control": "no-cache", **reply.headers},
        )
        call.status = reply.status
        await response.prepare(request)
        sent: list[bytes] = []
        call.sent = sent
        withholder = UsageWithholder() if reply.withhold_usage else None
        append, read, write = sent.append, reply.read, response.write
        loop = asyncio.get_running_loop()
        now = loop.time
        watch = IdleWatch(loop, self._config.idle_timeout_sec, reply.abort) if reply.abort is not None else None
        try:
            async with asyncio.timeout(self._config.max_stream_sec):
                first = reply.body
                while chunk := first or await read():
                    first = b""
                    if watch is not None:
                        watch.last = now()
                    if call.first_byte is None:
                        call.first_byte = time.time()
                    if withholder is not None and not (chunk := withholder.feed(chunk)):
                        continue
                    append(chunk)
                    await write(chunk)
                if withholder is not None and (chunk := withholder.flush()):
                    append(chunk)
                    await write(chunk)
            await response.write_eof()
        except Exception as exc:  # headers are out: whatever broke, end the stream cleanly and say why
            if request.transport is None or request.transport.is_closing():
                call.error = "client disconnected"
            else:
                call.error = (
                    "upstream timed out mid-stream"
                    if isinstance(exc, TimeoutError) or (watch is not None and watch.expired)
                    else redact(f"upstream broke off the stream: {type(exc).__name__}: {exc}", self._secrets)
                )
                event = error_event(protocol, call.error)
                append(event)
                with contextlib.suppress(OSError, aiohttp.ClientError):  # the agent may be gone by now too
                    await response.write(event)
                    await response.write_eof()
        finally:
            if watch is not None:
                watch.cancel()
            data = b"".join(sent)
            if stream_finished(protocol, data):  # what broke after the end broke nothing
                call.delivered, call.error = True, None
            withheld = b"".join(withholder.withheld) if withholder is not None else b""
            usage, error = stream_summary(protocol, data + withheld if withheld else data)
            self._account(call, reply, usage)
            if error is not None:
                call.error = call.error or error
        return response

    @staticmethod
    def _account(call: Call, reply: Reply, usage: Usage | None) -> None:
        call.usage = usage
        price = reply.deployment.price if reply.deployment else None
        if usage is not None and price is not None:
            call.cost_usd = price.cost(usage)
