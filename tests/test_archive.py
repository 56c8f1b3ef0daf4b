"""Tar streams from a sandbox, unpacked without trusting them: crafted archives (what a hostile engine or a
bug could send) never write outside the target, memory stays bounded by a few chunks whatever the size, and
the reading thread is gone when the transfer returns, cancelled or not."""

from __future__ import annotations

import asyncio
import io
import tarfile
import threading
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evalkit.environments import FileTooLargeError, NotARegularFileError
from evalkit.environments.archive import CHUNK, PIPE_DEPTH, extraction_reader, read_tar_stream, single_file_reader


def tar_of(*entries: tuple[str, bytes | str | None]) -> bytes:
    """(name, content): bytes → regular file, None → directory, "->target" → symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i : i + CHUNK]


def archive_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "evalkit-archive"]


async def test_crafted_paths_never_leave_the_target(tmp_path: Path):
    target = tmp_path / "out"
    data = tar_of(
        ("agent", None),
        ("agent/ok.txt", b"ok"),
        ("agent/../escape.txt", b"x"),
        ("/etc/evil", b"x"),
        ("other/file", b"x"),
        ("agent/sub/../../up.txt", b"x"),
        ("agent/link", "->/etc/passwd"),
        ("agent/link/through.txt", b"x"),
    )
    report = await read_tar_stream(chunks_of(data), extraction_reader(target, max_bytes=1 << 20, max_files=100))
    # The link is not made; an entry "under" it lands in a real directory of that name, inside the target.
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "out", "out/link", "out/link/through.txt", "out/ok.txt",
    ]
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))
    assert report.skipped == [
        "agent/../escape.txt: path outside the directory",
        "/etc/evil: path outside the directory",
        "other/file: path outside the directory",
        "agent/sub/../../up.txt: path outside the directory",
        "link: symbolic link",
    ]
    assert report.files == 2


async def test_names_in_reports_are_escaped_and_short(tmp_path: Path):
    data = tar_of(("d", None), ("d/\x1b[31mred\n" + "x" * 300, "->/"))
    report = await read_tar_stream(chunks_of(data), extraction_reader(tmp_path / "o", max_bytes=100, max_files=10))
    (line,) = report.skipped
    assert line.startswith("\\x1b[31mred\\n") and len(line) < 130 and "\n" not in line


async def test_memory_stays_bounded_for_a_large_stream(tmp_path: Path):
    size = 64 * 1024 * 1024

    async def huge() -> AsyncIterator[bytes]:
        directory, big = tarfile.TarInfo("d"), tarfile.TarInfo("d/big")
        directory.type, big.size = tarfile.DIRTYPE, size
        yield directory.tobuf() + big.tobuf()
        block = b"\0" * CHUNK
        for _ in range(size // CHUNK):
            yield block  # the same object each time: only what the pipe holds is extra
        yield b"\0" * 1024  # end of archive

    tracemalloc.start()
    try:
        report = await read_tar_stream(huge(), extraction_reader(tmp_path / "o", max_bytes=size, max_files=10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.files == 1 and (tmp_path / "o" / "big").stat().st_size == size
    assert peak < (PIPE_DEPTH + 8) * CHUNK * 4  # a few chunks in flight, never the archive


async def test_single_file_reader_refuses_everything_but_a_small_regular_file():
    assert await read_tar_stream(chunks_of(tar_of(("r.txt", b"1.0"))), single_file_reader("/r.txt", 10)) == b"1.0"
    with pytest.raises(NotARegularFileError, match=r"^/r\.txt is a symbolic link, not a regular file$"):
        await read_tar_stream(chunks_of(tar_of(("r.txt", "->/proc/self/environ"))), single_file_reader("/r.txt", 10))
    with pytest.raises(NotARegularFileError, match=r"^/r\.txt is a socket, not a regular file$"):
        await read_tar_stream(chunks_of(tar_of()), single_file_reader("/r.txt", 10))
    with pytest.raises(FileTooLargeError, match=r"^/r\.txt is larger than 10 bytes \(11\)$"):
        await read_tar_stream(chunks_of(tar_of(("r.txt", b"x" * 11))), single_file_reader("/r.txt", 10))
    assert archive_threads() == []


async def test_a_cancelled_transfer_leaves_no_thread(tmp_path: Path):
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield tar_of(("d", None))[:512]
        started.set()
        while True:
            await asyncio.sleep(0.01)
            yield b""

    transfer = asyncio.ensure_future(
        read_tar_stream(endless(), extraction_reader(tmp_path / "o", max_bytes=100, max_files=10))
    )
    await started.wait()
    assert len(archive_threads()) == 1
    transfer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await transfer
    assert archive_threads() == []


async def test_a_malformed_archive_is_reported_not_raised(tmp_path: Path):
    data = tar_of(("d", None), ("d/a", b"abc"))[:1025]  # cut inside the member's data
    report = await read_tar_stream(chunks_of(data), extraction_reader(tmp_path / "o", max_bytes=100, max_files=10))
    assert report.error is not None and report.error.startswith("the archive is malformed")
    assert not (tmp_path / "o" / "a").exists()  # no half-written file
