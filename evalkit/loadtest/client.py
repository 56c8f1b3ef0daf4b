"""One request and what the client saw of it: when the first output arrived, the gaps between outputs, the end.

Times are the client's own (`time.perf_counter`), taken as each server-sent event is read. An *output event*
is one that carries generated text, reasoning or tool-call arguments; TTFT is the time to the first of them,
inter-token latency the gaps between them. Output tokens are the server's count (`usage`) when it gives one,
else the number of output events.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

ANTHROPIC_VERSION = "2023-06-01"


@dataclass(slots=True)
class Outcome:
    """One request's measurements; `error` is None for a complete answer, else its kind."""

    replica: int | None
    """Index of the replica it was sent to (None through a gateway: read back from its trajectories)."""
    sent: float
    trial: int | None = None
    """The replayed trial instance it belongs to (replay only)."""
    end: float = 0.0
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    output_tokens: int = 0
    events: int = 0
    """Server-sent events read (a non-streamed answer counts none)."""
    status: int | None = None
    error: str | None = None
    """`connect`, `timeout`, `http_<status>`, `redirect` (not followed), `stream` (broken, truncated or an
    error event mid-stream), `invalid` (an answer that is not the protocol's JSON)."""
    detail: str = ""


def headers_for(protocol: str, api_key: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if protocol.startswith("anthropic"):
        headers["anthropic-version"] = ANTHROPIC_VERSION
        if api_key:
            headers["x-api-key"] = api_key
    elif api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


_OPENAI_OUTPUT = (b'"content":"', b'"reasoning_content":"', b'"reasoning":"')
_NEEDS_PARSE = (b'"usage"', b'"error"')


def _openai_output(payload: bytes) -> bool:
    """Whether an OpenAI chat chunk carries output, by a byte scan (a load generator must stay cheap): a
    non-empty text, reasoning or any tool-call delta."""
    if b'"tool_calls"' in payload:
        return True
    for key in _OPENAI_OUTPUT:
        at = payload.find(key)
        if at >= 0 and payload[at + len(key) : at + len(key) + 1] != b'"':
            return True
    return False


def _openai_event(payload: bytes, out: Outcome) -> bool:
    if any(key in payload for key in _NEEDS_PARSE):
        data = orjson.loads(payload)
        if isinstance(data, dict):
            if data.get("error"):
                out.error, out.detail = "stream", str(data["error"])[:200]
            usage = data.get("usage")
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                out.output_tokens = int(usage["completion_tokens"])
    return _openai_output(payload)


def _anthropic_event(payload: bytes, out: Outcome) -> bool:
    if b'"content_block_delta"' in payload:
        return True
    if b'"message_delta"' in payload or b'"error"' in payload:
        data = orjson.loads(payload)
        if isinstance(data, dict) and data.get("type") == "error":
            out.error, out.detail = "stream", str(data.get("error"))[:200]
        elif isinstance(data, dict) and (data.get("usage") or {}).get("output_tokens") is not None:
            out.output_tokens = int(data["usage"]["output_tokens"])
    return False


async def _read_stream(response: aiohttp.ClientResponse, protocol: str, out: Outcome) -> None:
    """Events are split from whole network reads (one await per read, not per line); each read's events get
    the time it arrived."""
    on_event = _anthropic_event if protocol.startswith("anthropic") else _openai_event
    anthropic = protocol.startswith("anthropic")
    finished = False
    counted = 0
    last: float | None = None
    pending = b""
    async for chunk in response.content.iter_any():
        now = time.perf_counter()
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            out.events += 1
            payload = line[5:].strip()
            if (b'"message_stop"' in payload) if anthropic else payload == b"[DONE]":
                finished = True
                continue
            try:
                output = on_event(payload, out)
            except orjson.JSONDecodeError:
                out.error, out.detail = "invalid", "an event that is not JSON"
                return
            if out.error:
                return
            if output:
                counted += 1
                if last is None:
                    out.ttft = now - out.sent
                else:
                    out.gaps.append(now - last)
                last = now
    if not finished:
        out.error, out.detail = "stream", "the stream ended without its final event"
    elif not out.output_tokens:
        out.output_tokens = counted


def _read_whole(body: bytes, out: Outcome) -> None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        out.error, out.detail = "invalid", "an answer that is not JSON"
        return
    usage = (data.get("usage") or {}) if isinstance(data, dict) else {}
    out.output_tokens = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    out.ttft = time.perf_counter() - out.sent


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    protocol: str,
    stream: bool,
    api_key: str | None,
    timeout_sec: float,
    replica: int | None,
    trial: int | None = None,
) -> Outcome:
    """POST one request and measure it; never raises for what the server or the network did."""
    out = Outcome(replica=replica, trial=trial, sent=time.perf_counter())
    got_headers = False
    try:
        async with asyncio.timeout(timeout_sec):
            async with session.post(
                url, data=body, headers=headers_for(protocol, api_key), allow_redirects=False
            ) as response:
                got_headers = True
                out.status = response.status
                if 300 <= response.status < 400:
                    out.error, out.detail = "redirect", f"{response.status} to {response.headers.get('Location')!r}"
                elif response.status >= 400:
                    out.error = f"http_{response.status}"
                    out.detail = (await response.content.read(300)).decode("utf-8", "replace")
                elif stream and response.content_type == "text/event-stream":
                    await _read_stream(response, protocol, out)
                else:
                    _read_whole(await response.read(), out)
    except TimeoutError:
        out.error, out.detail = "timeout", f"no complete answer within {timeout_sec:g} s"
    except aiohttp.ClientError as exc:
        out.error = "stream" if got_headers else "connect"
        out.detail = f"{type(exc).__name__}: {exc}"[:200]
    out.end = time.perf_counter()
    return out
