"""Writing trajectory files: one line per model call, appended when the call ends (format: `trajectory.py`).

The file is the record of what an untrusted agent did, so the gateway never writes through a path anything
else can redirect: the directory is opened with `O_DIRECTORY|O_NOFOLLOW` (a symlinked `agent/` is refused),
the file is created inside it with `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted file or symlink is refused), and
both descriptors are kept for the trial's life. After each line the writer checks that the name still leads
to its file: a deleted file is recreated from the open descriptor (no line vanishes), a replaced one is
reported. Writes happen in one thread per gateway fed by a bounded queue, never on the event loop; a write
error is logged once, marked on the trial (`ModelUsage.trajectory_error`) and never reaches the agent.
Bodies that were already valid JSON bytes are embedded as they are (`orjson.Fragment`), not re-serialised, and
the request is encoded against the trial's earlier ones (`trajectory.RequestHistory`) in that thread too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import queue
import stat
import threading
from pathlib import Path
from typing import Any

import orjson

from evalkit.errors import InfrastructureError
from evalkit.gateway.records import Call
from evalkit.gateway.trajectory import RequestHistory

log = logging.getLogger("evalkit.gateway")

QUEUE_LINES = 256
"""Lines waiting for the writer thread before new calls wait for room (calls in flight always get theirs)."""


# ------------------------------------------------------------------------------------------------ files


class LogFile:
    """A JSON-lines file opened safely; once open, only the writer thread touches it."""

    def __init__(self, path: Path, dir_fd: int, fd: int) -> None:
        self.path = path
        self._dir_fd, self._fd = dir_fd, fd
        self._size = os.fstat(fd).st_size
        self._stopped = False
        self.history = RequestHistory()
        """The trial's recent requests, which the next one is encoded against (the writer thread's only)."""
        self.error: str | None = None
        """The first thing that went wrong with this file (logged once); None while all is well."""
        self.lost = 0
        """Lines not written after a failure."""

    def write(self, data: bytes) -> None:
        if self._stopped:
            self.lost += 1
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(data)
        except OSError as exc:
            self.lost += 1
            self.fail(f"cannot write {self.path}: {exc.strerror}")
            try:  # keep the file to whole lines: cut a partly written one
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            return
        self._check_name()

    def _check_name(self) -> None:
        """The name must still lead to this file; a deleted one is recreated with every line so far."""
        try:
            named = os.stat(self.path.name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            named = None
        except OSError as exc:
            self.fail(f"cannot check {self.path}: {exc.strerror}")
            return
        mine = os.fstat(self._fd)
        if named is not None and (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
            return
        if named is not None:
            self.lost += 1  # the line just written went to the file that is no longer there
            self.fail(f"{self.path} was replaced by another file during the trial; later lines are lost")
            return
        try:
            fd = _create(self.path.name, self._dir_fd, exclusive=True)
        except OSError as exc:
            self.fail(f"{self.path} was deleted during the trial and cannot be recreated: {exc.strerror}")
            return
        try:
            copied = 0
            while copied < self._size and (block := os.pread(self._fd, min(1 << 20, self._size - copied), copied)):
                copied += len(block)
                while block:
                    block = block[os.write(fd, block) :]
        except OSError as exc:
            os.close(fd)
            self.fail(f"{self.path} was deleted during the trial and cannot be restored: {exc.strerror}")
            return
        os.close(self._fd)
        self._fd = fd
        self._report(f"{self.path} was deleted during the trial; it was recreated with every line")

    def fail(self, message: str) -> None:
        """Stop writing this file; the first problem is what the trial reports."""
        self._report(message)
        self._stopped = True

    def _report(self, message: str) -> None:
        if self.error is None:
            log.warning("trajectory: %s", message)
            self.error = message

    def close(self) -> None:
        self._stopped = True  # a line submitted after this would otherwise go to whatever reuses the fd
        os.close(self._fd)
        os.close(self._dir_fd)
        if self.error is not None and self.lost:
            self.error += f" ({self.lost} line(s) not written)"

    def discard(self) -> None:
        """Close and remove a file that was opened but never used (a trial that failed to open)."""
        try:
            os.unlink(self.path.name, dir_fd=self._dir_fd)
        except OSError:
            pass
        self.close()


def _create(name: str, dir_fd: int, *, exclusive: bool) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND  # readable: a deleted file is restored from it
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(name, flags | (os.O_EXCL if exclusive else 0), 0o644, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # O_NONBLOCK: a FIFO planted here must not hang the open
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    os.set_blocking(fd, True)
    return fd


def open_log(path: Path, *, exclusive: bool = True) -> LogFile:
    """Open `path` for appending without following anything (blocking: call it in a thread).

    The directories above `path`'s parent are trusted (the engine made them); `path`'s parent is created
    if missing and must be a real directory; `exclusive` refuses any file already at `path`.
    """
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(path.parent, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise InfrastructureError(f"cannot create {path.parent}: {exc.strerror}") from None
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        reason = "it is a symlink or not a directory" if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc.strerror
        raise InfrastructureError(f"refusing to write {path}: {path.parent}: {reason}") from None
    try:
        fd = _create(path.name, dir_fd, exclusive=exclusive)
    except OSError as exc:
        os.close(dir_fd)
        reason = "a file or symlink is already there" if exc.errno in (errno.EEXIST, errno.ELOOP) else exc.strerror
        raise InfrastructureError(f"refusing to write {path}: {reason}") from None
    return LogFile(path, dir_fd, fd)


# ----------------------------------------------------------------------------------------------- writer


class _Close:
    def __init__(self, file: LogFile) -> None:
        self.file = file
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()


class LineWriter:
    """One thread that serialises and appends every line of a gateway's files, in submission order.

    `submit` never blocks the loop and never drops a line; the bound is applied before a call is admitted
    (`wait_for_room`), so the queue holds at most `QUEUE_LINES` plus one line per call in flight.
    """

    def __init__(self, bound: int = QUEUE_LINES) -> None:
        self._queue: queue.SimpleQueue[tuple[LogFile, Any] | _Close | None] = queue.SimpleQueue()
        self._bound = bound
        self._submitted = 0
        self._written = 0
        """Advanced by the writer thread only; `_submitted - _written` is the queue's length."""
        self._room: asyncio.Event | None = None
        """Set (from the writer thread) once the queue is under its bound again; None while nobody waits."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self._thread = threading.Thread(target=self._run, name="evalkit-gateway-writer", daemon=True)
        self._thread.start()

    def submit(self, file: LogFile, record: Any) -> None:
        """Queue one line: a `Call` or a dict (serialised in the writer thread)."""
        self._submitted += 1
        self._queue.put((file, record))

    async def wait_for_room(self) -> None:
        """Return once the queue is under its bound: free at once in the usual case; when the disk lags, woken by
        the writer thread (never polled: a thousand waiting calls must not spin)."""
        while self._submitted - self._written >= self._bound:
            if self._room is None:
                self._room, self._loop = asyncio.Event(), asyncio.get_running_loop()
                continue  # look again: the writer may have made room before it could see the event
            await self._room.wait()

    def _room_made(self) -> None:
        self._wake_pending = False
        if self._room is not None:
            self._room.set()
            self._room = None

    async def close(self, file: LogFile) -> None:
        """Write every line queued for `file` so far, then close it."""
        request = _Close(file)
        self._queue.put(request)
        await asyncio.wrap_future(request.done)

    async def stop(self) -> None:
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, _Close):
                try:
                    item.file.close()
                    item.done.set_result(None)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                    item.done.set_exception(exc)
                continue
            file, record = item
            try:
                line = record.line(file.history) if isinstance(record, Call) else record
                file.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE, default=str))
            except Exception as exc:  # a line that cannot be serialised must not stop every other trial's log
                file.fail(f"cannot serialise a line of {file.path}: {type(exc).__name__}: {exc}")
            finally:
                self._written += 1
                if self._room is not None and not self._wake_pending and self._submitted - self._written < self._bound:
                    self._wake_pending = True
                    self._loop.call_soon_threadsafe(self._room_made)  # type: ignore[union-attr]
