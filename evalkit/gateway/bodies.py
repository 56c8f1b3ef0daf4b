"""Request bodies: which fields the gateway passes on (each protocol's documented ones), and their shape.

A request body is the agent's, so it is hostile input. On the translated path every field that reaches
LiteLLM is a keyword argument, and LiteLLM reads some of them as its own settings: `base_url` sends the call,
with the deployment's key, wherever the agent says; `mock_response` answers with invented text. So:

- a field of the client's protocol (its public API reference) is passed on;
- a field that names a destination, a key, a provider, headers, callbacks or a canned answer (`base_url`,
  `api_key`, `custom_llm_provider`, `extra_headers`, `mock_response`, `litellm_*`, `*callback*`, …) is
  refused with a 400 in the client's protocol that names it — an agent sending one is misconfigured or hostile;
- any other field is dropped, on every protocol and both paths, and named in the trajectory line (`dropped`).
  Dropping, not refusing, matches what vLLM does with fields it does not know, and keeps agents that add
  provider extras running.

vLLM's own sampling extras (`top_k`, `repetition_penalty`, `chat_template_kwargs`, …) are passed to
`hosted_vllm/` deployments only, and only those that shape sampling or output: the ones that name code or
hosts (`chat_template`, `logits_processors`, `kv_transfer_params`, `vllm_xargs`) or that jump other trials'
queue (`priority`) are dropped.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from evalkit.gateway.config import Protocol

OPENAI_CHAT = frozenset(
    {
        "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
        "presence_penalty", "prompt_cache_key", "prompt_cache_retention", "reasoning_effort", "response_format",
        "safety_identifier", "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
        "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity",
    }
)  # fmt: skip
"""POST /v1/chat/completions, as OpenAI documents it (`web_search_options` is left out: it has the provider fetch
from the internet for a sandboxed agent)."""

OPENAI_RESPONSES = frozenset(
    {
        "model", "input", "background", "conversation", "include", "instructions", "max_output_tokens",
        "max_tool_calls", "metadata", "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key",
        "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream",
        "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
    }
)  # fmt: skip
"""POST /v1/responses, as OpenAI documents it."""

ANTHROPIC_MESSAGES = frozenset(
    {
        "model", "messages", "max_tokens", "metadata", "service_tier", "stop_sequences", "stream", "system",
        "temperature", "thinking", "tool_choice", "tools", "top_k", "top_p",
        "context_management", "output_config", "output_format",  # beta fields Claude Code may send
    }
)  # fmt: skip
"""POST /v1/messages, as Anthropic documents it (`container` is left out: its ids are shared by every trial
behind one upstream key; `mcp_servers` is refused: it names hosts for Anthropic to call)."""

ANTHROPIC_COUNT_TOKENS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "context_management", "output_format"}
)
"""POST /v1/messages/count_tokens, as Anthropic documents it."""

VLLM_EXTRAS = frozenset(
    {
        "top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens", "stop_token_ids",
        "include_stop_str_in_output", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
        "truncate_prompt_tokens", "prompt_logprobs", "allowed_token_ids", "bad_words", "use_beam_search", "echo",
        "add_generation_prompt", "continue_final_message", "add_special_tokens", "chat_template_kwargs",
        "documents", "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
        "guided_whitespace_pattern", "guided_decoding_backend", "return_tokens_as_token_ids", "return_token_ids",
    }
)  # fmt: skip
"""vLLM's chat-completions extras that shape sampling or output; passed to `hosted_vllm/` deployments only."""

DOCUMENTED: dict[Protocol, frozenset[str]] = {
    "openai_chat": OPENAI_CHAT,
    "openai_responses": OPENAI_RESPONSES,
    "anthropic_messages": ANTHROPIC_MESSAGES,
    "anthropic_count_tokens": ANTHROPIC_COUNT_TOKENS,
}

TRANSLATED_DROPS = frozenset({"metadata"})
"""Documented, but LiteLLM reads `metadata` as its own logging and routing settings: never handed to it."""

_KNOWN = {protocol: fields | VLLM_EXTRAS for protocol, fields in DOCUMENTED.items()}

_REFUSED = re.compile(
    r"(^|_)(api|base|url|uri|endpoint|host|proxy|proxies|headers?|key|secret|token|password|credentials?|provider)"
    r"(_|$)|callback|^(litellm|mock|aws|vertex|azure|extra)_|^(organization|deployment_id|fallbacks|model_list"
    r"|mcp_servers)$",
    re.IGNORECASE,
)
"""Unknown fields that name a destination, a key, a provider, headers, callbacks or a canned answer."""


def refused_field(protocol: Protocol, body: dict[str, Any]) -> str | None:
    """The first field of `body` (parsed, or `parse`d to raw values) that must be refused, with why; None when
    the body may go on."""
    known = _KNOWN[protocol]
    for name in body:
        if name not in known and _REFUSED.search(name):
            return f"field `{name}` is not accepted: the gateway chooses the upstream, its key and its settings"
    kwargs = value_of(body.get("chat_template_kwargs"))
    if isinstance(kwargs, dict) and "chat_template" in kwargs:
        return "field `chat_template_kwargs.chat_template` is not accepted: the chat template is the server's"
    return None


def passed_fields(protocol: Protocol, provider: str, translated: bool) -> frozenset[str]:
    """The fields of a `protocol` request that go on to a deployment of `provider` (by either path)."""
    fields = DOCUMENTED[protocol]
    if provider == "hosted_vllm" and protocol == "openai_chat":
        fields = fields | VLLM_EXTRAS
    if translated:
        fields = fields - TRANSLATED_DROPS
    return fields


def filtered(body: dict[str, Any], fields: frozenset[str]) -> tuple[dict[str, Any], list[str]]:
    """`body` without the fields outside `fields` and without server tools, and the names of those dropped."""
    dropped = [name for name in body if name not in fields]
    if dropped:
        body = {k: v for k, v in body.items() if k in fields}
    tools = body.get("tools")
    if isinstance(tools, list) and (servers := [t for t in tools if _server_tool(t)]):
        body = {**body, "tools": [t for t in tools if not _server_tool(t)]}
        dropped += [f"tools[{t.get('type')}]" for t in servers]
    return body, dropped


# ------------------------------------------------------------------------------------------- raw bodies

RawFields = dict[str, msgspec.Raw]
"""A request's top-level fields, each value still the agent's bytes (`parse`)."""

_top_level = msgspec.json.Decoder(RawFields)


class BodyError(ValueError):
    """A request body that is not a JSON object."""


def parse(raw: bytes) -> RawFields:
    """The top-level fields of a JSON object, without building the values: the pass-through path reads only a few
    small ones (`model`, `stream`) and forwards the rest as the agent's bytes, so it never re-encodes a body.
    The whole body is still checked to be valid JSON and UTF-8 (it is embedded in trajectory lines)."""
    try:
        fields = _top_level.decode(raw)
    except msgspec.ValidationError:
        raise BodyError("request body must be a JSON object") from None
    except msgspec.DecodeError as exc:
        raise BodyError(f"request body is not valid JSON: {exc}") from None
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError as exc:
            raise BodyError(f"request body is not valid JSON: not UTF-8 at byte {exc.start}") from None
    return fields


def value_of(value: Any) -> Any:
    """A raw field's value (a small one: this builds it), anything else as it is."""
    if isinstance(value, msgspec.Raw):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:  # valid JSON orjson refuses (a lone surrogate, 1e999)
            return msgspec.json.decode(value)
    return value


_KEYS: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    if (key := _KEYS.get(name)) is None:
        key = orjson.dumps(name) + b":"
        if len(_KEYS) < 4096:  # documented names, mostly; a hostile body must not grow this without bound
            _KEYS[name] = key
    return key


BIG_PART = 16 * 1024
"""A field value at least this long is sent from the agent's bytes as it is; shorter pieces are joined."""


def spliced(
    raw: bytes, fields: RawFields, allowed: frozenset[str], model: bytes, extra: bytes = b""
) -> tuple[bytes | list[bytes | memoryview], list[str]]:
    """The body for the upstream and the names of the fields dropped from it: the agent's bytes when nothing
    changes; else the pieces of a new body (sent one after the other, never joined into one copy): its fields'
    bytes with `model` (JSON bytes) as the model's value, the fields outside `allowed` and any server tools
    left out, and `extra` (`,"name":value` bytes) added."""
    dropped = [name for name in fields if name not in allowed]
    tools = fields.get("tools")
    servers: list[Any] = []
    if tools is not None and b'"type"' in bytes(tools) and isinstance(parsed := value_of(tools), list):
        servers = [t for t in parsed if _server_tool(t)]
    if not dropped and not servers and not extra and bytes(fields["model"]) == model:
        return raw, dropped
    parts: list[bytes | memoryview] = []
    small: list[bytes | msgspec.Raw] = [b"{"]
    for name, value in fields.items():
        if name not in allowed:
            continue
        if name == "model":
            value = model  # type: ignore[assignment]
        elif name == "tools" and servers:
            value = orjson.dumps([t for t in parsed if not _server_tool(t)])  # type: ignore[assignment]
        small += (b"," if len(small) > 1 or parts else b"", _key(name))
        if len(value) >= BIG_PART:
            parts += (b"".join(small), memoryview(value))
            small = []
        else:
            small.append(value)
    small += (extra, b"}")
    parts.append(b"".join(small))
    return parts, dropped + [f"tools[{t.get('type')}]" for t in servers]


SERVER_TOOL_TYPES = re.compile(r"^(web_search|web_fetch|code_execution|mcp|file_search|code_interpreter|image_generation)")
"""Tools the provider runs itself (Anthropic's and OpenAI's hosted tools): they would fetch from the internet or
run code on the provider's side for an agent the job sandboxed, so they are dropped from `tools`."""


def _server_tool(tool: Any) -> bool:
    return isinstance(tool, dict) and isinstance(kind := tool.get("type"), str) and bool(SERVER_TOOL_TYPES.match(kind))


# ------------------------------------------------------------------------------------------- shape


def malformed(protocol: Protocol, body: dict[str, Any]) -> str | None:
    """Why a body cannot be translated, worded like the real API's 400; None when its shape is fine.

    Checked before LiteLLM sees a body: LiteLLM's translation raises bare `KeyError`s and `ValueError`s on
    bad shapes, which would be a 500 (and SDKs retry a 5xx — Claude Code ten times).
    """
    anthropic = protocol.startswith("anthropic")
    messages = body.get("messages")
    if messages is None:
        return "messages: Field required"
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    roles = ("user", "assistant", "system") if anthropic else ("system", "developer", "user", "assistant", "tool", "function")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        if message.get("role") not in roles:
            return f"messages.{i}.role: Input should be " + " or ".join(repr(r) for r in roles)
        content = message.get("content")
        if anthropic and content is None:
            return f"messages.{i}.content: Field required"
        if content is not None and not isinstance(content, str | list):
            return f"messages.{i}.content: Input should be a valid string or a list of content blocks"
        if isinstance(content, list) and not all(_is_block(block) for block in content):
            return f"messages.{i}.content: each content block needs a `type`"
    if protocol == "anthropic_messages" and "max_tokens" not in body:
        return "max_tokens: Field required"
    for name in ("max_tokens", "max_completion_tokens", "top_k", "n"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return f"{name}: Input should be a positive integer"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            return f"{name}: Input should be a valid number"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or a list of text blocks"
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        return "tools: Input should be a list of tool definitions"
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a list of strings"
    for name in ("thinking", "tool_choice", "metadata"):
        if anthropic and name in body and not isinstance(body[name], dict):
            return f"{name}: Input should be a valid dictionary"
    return None


def _is_block(block: Any) -> bool:
    return isinstance(block, dict) and isinstance(block.get("type"), str)
