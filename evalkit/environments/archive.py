"""Tar streams out of a sandbox, unpacked on the host without trusting them.

A backend that hands out tar archives (Docker's `GET /containers/{id}/archive`) feeds the response's
chunks here. The archive is consumed while it arrives: the event loop puts chunks into a pipe that holds
at most `PIPE_DEPTH` of them, and a thread of its own reads the tar from the pipe, so memory is bounded
by a few chunks whatever the archive's size, and no file I/O runs on the loop.

What the container made is hostile input: only regular files and directories are written, each path is
checked to stay inside the target, nothing already there is overwritten, and sizes are capped. Links,
FIFOs and devices are listed in the report, never followed or opened.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import queue
import stat
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TypeVar

from evalkit.cleanup import uncancellable
from evalkit.environments.base import (
    DownloadTarget,
    FileMissingError,
    FileReadError,
    FileTooLargeError,
    NotARegularFileError,
)
from evalkit.results import DownloadReport

T = TypeVar("T")
CHUNK = 1 << 16
PIPE_DEPTH = 8
"""Chunks buffered between the loop and the reading thread: memory per transfer is at most ~0.5 MiB."""
MAX_LISTED = 30
"""Skipped entries named in a report; further ones are only counted."""
_NAME_CHARS = 100

HOST_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""Errors that mean the host cannot take files at all: raised (as OSError), not noted in a report."""
_END, _ABORT = object(), object()
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.DIRTYPE: "directory",
}


class _Aborted(Exception):
    """The producer stopped (cancelled or failed) before the end of the archive."""


class _Pipe(io.RawIOBase):
    """Chunks from the event loop to a blocking reader in another thread, at most PIPE_DEPTH in flight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._space = asyncio.Semaphore(PIPE_DEPTH)
        self._view = memoryview(b"")
        self._eof = False
        self.reader_closed = False

    async def feed(self, chunk: bytes) -> None:
        await self._space.acquire()
        self._queue.put(chunk)

    def finish(self) -> None:
        self._queue.put(_END)

    def abort(self) -> None:
        self._queue.put(_ABORT)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._view:
            if self._eof:
                return 0
            item = self._queue.get()
            if item is _END:
                self._eof = True
                return 0
            if item is _ABORT:
                raise _Aborted
            self._loop.call_soon_threadsafe(self._space.release)
            self._view = memoryview(item)  # type: ignore[arg-type]
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n

    def close_reader(self) -> None:
        """The reader is done: wake a producer waiting for space so it can see that and stop."""
        self.reader_closed = True
        self._loop.call_soon_threadsafe(self._space.release)


def _in_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run `fn` in a new thread of its own (never the shared default pool, which a slow stream would
    hold). The future completes on the loop once the thread has ended."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(thread: threading.Thread, result: object, error: BaseException | None) -> None:
        thread.join()  # it has nothing left to do but return: this wait is microseconds
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        loop.call_soon_threadsafe(settle, thread, result, error)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return future


async def read_tar_stream(chunks: AsyncIterator[bytes], reader: Callable[[IO[bytes]], T]) -> T:
    """Feed `chunks` to `reader(stream)` running in its own thread; returns what the reader returns. The
    thread has ended when this returns or raises, cancellation included."""
    loop = asyncio.get_running_loop()
    pipe = _Pipe(loop)

    def run() -> T:
        try:
            return reader(io.BufferedReader(pipe, CHUNK))
        finally:
            pipe.close_reader()

    done = _in_thread(run, "evalkit-archive")
    try:
        async for chunk in chunks:
            if pipe.reader_closed:
                break
            await pipe.feed(chunk)
        pipe.finish()
    except BaseException:
        pipe.abort()
        await uncancellable(asyncio.wait([done]))
        if not done.cancelled():
            done.exception()  # retrieved and dropped: the producer's own error is the one worth raising
        raise
    return await uncancellable(done)


# ---------------------------------------------------------------------------------------------- readers


def type_name(member: tarfile.TarInfo) -> str:
    return _TYPE_NAMES.get(member.type, "special file")


def single_file_reader(path: str, max_bytes: int) -> Callable[[IO[bytes]], bytes]:
    """A reader for the archive of one path: its bytes if it is a regular file of at most `max_bytes`."""

    def read(stream: IO[bytes]) -> bytes:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            member = tar.next()
            if member is None:  # sockets have no tar representation: the archive is empty
                raise NotARegularFileError(path, "socket")
            if not member.isreg():
                raise NotARegularFileError(path, type_name(member))
            if member.size > max_bytes:
                raise FileTooLargeError(path, member.size, max_bytes)
            source = tar.extractfile(member)
            assert source is not None
            return source.read(max_bytes)

    return read


def printable(name: str) -> str:
    """A container-chosen name, safe to print: control characters escaped, length capped."""
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= _NAME_CHARS else text[: _NAME_CHARS - 3] + "..."


class _Route:
    """One host directory being filled from (part of) an archive, with its own caps and report."""

    def __init__(self, target: Path, max_bytes: int, max_files: int, reserved: Collection[str]) -> None:
        self.target = target
        self.reserved = frozenset(reserved)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.report = DownloadReport()
        self.passed = 0
        """File bytes read from the stream, kept or not: bounds the transfer, not just what is kept."""
        self.entries = 0
        """Entries of any type seen: bounds the work (a million empty directories is an attack too)."""
        self.dead = False
        """Its top is not a directory: nothing of it is taken."""

    def skip(self, name: str, reason: str, kind: str | None = None, size: int = 0) -> None:
        self.report.n_skipped += 1
        if len(self.report.skipped) < MAX_LISTED:
            self.report.skipped.append(f"{printable(name)}: {reason}")
        if kind is not None:
            self.report.not_taken[name] = (kind, size)

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> bool:
        """Handle one member, `parts` its path below the route's top; False stops the download."""
        relative = "/".join(parts)
        if parts[0] in self.reserved:
            self.skip(relative, "reserved for the host's own file")
            return True
        if member.isdir():
            if self.directory(parts) is None:
                self.skip(relative, "a file of that name is already there")
            return True
        if not member.isreg():
            self.skip(relative, type_name(member), type_name(member))
            return True
        if member.size > self.max_bytes - self.report.bytes:
            self.skip(relative, f"{member.size} bytes, over the download cap of {self.max_bytes}", "regular file", member.size)
            if self.passed + member.size > 2 * self.max_bytes:  # not even worth reading past
                self.report.truncated = True
                return False
            self.passed += member.size
            return True
        parent = self.directory(parts[:-1])
        if parent is None:
            self.skip(relative, "its directory could not be made")
            return True
        try:
            fd = os.open(parent / parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            self.skip(relative, "already present on the host; kept")
            return True
        self.passed += member.size
        source = tar.extractfile(member)
        assert source is not None
        try:
            with os.fdopen(fd, "wb") as out:
                while block := source.read(CHUNK):
                    out.write(block)
        except BaseException:
            (parent / parts[-1]).unlink(missing_ok=True)
            raise
        self.report.files += 1
        self.report.bytes += member.size
        return True

    def directory(self, parts: tuple[str, ...]) -> Path | None:
        """The host directory for `parts` under the target, made if missing; None if something that is
        not a directory is in the way."""
        path = self.target
        for part in parts:
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if not stat.S_ISDIR(mode):
                return None
        return path


class _Extraction:
    """An archive of one directory: its entries into one route, or (routed) each of its subdirectories
    into a route of its own. Docker lists a directory's entries in name order, so a routed archive that
    stops early has finished every route before the one it stopped in."""

    def __init__(self, routes: dict[str | None, _Route]) -> None:
        self.routes = routes
        self.routed = None not in routes
        self.seen: list[str | None] = []
        """Routes in the order their entries came; all but the last are complete once the next began."""
        self.stopped = False

    def run(self, stream: IO[bytes]) -> None:
        for route in self.routes.values():
            route.target.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                root: str | None = None
                for member in tar:
                    if root is None:
                        root = PurePosixPath(member.name).parts[0] if member.name else ""
                        if not member.isdir():
                            for route in self.routes.values():
                                route.dead = True
                                route.skip(member.name, f"{type_name(member)} instead of a directory; nothing downloaded")
                            break
                        continue
                    if not self.member(tar, member, root):
                        self.stopped = True
                        break
        except OSError as exc:
            if exc.errno in HOST_FULL:  # the host's disk, not the archive: the caller's failure to handle
                raise OSError(exc.errno, exc.strerror, str(next(iter(self.routes.values())).target)) from None
            self.fail(f"{type(exc).__name__}: {exc.strerror or exc}")
        except tarfile.TarError as exc:
            self.fail(f"the archive is malformed: {exc}")

    def fail(self, error: str) -> None:
        for route in self.routes.values():
            route.report.error = route.report.error or error

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, root: str) -> bool:
        parts = PurePosixPath(member.name).parts
        if not parts or parts[0] != root or any(p in ("..", "/", "") for p in parts) or len(parts) < 2:
            next(iter(self.routes.values())).skip(member.name, "path outside the directory")
            return True
        name: str | None = parts[1] if self.routed else None
        route = self.routes.get(name)
        if route is None:
            return True  # a sibling of the routed directories: not asked for
        if not self.seen or self.seen[-1] != name:
            self.seen.append(name)
        below = parts[2:] if self.routed else parts[1:]
        if not below:  # the route's own top
            if not member.isdir():
                route.dead = True
                route.skip(name or member.name, f"{type_name(member)} instead of a directory; nothing downloaded")
            return True
        if route.dead:
            return True
        route.entries += 1
        if route.entries > route.max_files:
            route.report.truncated = True
            return False
        return route.entry(tar, member, below)

    def unfinished(self) -> list[str]:
        """Routes the stream stopped before reaching (or in the middle of, when nothing marks them
        truncated): to be fetched on their own."""
        if not self.stopped:
            return []
        last = self.seen[-1] if self.seen else None
        return [name for name in self.routes if name is not None and name not in self.seen[:-1] and name != last]


def extraction_reader(
    target: Path, *, max_bytes: int, max_files: int, reserved: Collection[str] = ()
) -> Callable[[IO[bytes]], DownloadReport]:
    """A reader that unpacks a directory's archive into `target` (the archive's top entry is the
    directory itself), with the rules above."""
    extraction = _Extraction({None: _Route(target, max_bytes, max_files, reserved)})

    def read(stream: IO[bytes]) -> DownloadReport:
        extraction.run(stream)
        return extraction.routes[None].report

    return read


@dataclass(frozen=True)
class RoutedDownload:
    reports: dict[str, DownloadReport]
    unfinished: list[str]
    """Subdirectories the transfer stopped before (another one hit its cap): fetch them on their own."""
    seen: list[str]


def routed_extraction_reader(routes: Mapping[str, DownloadTarget]) -> Callable[[IO[bytes]], RoutedDownload]:
    """A reader that unpacks each named subdirectory of a directory's archive into a host directory of
    its own, each with its own caps, the rules above for each. Other subdirectories are ignored."""
    extraction = _Extraction(
        {name: _Route(t.target_dir, t.max_bytes, t.max_files, t.reserved) for name, t in routes.items()}
    )

    def read(stream: IO[bytes]) -> RoutedDownload:
        extraction.run(stream)
        reports = {str(name): route.report for name, route in extraction.routes.items()}
        return RoutedDownload(reports, extraction.unfinished(), [str(n) for n in extraction.seen])

    return read


class DownloadedFiles:
    """Files of one downloaded directory, read back on the host as `Environment.read_file` reads them in
    the container: what the download did not take because it was not a regular file, or too large, is
    refused the same way. The copies are ours (written O_EXCL, regular files only), and are still opened
    without following links, non-blocking, and checked before reading."""

    def __init__(self, container_dir: str, host_dir: Path, report: DownloadReport) -> None:
        self.container_dir = container_dir.rstrip("/")
        self.host_dir = host_dir
        self.report = report

    async def read_file(self, path: str, *, max_bytes: int) -> bytes:
        prefix = self.container_dir + "/"
        if not path.startswith(prefix):
            raise FileMissingError(f"{path} is not under {self.container_dir}")
        relative = path[len(prefix):]
        if relative in self.report.not_taken:
            kind, size = self.report.not_taken[relative]
            if kind == "regular file":
                raise FileTooLargeError(path, size, max_bytes)
            raise NotARegularFileError(path, kind)
        return await asyncio.to_thread(_read_copy, path, self.host_dir / relative, max_bytes, self.report.error)


def _read_copy(path: str, copy: Path, max_bytes: int, download_error: str | None) -> bytes:
    try:
        fd = os.open(copy, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileMissingError(f"{path} does not exist" + (f" (the download failed: {download_error})" if download_error else "")) from None
    except OSError as exc:
        raise FileReadError(f"{path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise NotARegularFileError(path, "directory")
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(path, "special file")
        if st.st_size > max_bytes:
            raise FileTooLargeError(path, st.st_size, max_bytes)
        return os.read(fd, max_bytes)
    finally:
        os.close(fd)
