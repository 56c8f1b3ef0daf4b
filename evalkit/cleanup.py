"""Clean-up that survives cancellation: containers are removed and files closed even on Ctrl-C."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def uncancellable(awaitable: Awaitable[T]) -> T:
    """Await to completion even if the caller is cancelled meanwhile; the cancellation is re-raised after."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
