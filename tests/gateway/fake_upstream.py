"""A scripted model server that speaks the real wire protocols over a real socket.

It serves OpenAI `/v1/chat/completions` (JSON and SSE with `data: [DONE]`, tool calls, usage, `stream_options`),
Anthropic `/v1/messages` (JSON and SSE events) and OpenAI `/v1/responses`, so the gateway's pass-through and
translated paths meet the same bytes a vLLM or hosted API would send. Replies come from `script` (first in,
first out), then `default`; failures (429 with Retry-After, 500, a hang, a disconnect) are scripted the same way,
and so are wire details real servers show: extra headers, CRLF line ends, events split across TCP segments.
Used by tests/gateway and by benchmarks/perf/gateway.py (imported by path).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Reply:
    """A successful answer: text, then tool calls; streamed as `chunks` text pieces."""

    text: str = "Hello from the fake upstream."
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    """Each `{"name": ..., "arguments": {...}}`."""
    chunks: int = 3
    chunk_delay: float = 0.0
    """Seconds between streamed events (0: written back to back)."""
    delay: float = 0.0
    """Seconds before answering at all (a slow upstream)."""
    split_events: bool = False
    """Write each streamed event in two halves, a moment apart, so they arrive in separate reads."""
    crlf: bool = False
    """End streamed lines with CRLF, as SSE allows."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (request ids, rate limits)."""
    end_delay: float = 0.0
    """Seconds between the last event and the end of the response (vLLM ends its chunked body a moment later)."""
    stall_after: int | None = None
    """Stop sending after this many streamed events, keeping the connection open (a stuck replica)."""
    reasoning: str = ""
    """Streamed first as `reasoning_content` (OpenAI chat; vLLM's reasoning parsers)."""
    cached_tokens: int = 0
    """Prompt tokens reported as served from the prefix cache (OpenAI chat `prompt_tokens_details`)."""


@dataclass
class Fail:
    status: int = 500
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hang:
    """Accept the request and never answer (until the server stops)."""


@dataclass
class Disconnect:
    """Drop the connection: before any byte (`after_chunks=None`) or after that many streamed events."""

    after_chunks: int | None = None


Step = Reply | Fail | Hang | Disconnect


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]


def _tokens(value: Any) -> int:
    """A deterministic stand-in for a tokenizer: one token per 4 bytes of JSON."""
    return len(orjson.dumps(value)) // 4 + 1


def _pieces(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // max(1, n)))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


class FakeUpstream:
    """One replica. `name` appears in every answer's id so tests can tell replicas apart."""

    def __init__(
        self, name: str = "fake", *, host: str = "127.0.0.1", port: int = 0, keepalive_timeout: float = 75.0
    ) -> None:
        self.name = name
        self.host, self.port = host, port
        self.keepalive_timeout = keepalive_timeout
        """How long an idle client connection is kept open (uvicorn, hence vLLM: 5 s)."""
        self.peers: list[tuple[str, int]] = []
        """The client address of each request, in order: a new port is a new connection."""
        self.script: list[Step] = []
        self.default: Step | Callable[[dict[str, Any]], Step] = Reply()
        """What to do once `script` is empty; a function of the request body for load tests."""
        self.received: list[Received] = []
        self.record = True
        """Benchmarks turn this off so the list does not grow without bound."""
        self.in_progress = 0
        self.max_in_progress = 0
        self.aborted = 0
        """Requests whose client (the gateway) went away before the answer was complete."""
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The OpenAI-style base URL (with `/v1`)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FakeUpstream:
        app = web.Application(client_max_size=256 * 1024**2, middlewares=[self._track])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/responses", self._responses)
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.1, keepalive_timeout=self.keepalive_timeout
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close the listening socket and every open connection (a killed replica)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------ plumbing

    @web.middleware
    async def _track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.in_progress += 1
        self.max_in_progress = max(self.max_in_progress, self.in_progress)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            self.aborted += 1
            raise
        finally:
            self.in_progress -= 1

    async def _next(self, request: web.Request) -> tuple[dict[str, Any], Step]:
        body = orjson.loads(await request.read())
        if self.record:
            self.received.append(Received(request.path, body, dict(request.headers)))
            self.peers.append(request.transport.get_extra_info("peername")[:2])  # type: ignore[union-attr]
        step = self.script.pop(0) if self.script else self.default
        if callable(step):
            step = step(body)
        if isinstance(step, Hang):
            await asyncio.sleep(3600)
        if isinstance(step, Reply) and step.delay:
            await asyncio.sleep(step.delay)
        if isinstance(step, Disconnect) and step.after_chunks is None:
            request.transport.close()  # type: ignore[union-attr]
            raise ConnectionResetError("scripted disconnect")
        return body, step

    @staticmethod
    def _fail(step: Fail, payload: dict[str, Any]) -> web.Response:
        headers = {"Retry-After": str(step.retry_after)} if step.retry_after is not None else {}
        return web.json_response(
            payload, status=step.status, headers=headers | step.headers, dumps=lambda v: orjson.dumps(v).decode()
        )

    @staticmethod
    def _json(payload: dict[str, Any], step: Reply | Disconnect) -> web.Response:
        headers = step.headers if isinstance(step, Reply) else {}
        return web.Response(body=orjson.dumps(payload), content_type="application/json", headers=headers)

    async def _stream(self, request: web.Request, events: list[bytes], step: Reply | Disconnect) -> web.StreamResponse:
        reply = step if isinstance(step, Reply) else Reply()
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **reply.headers}
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        for i, event in enumerate(events):
            if reply.stall_after is not None and i == reply.stall_after:
                await asyncio.sleep(3600)
            if isinstance(step, Disconnect) and i == step.after_chunks:
                request.transport.close()  # type: ignore[union-attr]
                return resp
            if reply.crlf:
                event = event.replace(b"\n", b"\r\n")
            if reply.split_events:
                await resp.write(event[: len(event) // 2])
                await asyncio.sleep(0.02)  # its own TCP segment, so its own read at the gateway
                event = event[len(event) // 2 :]
            await resp.write(event)
            if reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
        if reply.end_delay:
            await asyncio.sleep(reply.end_delay)
        await resp.write_eof()
        return resp

    @staticmethod
    def _reply_of(step: Reply | Disconnect) -> Reply:
        return step if isinstance(step, Reply) else Reply(chunks=8)

    # ----------------------------------------------------------------------------- OpenAI chat completions

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, step = await self._next(request)
        if isinstance(step, Fail):
            return self._fail(
                step, {"error": {"message": f"injected {step.status}", "type": "fake", "code": step.status}}
            )
        reply = self._reply_of(step)
        n = next(self._ids)
        cid, model, created = f"chatcmpl-{self.name}-{n}", body.get("model", ""), 1700000000 + n
        prompt = _tokens(body.get("messages"))
        completion = _tokens(reply.text) + sum(_tokens(c) for c in reply.tool_calls)
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if reply.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
        calls = [
            {
                "id": f"call_{n}_{i}",
                "type": "function",
                "function": {"name": c["name"], "arguments": orjson.dumps(c["arguments"]).decode()},
            }
            for i, c in enumerate(reply.tool_calls)
        ]
        finish = "tool_calls" if calls else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if reply.reasoning:
                message["reasoning_content"] = reply.reasoning
            if calls:
                message["tool_calls"] = calls
            return self._json(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                    "usage": usage,
                },
                step,
            )

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return _sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
                }
            )

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"reasoning_content": piece}) for piece in _pieces(reply.reasoning, 2) if reply.reasoning]
        events += [chunk({"content": piece}) for piece in _pieces(reply.text, reply.chunks) if reply.text]
        for i, call in enumerate(calls):
            head = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            events.append(chunk({"tool_calls": [head]}))
            for piece in _pieces(call["function"]["arguments"], 2):
                events.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        events.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(
                _sse(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        events.append(b"data: [DONE]\n\n")
        return await self._stream(request, events, step)

    # ---------------------------------------------------------------------------------- Anthropic messages

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, step = await self._next(request)
        if isinstance(step, Fail):
            return self._fail(
                step, {"type": "error", "error": {"type": "api_error", "message": f"injected {step.status}"}}
            )
        reply = self._reply_of(step)
        n = next(self._ids)
        mid, model = f"msg_{self.name}_{n}", body.get("model", "")
        usage_in = _tokens(body.get("messages"))
        usage_out = _tokens(reply.text) + sum(_tokens(c) for c in reply.tool_calls)
        blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        blocks += [
            {"type": "tool_use", "id": f"toolu_{n}_{i}", "name": c["name"], "input": c["arguments"]}
            for i, c in enumerate(reply.tool_calls)
        ]
        stop = "tool_use" if reply.tool_calls else "end_turn"
        message = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": usage_in, "output_tokens": usage_out},
        }
        if not body.get("stream"):
            return self._json(message, step)
        events = [
            _sse(
                {
                    "type": "message_start",
                    "message": {
                        **message,
                        "content": [],
                        "stop_reason": None,
                        "usage": {"input_tokens": usage_in, "output_tokens": 1},
                    },
                },
                "message_start",
            )
        ]
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(
                    _sse(
                        {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}},
                        "content_block_start",
                    )
                )
                for piece in _pieces(block["text"], reply.chunks):
                    events.append(
                        _sse(
                            {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": piece}},
                            "content_block_delta",
                        )
                    )
            else:
                events.append(
                    _sse(
                        {"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}},
                        "content_block_start",
                    )
                )
                for piece in _pieces(orjson.dumps(block["input"]).decode(), 2):
                    events.append(
                        _sse(
                            {
                                "type": "content_block_delta",
                                "index": i,
                                "delta": {"type": "input_json_delta", "partial_json": piece},
                            },
                            "content_block_delta",
                        )
                    )
            events.append(_sse({"type": "content_block_stop", "index": i}, "content_block_stop"))
        events.append(
            _sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": usage_out},
                },
                "message_delta",
            )
        )
        events.append(_sse({"type": "message_stop"}, "message_stop"))
        return await self._stream(request, events, step)

    # --------------------------------------------------------------------------------- OpenAI Responses API

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body, step = await self._next(request)
        if isinstance(step, Fail):
            return self._fail(
                step, {"error": {"message": f"injected {step.status}", "type": "fake", "code": str(step.status)}}
            )
        reply = self._reply_of(step)
        n = next(self._ids)
        usage_in, usage_out = _tokens(body.get("input")), _tokens(reply.text)
        item = {
            "type": "message",
            "id": f"msg_{n}",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
        }
        response = {
            "id": f"resp_{self.name}_{n}",
            "object": "response",
            "created_at": 1700000000 + n,
            "status": "completed",
            "model": body.get("model", ""),
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": usage_in,
                "output_tokens": usage_out,
                "total_tokens": usage_in + usage_out,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
        if not body.get("stream"):
            return self._json(response, step)
        seq = itertools.count()
        events = [
            _sse(
                {
                    "type": "response.created",
                    "sequence_number": next(seq),
                    "response": {**response, "status": "in_progress", "output": []},
                },
                "response.created",
            )
        ]
        events += [
            _sse(
                {
                    "type": "response.output_text.delta",
                    "sequence_number": next(seq),
                    "item_id": item["id"],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": piece,
                },
                "response.output_text.delta",
            )
            for piece in _pieces(reply.text, reply.chunks)
        ]
        events.append(
            _sse(
                {"type": "response.completed", "sequence_number": next(seq), "response": response}, "response.completed"
            )
        )
        return await self._stream(request, events, step)
