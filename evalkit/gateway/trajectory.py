"""`<trial>/agent/litellm-trajectory.jsonl`: one line per model call, written when the call ends.

Each line is one `orjson` write followed by a flush, and lines are written only from the event loop's thread,
so lines never interleave and a crash loses at most the calls in flight. Bodies that were already valid JSON
bytes are embedded as they are (`orjson.Fragment`), not parsed and re-serialised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from evalkit.gateway.protocols import Usage

SCHEMA_VERSION = 1
"""`v` of every line; bumped when a field changes meaning."""

RAW_TEXT_LIMIT = 64 * 1024
"""How much of a body that is not JSON is kept (as text) for the record."""


def json_fragment(raw: bytes) -> orjson.Fragment:
    """Embed bytes already known to be valid JSON; newlines can only be whitespace there, so they go."""
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    return orjson.Fragment(raw)


def redact(text: str, secrets: list[str]) -> str:
    """Exception texts may quote request parameters; upstream keys must reach neither agents nor files."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def raw_text(raw: bytes) -> str:
    return raw[:RAW_TEXT_LIMIT].decode("utf-8", "replace")


@dataclass(slots=True)
class Call:
    """One line of the trajectory, filled in as the call proceeds."""

    trial_id: str
    seq: int
    endpoint: str
    protocol: str
    start: float = field(default_factory=time.time)
    stream: bool = False
    route: str | None = None
    """`passthrough` (bytes forwarded), `translated` (through LiteLLM) or `local` (answered by the gateway)."""
    deployment: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    request: Any = None
    request_raw: str | None = None
    """The request as text when it was not a JSON object (bad input)."""
    response: Any = None
    """What the agent received; a streamed answer is reassembled into the equivalent single object."""
    response_raw: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    first_byte: float | None = None
    end: float | None = None

    def line(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "trial_id": self.trial_id,
            "seq": self.seq,
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "stream": self.stream,
            "route": self.route,
            "deployment": self.deployment,
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
            "usage": self.usage.as_dict() if self.usage else None,
            "cost_usd": self.cost_usd,
            "timing": {"start": self.start, "first_byte": self.first_byte, "end": self.end},
            "request": self.request,
            **({"request_raw": self.request_raw} if self.request_raw is not None else {}),
            "response": self.response,
            **({"response_raw": self.response_raw} if self.response_raw is not None else {}),
        }


class JsonlWriter:
    """Appends JSON lines to a file, flushing each, from the event loop's thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("ab")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE, default=str))
        self._file.flush()

    def close(self) -> None:
        self._file.close()
