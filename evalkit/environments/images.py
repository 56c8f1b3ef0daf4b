"""Task images, built once: tagged by a content hash of the build context, reused across trials and jobs.

A build runs at most once per image at a time (per-image lock), builds are bounded separately from trials,
and a failed build is remembered for the rest of the job so other attempts of the task fail fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import aiodocker

from evalkit.errors import EnvironmentBuildError
from evalkit.tasks import Task

def _walk(root: Path) -> list[Path]:
    """Every file and directory under root, sorted, so hashes and tars are deterministic."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        out.extend(base / d for d in dirnames)
        out.extend(base / f for f in sorted(filenames))
    return sorted(out)


def context_hash(root: Path) -> str:
    """sha256 over each entry's type, relative path, mode and content digest (not timestamps): same context,
    same image. Every field is length-prefixed or fixed-size, so two different contexts never feed the same
    bytes (a file whose content mimics the next entry's header cannot forge a collision). Contents are read
    in chunks: memory does not grow with file sizes."""
    digest = hashlib.sha256()
    for path in _walk(root):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            kind, content = b"l", hashlib.sha256(os.readlink(path).encode()).digest()
        elif stat.S_ISREG(st.st_mode):
            kind, content = b"f", _file_digest(path)
        elif stat.S_ISDIR(st.st_mode):
            kind, content = b"d", b""
        else:
            kind, content = b"o", b""
        name = path.relative_to(root).as_posix().encode()
        digest.update(kind + len(name).to_bytes(8, "big") + name + stat.S_IMODE(st.st_mode).to_bytes(4, "big") + content)
    return digest.hexdigest()


def _file_digest(path: Path) -> bytes:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def tar_directory(root: Path, prefix: str = "") -> bytes:
    """A tar of root's contents; with `prefix`, laid out under that directory (created by the tar itself)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if prefix:
            info = tarfile.TarInfo(prefix)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path in _walk(root):
            arcname = "/".join(p for p in (prefix, path.relative_to(root).as_posix()) if p)
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def image_tag(digest: str) -> str:
    """Named by content alone, so tasks with identical environments share one image."""
    return f"evalkit/env:{digest[:20]}"


class ImageBuilder:
    def __init__(self, client: aiodocker.Docker, *, n_concurrent: int, job_name: str) -> None:
        self._client = client
        self._builds = asyncio.Semaphore(n_concurrent)
        self._locks: dict[str, asyncio.Lock] = {}
        self._ready: set[str] = set()
        self._failed: dict[str, str] = {}
        self._hashes: dict[Path, str] = {}
        self._job_name = job_name

    async def ensure(self, task: Task, *, timeout_sec: float | None, log_path: Path) -> str:
        """The image to run `task` in: its prebuilt `docker_image`, or a cached or freshly built one."""
        prebuilt = task.config.environment.docker_image
        if prebuilt:
            await self._require_present(prebuilt)
            return prebuilt
        context = task.environment_dir
        if context not in self._hashes:
            self._hashes[context] = await asyncio.to_thread(context_hash, context)
        tag = image_tag(self._hashes[context])
        if tag in self._ready:
            return tag
        lock = self._locks.setdefault(tag, asyncio.Lock())
        async with lock:
            if tag in self._failed:
                raise EnvironmentBuildError(self._failed[tag])
            if tag not in self._ready:
                if not await self._exists(tag):
                    try:
                        async with self._builds:
                            await self._build(task, tag, timeout_sec=timeout_sec, log_path=log_path)
                    except EnvironmentBuildError as exc:
                        self._failed[tag] = str(exc)
                        raise
                self._ready.add(tag)
        return tag

    async def _exists(self, name: str) -> bool:
        try:
            await self._client.images.inspect(name)
            return True
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise

    async def _require_present(self, name: str) -> None:
        if name in self._ready:
            return
        if not await self._exists(name):
            repo, _, tag = name.partition(":")
            try:
                await self._client.images.pull(repo, tag=tag or "latest")
            except aiodocker.DockerError as exc:
                raise EnvironmentBuildError(f"prebuilt image {name!r} is not present and cannot be pulled: {exc.message}") from None
        self._ready.add(name)

    async def _build(self, task: Task, tag: str, *, timeout_sec: float | None, log_path: Path) -> None:
        context = await asyncio.to_thread(tar_directory, task.environment_dir)
        params = {"t": tag, "labels": json.dumps({"evalkit.task": task.name, "evalkit.built-by": self._job_name})}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        try:
            async with asyncio.timeout(timeout_sec):
                error = await build_image(self._client, context, params, lines.append)
        except TimeoutError:
            error = f"image build outlived its timeout of {timeout_sec:.0f} s"
        finally:
            log_path.write_text("".join(lines))
        if error is not None:
            tail = "\n".join("".join(lines).strip().splitlines()[-5:])
            raise EnvironmentBuildError(f"building {task.name} failed: {error}" + (f"\n{tail}" if tail else ""))


async def build_image(
    client: aiodocker.Docker, context: bytes, params: dict[str, str], on_output: Callable[[str], None]
) -> str | None:
    """Build an image from a tar context through the Engine API (classic builder, host networking for `RUN`
    steps), passing each line of build output to `on_output` as it arrives; returns the build's error
    message, or None when it succeeded. `params` are `/build` query parameters (`t`, `labels`, ...)."""
    query = {
        "rm": "1",
        "forcerm": "1",  # a failed step must not leave its container behind
        "networkmode": "host",  # RUN steps that fetch packages; there is no bridge here
        **params,
    }
    try:
        async with client._query(
            "build", method="POST", params=query, data=context,
            headers={"Content-Type": "application/x-tar"}, timeout=None,
        ) as response:
            async for raw in response.content:
                if not raw.strip():
                    continue
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if "stream" in event:
                    on_output(event["stream"])
                if "error" in event:
                    error = event["error"].strip()
                    on_output(f"ERROR: {error}\n")
                    return error
    except aiodocker.DockerError as exc:
        return exc.message
    return None
