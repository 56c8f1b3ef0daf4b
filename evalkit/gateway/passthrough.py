"""The fast path: the upstream speaks the client's protocol, so the agent's body goes on as its own bytes.

Nothing is re-encoded: `bodies.spliced` joins the agent's field bytes again around a new `model` value (agents
send the gateway's model name; the upstream knows its own), leaves out the fields the policy drops, and adds
`stream_options` when the gateway wants usage the agent did not ask for; when none of that changes anything the
body is forwarded as it came. The answer is relayed chunk by chunk on a pooled connection. No LiteLLM objects
are built: this costs a fraction of a millisecond per call instead of LiteLLM's several, which is what lets one
process drive a thousand agents.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import aiohttp
import yarl
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from evalkit.gateway.config import Protocol
from evalkit.gateway.protocols import UPSTREAM_PATHS, forwarded_headers, is_anthropic
from evalkit.gateway.routing import Deployment, Reply, retry_after_of

ANTHROPIC_VERSION = "2023-06-01"
_FORWARDED_ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")
STREAM_USAGE = b',"stream_options":{"include_usage":true}'


def upstream_headers(deployment: Deployment, protocol: Protocol, client_headers: Mapping[str, str]) -> dict[str, str]:
    """Fresh headers with the deployment's own key: nothing from the agent's auth ever goes upstream."""
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    if is_anthropic(protocol):
        headers["anthropic-version"] = ANTHROPIC_VERSION
        headers.update((h, v) for h in _FORWARDED_ANTHROPIC_HEADERS if (v := client_headers.get(h)))
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
    elif deployment.api_key:
        headers["Authorization"] = "Bearer " + deployment.api_key
    return headers


class PartsPayload(Payload):
    """A body sent as the pieces `bodies.spliced` made, one write each, with its whole length declared."""

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        super().__init__(parts, content_type="application/json")
        self._size = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        for part in self._value:
            await writer.write(part)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        await self.write(writer)  # the declared length is the parts' own


@functools.cache
def upstream_url(root: str, protocol: Protocol) -> yarl.URL:
    """Parsed once per deployment and protocol: URL parsing is a visible share of a forwarded call's CPU."""
    return yarl.URL(root + UPSTREAM_PATHS[protocol])


async def post(
    session: aiohttp.ClientSession,
    deployment: Deployment,
    protocol: Protocol,
    payload: bytes | list[bytes | memoryview],
    stream: bool,
    headers: Mapping[str, str],
) -> tuple[aiohttp.ClientResponse, Reply]:
    """One attempt's request; for a 200 stream, the Reply holds the first chunk (the first-byte limit, which the
    pool applies around the attempt, covers it)."""
    data = payload if isinstance(payload, bytes) else PartsPayload(payload)
    response = await session.post(upstream_url(deployment.api_root, protocol), data=data, headers=headers)  # type: ignore[arg-type]
    content_type = response.headers.get("Content-Type", "application/json")
    forwarded = forwarded_headers(response.headers)
    if stream and response.status == 200:
        try:
            first = await response.content.readany()
        except BaseException:
            response.close()
            raise

        async def close() -> None:
            response.close()  # a no-op once the stream was read to its end and the connection went back

        reply = Reply(200, first, content_type, response.content.readany, close, headers=forwarded, abort=response.close)
        return response, reply
    try:
        data = await response.read()
    finally:
        response.release()
    return response, Reply(response.status, data, content_type, retry_after=retry_after_of(forwarded), headers=forwarded)


async def forward(
    session: aiohttp.ClientSession,
    deployment: Deployment,
    protocol: Protocol,
    payload: bytes | list[bytes | memoryview],
    stream: bool,
    client_headers: Mapping[str, str],
) -> Reply:
    """One pass-through attempt; `payload` is the body for this deployment (`bodies.spliced`)."""
    headers = upstream_headers(deployment, protocol, client_headers)
    _, reply = await post(session, deployment, protocol, payload, stream, headers)
    return reply
