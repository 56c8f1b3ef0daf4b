"""Anthropic clients (Claude Code) on an OpenAI-only upstream (vLLM), translated in-house.

This is Mode B's main path, so it is built to cost about what pass-through does: a request is translated once
(plain dict work on the parsed body), and the answer's stream is turned into Anthropic events by a small state
machine that parses each upstream event once and writes each Anthropic event from prepared byte templates —
no SDK objects, no LiteLLM. LiteLLM still serves every other pairing (OpenAI clients to Anthropic, other
providers), see `translate.py`.

What is translated, request side: `system` (string or text blocks; `cache_control` dropped), text, image
(base64 or URL) and document (text) blocks, `tool_use` / `tool_result` (a result's images follow as a user
message), prior `thinking` as `reasoning_content`, `tools` (`input_schema` → `parameters`), `tool_choice`
(auto/any/tool/none, `disable_parallel_tool_use`), `max_tokens`, `stop_sequences`, `temperature`, `top_p`,
`top_k` (vLLM only), `thinking.budget_tokens` → `reasoning_effort`. Answer side: `reasoning_content` →
`thinking` blocks, text, tool calls → `tool_use` blocks (streamed as `input_json_delta`), `finish_reason` →
`stop_reason` (a vLLM `stop_reason` naming one of the stop sequences → `stop_sequence`), usage (cached prompt
tokens → `cache_read_input_tokens`), and an upstream error event → an Anthropic `error` event.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from evalkit.gateway.protocols import event_data

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# ------------------------------------------------------------------------------------------------ request


def request(body: dict[str, Any], model: str, *, vllm: bool, stream_usage: bool) -> dict[str, Any]:
    """The OpenAI chat request for an Anthropic Messages body (already checked by `bodies.malformed`)."""
    out: dict[str, Any] = {"model": model, "messages": _messages(body.get("system"), body["messages"])}
    if "max_tokens" in body:
        out["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if vllm and body.get("top_k") is not None:
        out["top_k"] = body["top_k"]
    tools = [_tool(t) for t in body.get("tools") or () if isinstance(t, dict) and "name" in t]
    if tools:
        out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "auto":
            out["tool_choice"] = "auto"
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "none":
            out["tool_choice"] = "none"
        elif kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("disable_parallel_tool_use") and tools:
            out["parallel_tool_calls"] = False
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens") or 0
        out["reasoning_effort"] = "low" if budget < 4096 else "medium" if budget < 16384 else "high"
    if body.get("stream"):
        out["stream"] = True
        if stream_usage:
            out["stream_options"] = {"include_usage": True}
    return out


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _text(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    return "\n".join(b.get("text") or "" for b in blocks or () if isinstance(b, dict) and b.get("type") == "text")


def _image_url(source: Any) -> str | None:
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    if source.get("type") == "url":
        return source.get("url")
    return None


def _messages(system: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _text(system)})
    for message in messages:
        role, content = message["role"], message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "assistant":
            out.append(_assistant(content or []))
        else:
            _user(content or [], out)
    return out


def _assistant(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    text, reasoning, calls = [], [], []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {"id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": arguments}}
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return message


def _user(blocks: list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
    """Tool results become `tool` messages (first, as OpenAI wants them right after the calls); the rest one
    user message: a string when it is only text (some servers' templates take nothing else), else parts."""
    parts: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "tool_result":
            content = block.get("content")
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": _text(content)})
            if isinstance(content, list):
                parts += [_image_part(b) for b in content if isinstance(b, dict) and b.get("type") == "image"]
        elif kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image":
            parts.append(_image_part(block))
        elif kind == "document" and isinstance(source := block.get("source"), dict) and source.get("type") == "text":
            parts.append({"type": "text", "text": source.get("data") or ""})
    parts = [p for p in parts if p]
    if not parts:
        return
    if all(p["type"] == "text" for p in parts):
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
    else:
        out.append({"role": "user", "content": parts})


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    url = _image_url(block.get("source"))
    return {"type": "image_url", "image_url": {"url": url}} if url else {}


# ------------------------------------------------------------------------------------------------ answers


def _stop(choice: dict[str, Any], stop_sequences: list[str]) -> tuple[str, str | None]:
    matched = choice.get("stop_reason")  # vLLM: the stop string that ended the generation
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"), None


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": prompt - cached,
        "output_tokens": usage.get("completion_tokens") or 0,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _arguments(text: Any) -> Any:
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def message(completion: dict[str, Any], model: str, stop_sequences: list[str]) -> dict[str, Any]:
    """An Anthropic message for a whole OpenAI chat completion."""
    choice = (completion.get("choices") or [{}])[0]
    answer = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if reasoning := answer.get("reasoning_content") or answer.get("reasoning"):
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if answer.get("content"):
        content.append({"type": "text", "text": answer["content"]})
    for call in answer.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {"type": "tool_use", "id": call.get("id") or _tool_id(), "name": function.get("name") or "",
             "input": _arguments(function.get("arguments"))}
        )  # fmt: skip
    stop_reason, stop_sequence = _stop(choice, stop_sequences)
    return {
        "id": "msg_" + str(completion.get("id") or secrets.token_hex(12)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(completion.get("usage")),
    }


def _tool_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_DELTA_KINDS = {
    "text": (b',"delta":{"type":"text_delta","text":', b"}}\n\n"),
    "thinking": (b',"delta":{"type":"thinking_delta","thinking":', b"}}\n\n"),
    "tool_use": (b',"delta":{"type":"input_json_delta","partial_json":', b"}}\n\n"),
}


class StreamTranslator:
    """OpenAI chat-completion SSE bytes in, Anthropic Messages SSE bytes out, as they arrive.

    Upstream events are cut on whole-event boundaries (CRLF normalised), each parsed once; Anthropic events are
    written from byte templates. `finished` once `message_stop` (or an `error` event) went out.
    """

    def __init__(self, model: str, stop_sequences: list[str]) -> None:
        self._model, self._stops = model, stop_sequences
        self._tail = b""
        self._started = False
        self._index = -1
        self._kind: str | None = None
        """The open content block's kind, None when none is open."""
        self._tools: dict[int, int] = {}
        """Upstream tool-call index → our content block index."""
        self._stop: tuple[str, str | None] | None = None
        self._usage: Any = None
        self.finished = False

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk if self._tail else chunk
        if b"\r" in data:
            held = b""
            if data.endswith(b"\r"):
                data, held = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + held
        end = data.rfind(b"\n\n")
        if end < 0:
            self._tail = data
            return b""
        self._tail = data[end + 2 :]
        out: list[bytes] = []
        for event in data[:end].split(b"\n\n"):
            self._on(event_data(event), out)
        return b"".join(out)

    def end(self) -> bytes:
        """At the end of the upstream's body: close the message if the upstream finished it without `[DONE]`."""
        out: list[bytes] = []
        if self._tail:
            self._on(event_data(self._tail.replace(b"\r", b"\n").strip()), out)
            self._tail = b""
        if not self.finished and self._stop is not None:
            self._finish(out)
        return b"".join(out)

    def _on(self, data: bytes, out: list[bytes]) -> None:
        if not data or self.finished:
            return
        if data == b"[DONE]":
            self._finish(out)
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if "error" in event:
            error = event["error"]
            text = error.get("message") if isinstance(error, dict) else str(error)
            payload = {"type": "error", "error": {"type": "api_error", "message": text or "upstream error"}}
            out.append(_event(b"error", orjson.dumps(payload)))
            self.finished = True
            return
        if not self._started:
            self._start(event, out)
        if event.get("usage"):
            self._usage = event["usage"]
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            if reasoning := delta.get("reasoning_content") or delta.get("reasoning"):
                self._delta("thinking", reasoning, out)
            if content := delta.get("content"):
                self._delta("text", content, out)
            for call in delta.get("tool_calls") or ():
                self._tool_call(call, out)
            if choice.get("finish_reason"):
                self._close_block(out)
                self._stop = _stop(choice, self._stops)

    def _start(self, event: dict[str, Any], out: list[bytes]) -> None:
        self._started = True
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_" + str(event.get("id") or secrets.token_hex(12)),
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        }
        out.append(_event(b"message_start", orjson.dumps(start)))

    def _open_block(self, kind: str, block: dict[str, Any], out: list[bytes]) -> None:
        self._close_block(out)
        self._index += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        out.append(_event(b"content_block_start", orjson.dumps(start)))

    def _close_block(self, out: list[bytes]) -> None:
        if self._kind is not None:
            out.append(_BLOCK_STOP + str(self._index).encode() + b"}\n\n")
            self._kind = None

    def _delta(self, kind: str, text: str, out: list[bytes]) -> None:
        if self._kind != kind:
            if kind == "text":
                self._open_block("text", {"type": "text", "text": ""}, out)
            elif kind == "thinking":
                self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
        head, tail = _DELTA_KINDS[kind]
        out.append(_TEXT_DELTA + str(self._index).encode() + head + orjson.dumps(text) + tail)

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self._tools:
            block = {"type": "tool_use", "id": call.get("id") or _tool_id(), "name": function.get("name") or "",
                     "input": {}}  # fmt: skip
            self._open_block("tool_use", block, out)
            self._tools[position] = self._index
        if (arguments := function.get("arguments")) and self._tools[position] == self._index and self._kind:
            head, tail = _DELTA_KINDS["tool_use"]
            out.append(_TEXT_DELTA + str(self._index).encode() + head + orjson.dumps(arguments) + tail)

    def _finish(self, out: list[bytes]) -> None:
        self._close_block(out)
        if not self._started:
            self._start({}, out)
        stop_reason, stop_sequence = self._stop or ("end_turn", None)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
            "usage": _usage(self._usage),
        }
        out.append(_event(b"message_delta", orjson.dumps(delta)))
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
        self.finished = True
