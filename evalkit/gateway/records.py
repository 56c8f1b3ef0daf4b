"""`Call`: one model call as the gateway records it, filled in on the event loop and turned into its trajectory
line in the writer thread (request delta, stream reassembly and serialisation all happen there)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from evalkit.gateway.protocols import Usage, reassemble
from evalkit.gateway.trajectory import SCHEMA_VERSION, RequestHistory

RAW_TEXT_LIMIT = 64 * 1024
"""How much of a body that is not JSON is kept (as text) for the record."""


def json_fragment(raw: bytes) -> orjson.Fragment:
    """Embed bytes already known to be valid JSON; newlines can only be whitespace there, so they go."""
    if b"\n" in raw or b"\r" in raw:
        raw = raw.replace(b"\r", b" ").replace(b"\n", b" ")
    return orjson.Fragment(raw)


def redact(text: str, secrets: list[str]) -> str:
    """Exception texts may quote keys or upstream addresses; neither may reach agents or files."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def raw_text(raw: bytes) -> str:
    return raw[:RAW_TEXT_LIMIT].decode("utf-8", "replace")


@dataclass(slots=True)
class Call:
    """One line of the trajectory, filled in as the call proceeds (and not touched once submitted)."""

    trial_id: str
    seq: int
    endpoint: str
    protocol: str
    start: float = field(default_factory=time.time)
    streamed: bool = False
    route: str | None = None
    """`passthrough` (bytes forwarded), `translated` (in-house or LiteLLM) or `local` (answered by the gateway)."""
    deployment: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    error: str | None = None
    request_fields: dict[str, msgspec.Raw] | None = None
    """The request's top-level fields as the agent's bytes (encoded against earlier requests when written)."""
    request_raw: str | None = None
    """The request as text when it was not a JSON object (bad input)."""
    dropped: list[str] | None = None
    """Body fields outside the protocol that were not passed on (see `bodies.py`)."""
    response: Any = None
    """What the agent received, for answers that were not streamed."""
    sent: list[bytes] | None = None
    """A streamed answer's bytes as the agent received them, reassembled into one object when written."""
    response_raw: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    first_byte: float | None = None
    end: float | None = None
    delivered: bool = False
    """The agent got the whole streamed answer; what ends the exchange after that (a hang-up, the trial's
    close) is no error. Not part of the line."""

    def line(self, history: RequestHistory) -> dict[str, Any]:
        """The trajectory line (in the writer thread: this is where the costly parts of recording happen)."""
        request, delta = history.encode(self.seq, self.request_fields) if self.request_fields else (None, None)
        response, response_raw = self.response, self.response_raw
        if self.sent is not None:
            data = b"".join(self.sent)
            response = reassemble(self.protocol, data)  # type: ignore[arg-type]
            if response is None and data:
                response_raw = raw_text(data)
        return {
            "v": SCHEMA_VERSION,
            "trial_id": self.trial_id,
            "seq": self.seq,
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "stream": self.streamed,
            "route": self.route,
            "deployment": self.deployment,
            "status": self.status,
            "error": self.error,
            "attempts": self.attempts,
            "usage": self.usage.as_dict() if self.usage else None,
            "cost_usd": self.cost_usd,
            "timing": {"start": self.start, "first_byte": self.first_byte, "end": self.end},
            "request": request,
            **({"request_delta": delta} if delta else {}),
            **({"request_raw": self.request_raw} if self.request_raw is not None else {}),
            **({"dropped": self.dropped} if self.dropped else {}),
            "response": response,
            **({"response_raw": response_raw} if response_raw is not None else {}),
        }
