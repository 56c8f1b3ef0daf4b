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


def _openai_event(data: dict[str, Any], out: Outcome) -> bool:
    """Whether an OpenAI chat chunk carries output; usage and in-stream errors are noted in `out`."""
    if data.get("error"):
        out.error, out.detail = "stream", str(data["error"])[:200]
    usage = data.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        out.output_tokens = int(usage["completion_tokens"])
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or delta.get("tool_calls"):
            return True
    return False


def _anthropic_event(data: dict[str, Any], out: Outcome) -> bool:
    kind = data.get("type")
    if kind == "content_block_delta":
        return True
    if kind == "message_delta" and (data.get("usage") or {}).get("output_tokens") is not None:
        out.output_tokens = int(data["usage"]["output_tokens"])
    elif kind == "error":
        out.error, out.detail = "stream", str(data.get("error"))[:200]
    return False


async def _read_stream(response: aiohttp.ClientResponse, protocol: str, out: Outcome) -> None:
    on_event = _anthropic_event if protocol.startswith("anthropic") else _openai_event
    finished = False
    counted = 0
    last: float | None = None
    async for line in response.content:
        if not line.startswith(b"data:"):
            continue
        now = time.perf_counter()
        out.events += 1
        payload = line[5:].strip()
        if payload == b"[DONE]":
            finished = True
            continue
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            out.error, out.detail = "invalid", "an event that is not JSON"
            return
        if not isinstance(data, dict):
            continue
        if on_event(data, out):
            counted += 1
            if last is None:
                out.ttft = now - out.sent
            else:
                out.gaps.append(now - last)
            last = now
        if out.error:
            return
        if data.get("type") == "message_stop":
            finished = True
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
