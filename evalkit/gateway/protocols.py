"""What the gateway knows about each wire protocol: paths, error bodies, token usage, and stream reassembly.

Both paths (pass-through and LiteLLM-translated) hand the agent bytes in the client's protocol; this module
turns those bytes back into one JSON object per call for the trajectory, and reads usage from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from evalkit.gateway.config import Protocol

UPSTREAM_PATHS: dict[Protocol, str] = {
    "openai_chat": "/v1/chat/completions",
    "openai_responses": "/v1/responses",
    "anthropic_messages": "/v1/messages",
    "anthropic_count_tokens": "/v1/messages/count_tokens",
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    502: "api_error",
    504: "timeout_error",
}


FORWARDED_HEADERS = frozenset({"retry-after", "retry-after-ms", "x-should-retry", "request-id", "x-request-id"})
FORWARDED_HEADER_PREFIXES = ("anthropic-ratelimit-", "x-ratelimit-")
"""Upstream response headers agents act on (when to retry, rate limits) or quote (request ids); no others
are passed on: the rest describe the upstream (server, organisation, processing details)."""


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream response headers that reach the agent, with their original names."""
    return {
        name: value
        for name, value in headers.items()
        if (lower := name.lower()) in FORWARDED_HEADERS or lower.startswith(FORWARDED_HEADER_PREFIXES)
    }


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    """All prompt tokens, cache reads included (Anthropic reports those apart; they are added here)."""
    output_tokens: int = 0
    cache_read_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
        }


def is_anthropic(protocol: Protocol) -> bool:
    return protocol.startswith("anthropic")


def error_body(protocol: Protocol, status: int, message: str) -> bytes:
    """An error in the shape the client's SDK parses, so agents see a readable message, not a decode error."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if is_anthropic(protocol):
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}})


def error_event(protocol: Protocol, message: str) -> bytes:
    """A final SSE event for a stream that broke after its headers went out: both SDKs raise on it."""
    if is_anthropic(protocol):
        return (
            b"event: error\ndata: "
            + orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}})
            + b"\n\n"
        )
    return (
        b"data: "
        + orjson.dumps({"error": {"message": message, "type": "api_error", "param": None, "code": 502}})
        + b"\n\n"
    )


def usage_of(obj: Any) -> Usage | None:
    """Token usage of a complete response object of any of the protocols (None if it reports none)."""
    if not isinstance(obj, dict) or not isinstance(usage := obj.get("usage"), dict):
        return None
    if "prompt_tokens" in usage:  # OpenAI chat
        details = usage.get("prompt_tokens_details") or {}
        return Usage(
            usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0, details.get("cached_tokens") or 0
        )
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage or obj.get("type") == "message":
        cache_read = usage.get("cache_read_input_tokens") or 0
        uncached = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
        return Usage(uncached + cache_read, usage.get("output_tokens") or 0, cache_read)
    details = usage.get("input_tokens_details") or {}  # OpenAI Responses
    return Usage(usage.get("input_tokens") or 0, usage.get("output_tokens") or 0, details.get("cached_tokens") or 0)


# ------------------------------------------------------------------------------------------------ streams


def has_usage_only_event(chunk: bytes) -> bool:
    """A cheap test for a possible OpenAI usage-only stream event in a chunk (compact or spaced JSON)."""
    return b'"choices":[]' in chunk or b'"choices": []' in chunk


def adds_stream_usage(protocol: Protocol, body: dict[str, Any], stream: bool, enabled: bool) -> bool:
    """Whether the gateway asks for usage the client did not (a streamed OpenAI chat call without
    `stream_options`), so that it counts tokens; the extra event is then withheld from the client."""
    return enabled and stream and protocol == "openai_chat" and "stream_options" not in body


def split_usage_events(chunk: bytes) -> tuple[bytes, bytes]:
    """Split whole usage-only events out of complete events of an OpenAI chat stream: (to forward, withheld)."""
    kept, withheld = [], []
    for event in chunk.split(b"\n\n"):
        if event.startswith(b"data: {") and has_usage_only_event(event):
            try:
                data = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                data = None
            if isinstance(data, dict) and data.get("choices") == [] and data.get("usage"):
                withheld.append(event + b"\n\n")
                continue
        kept.append(event)
    return b"\n\n".join(kept), b"".join(withheld)


class UsageWithholder:
    """Holds back the usage-only events the gateway asked for and the agent did not, however reads split them.

    Only whole events are forwarded: the bytes after the last event boundary of a read wait for the next one
    (an agent cannot use half an event anyway). CRLF and CR line ends are normalised to LF first, so the
    boundaries are found in every stream SSE allows. Only used when the gateway itself asked for usage.
    """

    def __init__(self) -> None:
        self._tail = b""
        self.withheld: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to forward now (possibly none)."""
        data = self._tail + chunk if self._tail else chunk
        held = b""
        if b"\r" in data:
            if data.endswith(b"\r"):  # maybe half of a CRLF: decided with the next read
                data, held = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n\n") + 2
        if end == 1:  # no boundary yet
            self._tail = data + held
            return b""
        self._tail = data[end:] + held
        return self._without_usage(data[:end])

    def flush(self) -> bytes:
        """What is left at the end of the stream."""
        rest, self._tail = self._tail.replace(b"\r", b"\n"), b""
        return self._without_usage(rest)

    def _without_usage(self, data: bytes) -> bytes:
        if data and has_usage_only_event(data):
            data, hidden = split_usage_events(data)
            if hidden:
                self.withheld.append(hidden)
        return data


_RESPONSES_ENDS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')


def stream_finished(protocol: Protocol, sent: bytes) -> bool:
    """Whether the agent got its protocol's end of stream (`[DONE]`, `message_stop`, a final Responses event):
    a hang-up after it, which SDKs do at once, ends a delivered call, not a broken one."""
    if protocol == "openai_chat":
        return b"[DONE]" in sent[-64:]
    if protocol == "openai_responses":
        last = sent.rfind(b"\n\n", 0, len(sent.rstrip()))  # the last event starts after this
        return any(end in sent[last : last + 256] for end in _RESPONSES_ENDS)
    return b"message_stop" in sent[-128:]


def sse_data(stream: bytes) -> list[Any]:
    """The JSON payloads of an SSE byte stream, in order (`[DONE]`, comments and broken events skipped)."""
    payloads = []
    if b"\r" in stream:
        stream = stream.replace(b"\r\n", b"\n")
    for event in stream.split(b"\n\n"):
        data = event_data(event)
        if data and data != b"[DONE]":
            try:
                payloads.append(orjson.loads(data))
            except orjson.JSONDecodeError:
                continue
    return payloads


def event_data(event: bytes) -> bytes:
    """The `data:` of one SSE event (its lines joined), b"" when it has none."""
    start = event.find(b"data: ")
    if start != -1 and (start == 0 or event[start - 1] == 10) and event.find(b"\n", start) == -1:
        return event[start + 6 :]  # the usual shape: one data line, after an optional `event:` line
    return b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))


def stream_summary(protocol: Protocol, stream: bytes) -> tuple[Usage | None, str | None]:
    """Token usage and the upstream's error message (if it sent an error event) of a relayed stream, read from
    only the events that carry them: cheap enough for the event loop, where usage must be counted before the
    trajectory line is written; the full reassembly is left to the writer thread."""
    usage_events, error = [], None
    if b"\r" in stream:
        stream = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for event in stream.split(b"\n\n") if b'"usage"' in stream or b'"error"' in stream else ():
        if b'"usage"' not in event and b'"error"' not in event:
            continue
        data = event_data(event)
        try:
            payload = orjson.loads(data) if data and data != b"[DONE]" else None
        except orjson.JSONDecodeError:
            continue
        if not isinstance(payload, dict):
            continue
        if isinstance(payload.get("error"), dict | str):
            detail = payload["error"]
            error = detail.get("message") if isinstance(detail, dict) else detail
            error = error if isinstance(error, str) and error else "upstream error"
        else:
            usage_events.append(payload)
    if not usage_events:
        return None, error
    try:
        if protocol == "openai_chat":
            whole = _chat_completion(usage_events)
        elif protocol == "openai_responses":
            whole = _response(usage_events)
        else:
            whole = _message(usage_events)
    except (LookupError, TypeError, AttributeError):
        whole = None
    return usage_of(whole), error


def reassemble(protocol: Protocol, stream: bytes) -> Any:
    """One response object equal to what the streamed events add up to, as a non-streamed call returns.

    None when the events do not add up (an upstream off the protocol): the caller keeps the raw text instead.
    """
    events = sse_data(stream)
    try:
        if protocol == "openai_chat":
            return _chat_completion(events)
        if protocol == "openai_responses":
            return _response(events)
        return _message(events)
    except (LookupError, TypeError, AttributeError):
        return None


def _chat_completion(events: list[Any]) -> dict[str, Any] | None:
    result: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    for event in events:
        if not isinstance(event, dict):
            continue
        if "error" in event:
            return event
        if result is None:
            result = {k: event.get(k) for k in ("id", "created", "model", "system_fingerprint")} | {
                "object": "chat.completion"
            }
        if event.get("usage"):
            result["usage"] = event["usage"]
        for delta_choice in event.get("choices") or ():
            index = delta_choice.get("index", 0)
            choice = choices.setdefault(
                index, {"index": index, "message": {"role": "assistant", "content": None}, "finish_reason": None}
            )
            message, delta = choice["message"], delta_choice.get("delta") or {}
            for key, value in delta.items():
                if key == "tool_calls":
                    _merge_tool_calls(message.setdefault("tool_calls", []), value or [])
                elif isinstance(value, str) and key != "role":
                    message[key] = (message.get(key) or "") + value
                elif value is not None:
                    message[key] = value
            if delta_choice.get("finish_reason"):
                choice["finish_reason"] = delta_choice["finish_reason"]
    if result is not None:
        result["choices"] = [choices[i] for i in sorted(choices)]
    return result


def _merge_tool_calls(calls: list[dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        index = delta.get("index", len(calls))
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call, function = calls[index], delta.get("function") or {}
        call["id"] = delta.get("id") or call["id"]
        call["type"] = delta.get("type") or call["type"]
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""


def _message(events: list[Any]) -> dict[str, Any] | None:
    message: dict[str, Any] | None = None
    partial_json: dict[int, str] = {}
    for event in events:
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "error":
            return event
        if kind == "message_start":
            message = dict(event["message"], content=list(event["message"].get("content") or []))
        elif message is None:
            continue
        elif kind == "content_block_start":
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta.get("type") == "input_json_delta":
                partial_json[event["index"]] = partial_json.get(event["index"], "") + delta.get("partial_json", "")
            else:
                for key in ("text", "thinking", "signature"):
                    if key in delta:
                        block[key] = (block.get(key) or "") + delta[key]
        elif kind == "content_block_stop" and event["index"] in partial_json:
            text = partial_json.pop(event["index"])
            try:
                message["content"][event["index"]]["input"] = orjson.loads(text) if text else {}
            except orjson.JSONDecodeError:
                message["content"][event["index"]]["input"] = text
        elif kind == "message_delta":
            message.update(event.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(event.get("usage") or {})}
    return message


def _response(events: list[Any]) -> dict[str, Any] | None:
    last = None
    for event in events:
        if isinstance(event, dict) and isinstance(event.get("response"), dict):
            last = event["response"]
        elif isinstance(event, dict) and event.get("type") == "error":
            return event
    return last
