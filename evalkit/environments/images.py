"""Task images: prepared (built or pulled) ahead of the trials that need them, named by content, and
evicted least-recently-used under a disk budget once no pending trial needs them.

A build's tag hashes the build context *and* the image id of every `FROM` image, so a changed base image
is never silently reused. Each context is hashed once per job, and each image prepared once at a time
(shared futures). Contexts are streamed to the engine in chunks: memory does not grow with a context.
Builds use BuildKit where the engine has it (`/build?version=2`), the classic builder otherwise; a
Dockerfile feature the builder lacks is an `EnvironmentBuildError` that names it. A pull that fails for
the network or the registry is retried with backoff (bounded), then an `ImagePullError` (infrastructure:
retried like one); a failing `RUN` is the task's `EnvironmentBuildError`, never retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
import stat
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

import aiodocker
import aiohttp

from evalkit.errors import DockerUnavailableError, EnvironmentBuildError, ImagePullError
from evalkit.results import ImageSummary
from evalkit.tasks import Task

logger = logging.getLogger(__name__)
CHUNK = 1 << 16
STREAM_DEPTH = 8
"""Context chunks buffered between the tar thread and the upload: memory per build is ~0.5 MiB."""
PULL_ATTEMPTS = 3
PULL_BACKOFF_SEC = 2.0
LABEL_BUILT_BY_JOB_ID = "evalkit.built-by-job-id"
_NOT_FOUND = ("not found", "manifest unknown", "pull access denied", "invalid reference format", "repository does not exist")
"""How a registry says an image does not exist: the task named it wrong, retrying does not help."""
_NETWORK = ("failed to do request", "dial tcp", "i/o timeout", "tls handshake", "connection reset", "connection refused",
            "toomanyrequests", "too many requests", "no such host", "eof", "503", "502", "timeout")


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


def write_tar(root: Path, out: io.RawIOBase | io.BufferedIOBase, prefix: str = "",
              executable: Collection[str] = ()) -> None:
    """root's contents as a tar (GNU format: BuildKit reads a tar that starts with a PAX header as a
    Dockerfile); with `prefix`, laid out under that directory (created by the tar itself). Regular files
    named in `executable` (relative to root) get mode 0755."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT, bufsize=CHUNK) as tar:
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
            if info.isreg() and path.relative_to(root).as_posix() in executable:
                info.mode = 0o755
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def tar_directory(root: Path, prefix: str = "", executable: Collection[str] = ()) -> bytes:
    """`write_tar` into memory: for small directories (a task's tests/ and solution/)."""
    buf = io.BytesIO()
    write_tar(root, buf, prefix, executable)
    return buf.getvalue()


class _ChunkWriter(io.RawIOBase):
    """A file the tar thread writes to; each write becomes a chunk on the loop's bounded queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | BaseException | None]) -> None:
        self._loop, self._queue = loop, queue

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        asyncio.run_coroutine_threadsafe(self._queue.put(bytes(data)), self._loop).result()
        return len(data)


async def tar_stream(root: Path) -> AsyncIterator[bytes]:
    """A directory's tar, made in a thread while it is read: at most STREAM_DEPTH chunks in memory."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(STREAM_DEPTH)

    def produce() -> None:
        try:
            write_tar(root, _ChunkWriter(loop, queue))
            item: BaseException | None = None
        except BaseException as exc:  # handed to the reader
            item = exc
        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

    producer = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        while not producer.done():  # a reader that stopped early: unblock the thread so it can end
            while not queue.empty():
                queue.get_nowait()
            await asyncio.sleep(0.01)


def image_tag(digest: str) -> str:
    """Named by content alone, so tasks with identical environments share one image."""
    return f"evalkit/env:{digest[:20]}"


def build_tag(context_digest: str, bases: list[tuple[str, str]]) -> str:
    """The tag of a build: its context's hash and each (`FROM` reference, image id) it builds from."""
    return image_tag(hashlib.sha256("\n".join([context_digest, *(f"{ref}={image_id}" for ref, image_id in bases)]).encode()).hexdigest())


# ---------------------------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ImageReference:
    """`[registry[:port]/]repository[:tag][@digest]`, as Docker reads it."""

    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return self.repository + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def pullable(self) -> str:
        """What to ask the engine to pull: the digest if there is one, else the tag (default `latest`)."""
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or 'latest'}"


_DOMAIN = r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::[0-9]+)?|[A-Za-z0-9-]+:[0-9]+|localhost)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"^(?P<repo>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$"
)


def parse_reference(text: str) -> ImageReference:
    """A full image reference (`registry:5000/team/img:tag`, `img@sha256:…`); ValueError if it is not one.
    The port of a registry is never mistaken for a tag: a tag is what follows the last `:` after the last `/`."""
    match = _REFERENCE.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not an image reference ([registry[:port]/]name[:tag][@sha256:digest])")
    return ImageReference(match["repo"], match["tag"], match["digest"])


# ---------------------------------------------------------------------------------------------- Dockerfiles


_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", re.IGNORECASE)
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
_COPY_FROM = re.compile(r"^\s*COPY\s+.*--from=(\S+)", re.IGNORECASE)
_HEREDOC = re.compile(r"^\s*(RUN|COPY|ADD)\b.*<<-?[\"']?[A-Za-z_][A-Za-z0-9_]*", re.IGNORECASE)
_SYNTAX = re.compile(r"^#\s*syntax\s*=\s*(\S+)", re.IGNORECASE)
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction) with `\\` continuations joined."""
    out, buffer, first = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not buffer:
            first = number
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        out.append((first, buffer + line))
        buffer = ""
    if buffer:
        out.append((first, buffer))
    return out


def dockerfile_bases(text: str) -> list[str]:
    """Images a Dockerfile builds from (`FROM`, `COPY --from=`), with `ARG` defaults substituted; earlier
    stages and `scratch` are not images."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    for _, line in _logical_lines(text):
        if match := _ARG.match(line):
            args.setdefault(match[1], match[2] or "")
            continue
        match = _FROM.match(line) or _COPY_FROM.match(line)
        if not match:
            continue
        name = _VAR.sub(lambda m: args.get(m[1], ""), match[1])
        if name.lower() != "scratch" and name not in stages and not name.isdigit() and name not in bases:
            bases.append(name)
        if match.re is _FROM and match.lastindex and match.lastindex >= 2 and match[2]:
            stages.add(match[2])
    return bases


def dockerfile_features(text: str) -> list[str]:
    """Features not every builder has, named for an error message, with their line."""
    found = []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if number == 1 or all(not earlier.strip() or earlier.lstrip().startswith("#") for earlier in lines[: number - 1]):
            if match := _SYNTAX.match(line):
                found.append(f"a `# syntax={match[1]}` frontend (line {number}), which the engine must fetch from a registry")
    for number, line in _logical_lines(text):
        if _HEREDOC.match(line):
            found.append(f"a heredoc (`{line.strip()[:40]}`, line {number})")
        elif re.search(r"^\s*(COPY|ADD)\b.*--chmod", line, re.IGNORECASE) or re.search(r"^\s*RUN\b.*--mount", line, re.IGNORECASE):
            found.append(f"`{line.split()[0].upper()} {line.split()[1]}` (line {number}), which needs BuildKit")
    return found


# ---------------------------------------------------------------------------------------------- the store


@dataclass
class _Image:
    name: str
    own_bytes: int = 0
    """Disk this image adds beyond its base image (built), or its whole size (pulled)."""
    owned: bool = False
    """Built or pulled for this job: it may be evicted. Images others made are only reused."""
    present: bool = False
    holds: int = 0
    """Trials still to run in it; never evicted while > 0."""
    last_used: float = field(default_factory=time.monotonic)


class ImageStore:
    """One job's images: prepare ahead, hold while needed, evict LRU beyond `budget_bytes`."""

    def __init__(
        self,
        client: aiodocker.Docker,
        *,
        job_id: str,
        job_name: str,
        n_builds: int,
        n_pulls: int,
        pull_timeout_sec: float | None,
        budget_bytes: int | None,
        buildkit: bool,
        engine: str = "",
    ) -> None:
        self._client = client
        self._job_id = job_id
        self._job_name = job_name
        self._builds = asyncio.Semaphore(n_builds)
        self._pulls = asyncio.Semaphore(n_pulls)
        self._pull_timeout = pull_timeout_sec
        self.budget_bytes = budget_bytes
        self.buildkit = buildkit
        self._engine = engine
        self.stats = ImageSummary()
        self._names: dict[str, asyncio.Future[str]] = {}
        """Per build context or prebuilt reference: the image name (hash and bases resolved once per job)."""
        self._bases: dict[str, asyncio.Future[tuple[str, int]]] = {}
        """Per base reference: (image id, size)."""
        self._images: dict[str, _Image] = {}
        self._making: dict[str, asyncio.Future[None]] = {}
        self._failed: dict[str, EnvironmentBuildError] = {}
        """The task's own failures (a failing RUN): other attempts fail fast instead of building again."""
        self._room = asyncio.Condition()

    # ------------------------------------------------------------------ the job's side

    async def prepare(self, task: Task, *, timeout_sec: float | None, log_path: Path) -> str:
        """Make `task`'s image present and hold it until `release(task)`: ahead of the trial, so the trial's
        slot never waits for a build. Waits for room under the budget before making a new image."""
        name = await self._name(task, log_path)
        image = self._images.setdefault(name, _Image(name))
        image.holds += 1
        await self._present(task, image, timeout_sec=timeout_sec, log_path=log_path, wait_for_room=True)
        return name

    async def release(self, task: Task) -> None:
        """The trials `prepare` held `task`'s image for are done with it: it may be evicted now."""
        future = self._names.get(self._key(task))
        if future is None or not future.done() or future.exception() is not None:
            return
        image = self._images.get(future.result())
        if image is not None and image.holds > 0:
            image.holds -= 1
            image.last_used = time.monotonic()
            await self.fit()

    async def ensure(self, task: Task, *, timeout_sec: float | None, log_path: Path) -> str:
        """The image to run `task` in now (a try's start): prepared already, or made here."""
        name = await self._name(task, log_path)
        image = self._images.setdefault(name, _Image(name))
        image.last_used = time.monotonic()
        await self._present(task, image, timeout_sec=timeout_sec, log_path=log_path, wait_for_room=False)
        return name

    def forget(self, name: str) -> None:
        """The engine says the image is gone (another job evicted it): make it again on the next `ensure`."""
        if name in self._images:
            self._images[name].present = False

    # ------------------------------------------------------------------ names

    @staticmethod
    def _key(task: Task) -> str:
        return task.config.environment.docker_image or str(task.environment_dir)

    async def _name(self, task: Task, log_path: Path) -> str:
        key = self._key(task)
        future = self._names.get(key)
        if future is None or (future.done() and future.exception() is not None and not _is_task_error(future.exception())):
            future = self._names[key] = asyncio.ensure_future(self._resolve_name(task, log_path))
        return await asyncio.shield(future)

    async def _resolve_name(self, task: Task, log_path: Path) -> str:
        prebuilt = task.config.environment.docker_image
        if prebuilt:
            try:
                return parse_reference(prebuilt).pullable
            except ValueError as exc:
                raise EnvironmentBuildError(f"[environment] docker_image: {exc}") from None
        context = task.environment_dir
        digest, dockerfile = await asyncio.to_thread(_hash_and_dockerfile, context)
        bases = dockerfile_bases(dockerfile)
        identities = [(base, (await self._base(base, log_path))[0]) for base in bases]
        return build_tag(digest, identities)

    async def _base(self, reference: str, log_path: Path) -> tuple[str, int]:
        """The id and size of a `FROM` image, pulled first if it is missing; once per job."""
        future = self._bases.get(reference)
        if future is None or (future.done() and future.exception() is not None):
            future = self._bases[reference] = asyncio.ensure_future(self._resolve_base(reference, log_path))
        return await asyncio.shield(future)

    async def _resolve_base(self, reference: str, log_path: Path) -> tuple[str, int]:
        try:
            ref = parse_reference(reference)
        except ValueError as exc:
            raise EnvironmentBuildError(f"environment/Dockerfile: FROM {exc}") from None
        info = await self._inspect(str(ref)) or await self._inspect(ref.pullable)
        if info is None:
            await self._pull(ref.pullable, log_path, what="base image")
            self.stats.pulled += 1
            info = await self._inspect(ref.pullable)
            if info is None:
                raise ImagePullError(f"base image {reference} was pulled but is not there")
        return info["Id"], int(info.get("Size") or 0)

    # ------------------------------------------------------------------ making images present

    async def _present(self, task: Task, image: _Image, *, timeout_sec: float | None, log_path: Path,
                       wait_for_room: bool) -> None:
        while not image.present:
            if image.name in self._failed:
                raise self._failed[image.name]
            making = self._making.get(image.name)
            if making is None:
                making = self._making[image.name] = asyncio.ensure_future(
                    self._make(task, image, timeout_sec=timeout_sec, log_path=log_path, wait_for_room=wait_for_room)
                )
                making.add_done_callback(lambda _, name=image.name: self._making.pop(name, None))
            await asyncio.shield(making)

    async def _make(self, task: Task, image: _Image, *, timeout_sec: float | None, log_path: Path,
                    wait_for_room: bool) -> None:
        info = await self._inspect(image.name)
        if info is None:
            if wait_for_room:
                await self._wait_for_room(image)
            if task.config.environment.docker_image:
                await self._pull(image.name, log_path, what="prebuilt image")
                self.stats.pulled += 1
                info = await self._inspect(image.name)
                image.own_bytes = int((info or {}).get("Size") or 0)
            else:
                try:
                    async with self._builds:
                        await self._build(task, image.name, timeout_sec=timeout_sec, log_path=log_path)
                except EnvironmentBuildError as exc:
                    self._failed[image.name] = exc
                    raise
                self.stats.built += 1
                info = await self._inspect(image.name)
                bases = [await self._base(b, log_path) for b in dockerfile_bases(await asyncio.to_thread(_dockerfile, task.environment_dir))]
                image.own_bytes = max(0, int((info or {}).get("Size") or 0) - max((size for _, size in bases), default=0))
            image.owned = True
        else:
            self.stats.reused += not image.owned
            labels = (info.get("Config") or {}).get("Labels") or {}
            if labels.get(LABEL_BUILT_BY_JOB_ID) == self._job_id:  # built by an earlier run of this job
                image.owned = True
                image.own_bytes = image.own_bytes or int(info.get("Size") or 0)
        image.present = True
        image.last_used = time.monotonic()
        await self.fit()

    async def _inspect(self, name: str) -> dict | None:
        try:
            return await self._client.images.inspect(name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return None
            if exc.status == 900:
                raise DockerUnavailableError(f"the Docker engine stopped answering while looking up image {name}") from None
            raise

    # ------------------------------------------------------------------ budget

    def used_bytes(self) -> int:
        return sum(i.own_bytes for i in self._images.values() if i.owned and i.present)

    async def _wait_for_room(self, image: _Image) -> None:
        """Before making a new image for a later trial: wait while the budget is used up by images still
        held by other trials (they finish, release, and are evicted). Never waits when nothing else is held."""
        if self.budget_bytes is None:
            return
        async with self._room:
            await self._room.wait_for(
                lambda: self.used_bytes() <= self.budget_bytes  # type: ignore[operator]
                or not any(i.holds for i in self._images.values() if i is not image and i.owned and i.present)
            )

    async def fit(self) -> None:
        """Evict owned images no trial holds, least recently used first, until the budget holds. An image a
        container still uses (its removal runs in the background) stays, and is tried again next time."""
        if self.budget_bytes is not None:
            for image in sorted(self._images.values(), key=lambda i: i.last_used):
                if self.used_bytes() <= self.budget_bytes:
                    break
                if image.owned and image.present and image.holds == 0 and image.name not in self._making:
                    await self._evict(image)
        async with self._room:
            self._room.notify_all()

    async def _evict(self, image: _Image) -> None:
        try:
            await self._client.images.delete(image.name, force=False, noprune=False)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                image.present = False
                return
            # In use by a container (another job's, or a kept one): it stays, and is tried again later.
            logger.info("image %s not evicted: %s", image.name, exc.message)
            return
        image.present = False
        self.stats.evicted += 1
        self.stats.evicted_mb += image.own_bytes / 1e6
        logger.info("evicted image %s (%.1f MB; %.1f of %.1f MB in use)", image.name, image.own_bytes / 1e6,
                    self.used_bytes() / 1e6, (self.budget_bytes or 0) / 1e6)

    # ------------------------------------------------------------------ pulls and builds

    async def _pull(self, reference: str, log_path: Path, *, what: str) -> None:
        """Pull under the job's pull limit and timeout, retrying network and registry failures with backoff."""
        log = _Log(log_path)
        for attempt in range(1, PULL_ATTEMPTS + 1):
            try:
                async with self._pulls:
                    async with asyncio.timeout(self._pull_timeout):
                        await self._pull_once(reference, log)
                log.write(f"pulled {reference}\n")
                return
            except TimeoutError:
                problem = f"the pull outlived its timeout of {self._pull_timeout:g} s"
            except aiodocker.DockerError as exc:
                if exc.status == 900:
                    raise DockerUnavailableError(f"the Docker engine stopped answering while pulling {reference}") from None
                problem = exc.message.strip()
                if exc.status == 404 or any(sign in problem.lower() for sign in _NOT_FOUND) and not _is_network(problem):
                    log.write(f"ERROR: {what} {reference} does not exist: {problem}\n")
                    raise EnvironmentBuildError(f"{what} {reference} does not exist or is not accessible: {problem}") from None
            except (aiohttp.ClientError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == PULL_ATTEMPTS:
                log.write(f"ERROR: pulling {reference} failed {attempt} times: {problem}\n")
                raise ImagePullError(f"pulling {what} {reference} failed {attempt} times; last: {problem}")
            delay = PULL_BACKOFF_SEC * 2 ** (attempt - 1)
            log.write(f"pulling {reference} failed (attempt {attempt} of {PULL_ATTEMPTS}): {problem}; retrying in {delay:g} s\n")
            logger.warning("pulling %s failed (attempt %d of %d): %s", reference, attempt, PULL_ATTEMPTS, problem)
            await asyncio.sleep(delay)

    async def _pull_once(self, reference: str, log: _Log) -> None:
        # Present already (another job, or the registry came back while we waited): nothing to fetch.
        if await self._inspect(reference) is not None:
            return
        last_report = 0.0
        async for event in self._client.images.pull(reference, stream=True, timeout=None):
            if time.monotonic() - last_report >= 5.0 or "Digest" in event.get("status", ""):
                last_report = time.monotonic()
                detail = event.get("progress") or ""
                log.write(f"pull {reference}: {event.get('id', '')} {event.get('status', '')} {detail}\n")

    async def _build(self, task: Task, tag: str, *, timeout_sec: float | None, log_path: Path) -> None:
        dockerfile = await asyncio.to_thread(_dockerfile, task.environment_dir)
        features = dockerfile_features(dockerfile)
        params = {
            "t": tag,
            "labels": json.dumps({"evalkit.task": task.name, "evalkit.built-by": self._job_name, LABEL_BUILT_BY_JOB_ID: self._job_id}),
        }
        log = _Log(log_path)
        lines: list[str] = []

        def output(line: str) -> None:
            log.write(line)
            lines.append(line)
            del lines[:-20]

        try:
            async with asyncio.timeout(timeout_sec):
                error = await build_image(self._client, tar_stream(task.environment_dir), params, output, buildkit=self.buildkit)
        except TimeoutError:
            error = f"image build outlived its timeout of {timeout_sec:.0f} s"
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise DockerUnavailableError(f"the Docker engine stopped answering while building {task.name} ({type(exc).__name__})") from None
        finally:
            await asyncio.to_thread(log.flush)
        if error is None:
            return
        if _is_network(error) and not any("syntax=" in f for f in features):
            raise ImagePullError(f"building {task.name} failed fetching an image: {error}")
        tail = "\n".join("".join(lines).strip().splitlines()[-5:])
        builder = f"BuildKit of Docker {self._engine}" if self.buildkit else f"the classic builder of Docker {self._engine} (no BuildKit)"
        hint = ""
        if features and not error.startswith("image build outlived"):
            hint = f"\nthis Dockerfile uses {'; '.join(features)}; the engine's builder ({builder}) may not support it"
        raise EnvironmentBuildError(f"building {task.name} failed: {error}{hint}" + (f"\n{tail}" if tail else ""))


class _Log:
    """A build log, appended in the thread pool in batches (never on the loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pending: list[str] = []
        self._writing = threading.Lock()
        """Flushes run one at a time, so the last one (awaited when the build ends) returns only once every
        line is in the file (a node sends the file away right after)."""

    def write(self, text: str) -> None:
        self._pending.append(text)
        if len(self._pending) >= 64 or text.startswith(("ERROR", "pull")):
            self.flush_soon()

    def flush_soon(self) -> None:
        try:
            asyncio.get_running_loop().run_in_executor(None, self.flush)
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        with self._writing:
            pending, self._pending = self._pending, []
            if pending and str(self.path) != os.devnull:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:
                    f.write("".join(pending))


def _dockerfile(context: Path) -> str:
    try:
        return (context / "Dockerfile").read_text(errors="replace")
    except OSError:
        return ""


def _hash_and_dockerfile(context: Path) -> tuple[str, str]:
    return context_hash(context), _dockerfile(context)


def _is_network(message: str) -> bool:
    lowered = message.lower()
    return any(sign in lowered for sign in _NETWORK)


def _is_task_error(exc: BaseException | None) -> bool:
    return isinstance(exc, EnvironmentBuildError)


async def build_image(
    client: aiodocker.Docker,
    context: bytes | AsyncIterator[bytes],
    params: dict[str, str],
    on_output: Callable[[str], None],
    *,
    buildkit: bool = False,
) -> str | None:
    """Build an image from a tar context through the Engine API (BuildKit with `buildkit`, else the classic
    builder; host networking for `RUN` steps), passing each line of build output to `on_output` as it
    arrives; returns the build's error message, or None when it succeeded. `params` are `/build` query
    parameters (`t`, `labels`, ...)."""
    query = {
        "rm": "1",
        "forcerm": "1",  # a failed step must not leave its container behind
        "networkmode": "host",  # RUN steps that fetch packages; there is no bridge here
        **({"version": "2"} if buildkit else {}),
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
                elif event.get("id") == "moby.buildkit.trace":
                    on_output(_buildkit_lines(event.get("aux", "")))
                if "error" in event:
                    error = event["error"].strip()
                    on_output(f"ERROR: {error}\n")
                    return error
    except aiodocker.DockerError as exc:
        if exc.status == 900:
            raise
        return exc.message
    return None


_PRINTABLE = re.compile(rb"[\x20-\x7e\t]{6,}")


def _buildkit_lines(aux: str) -> str:
    """BuildKit's progress is base64 protobuf; the readable strings in it (step names, logs) are enough
    for a build log without a protobuf dependency."""
    import base64

    try:
        raw = base64.b64decode(aux)
    except ValueError:
        return ""
    return "".join(m.decode("ascii", "replace") + "\n" for m in _PRINTABLE.findall(raw))
