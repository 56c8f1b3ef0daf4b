"""The control channel between a job's `Gateway` and each of its gateway processes: JSON lines over a socket pair.

The job's process sends `{"id": n, "op": ..., ...}`; the gateway process answers `{"id": n, "result": ...}` or
`{"id": n, "error": {"type": ..., "message": ...}}`, and sends `{"log": {...}}` for its warnings. Upstream keys
travel here (never in argv or the environment). The channel is also how each side learns the other is gone: a
gateway process whose job's process died reads end-of-file and stops; a job reads end-of-file when its gateway
process died.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

LINE_LIMIT = 16 * 1024 * 1024
"""Longest control message (a config with many deployments is a few KB)."""


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def over(cls, sock: Any) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message (never blocks; a peer that is gone makes it a no-op)."""
        if not self._writer.is_closing():
            self._writer.write(orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE))

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the other side is gone."""
        try:
            line = await self._reader.readline()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            return None
        if not line.endswith(b"\n"):
            return None
        message = orjson.loads(line)
        return message if isinstance(message, dict) else None

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass
