"""The aiohttp application behind `evalkit view`: a JSON API over one artifacts directory and the browser UI.

It reads files only and executes nothing. Every response carries a Content-Security-Policy that allows
scripts and styles from this origin only (no inline script), so even a string that slipped past the UI's
text-only rendering could not run. Requests are GET/HEAD only; on a loopback address the Host header must be
a loopback name (a page on another site cannot reach the dashboard by DNS rebinding). File work runs in
worker threads; live updates are a bounded number of server-sent-event streams that poll a job's files.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from evalkit.analysis.compare import compare_jobs
from evalkit.analysis.reader import summarize_trajectory
from evalkit.dashboard import trajectory as traj
from evalkit.dashboard import training
from evalkit.dashboard.index import Catalog, JobIndex
from evalkit.dashboard.paths import Refused, split, under
from evalkit.dashboard.trials import trajectory_path, trial_detail
from evalkit.errors import ConfigError

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".md": "text/plain"}
MAX_STREAMS = 32
"""Live-update streams open at once; more are answered 503 (the page falls back to its refresh button)."""
STREAM_SECONDS = 300.0
"""A live-update stream ends after this long; the browser's EventSource reconnects by itself."""
POLL_SECONDS = 1.0
MAX_SEARCHES = 2
"""Regex searches running at once (each is bounded in time by trajectory.SEARCH_SECONDS)."""
CHUNK = 1 << 20
CACHE_ENTRIES = 64

T = TypeVar("T")


@dataclass
class State:
    """Everything one dashboard holds: per application, never process-wide."""

    artifacts: Path
    catalog: Catalog
    bind_host: str
    """The address the server listens on; on a loopback one, only loopback Host names are answered."""
    searches: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_SEARCHES))
    streams: int = 0
    cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    """Trajectory stats and comparisons, keyed by what they were computed from (mtimes included)."""

    def remember(self, key: tuple[Any, ...], value: T) -> T:
        if len(self.cache) >= CACHE_ENTRIES:
            self.cache.pop(next(iter(self.cache)))
        self.cache[key] = value
        return value


STATE = web.AppKey("dashboard", State)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status, content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    return _json({"error": message}, status)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _host_name(host: str) -> str:
    """`[::1]:8765` → `[::1]`, `localhost:8765` → `localhost`."""
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0]


@web.middleware
async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Security headers on every answer; GET/HEAD only; loopback Host names on a loopback bind; typed errors as JSON."""
    bound = request.app[STATE].bind_host
    try:
        if request.method not in ("GET", "HEAD"):
            response: web.StreamResponse = _error("method not allowed: the dashboard is read-only", 405)
        elif _loopback(bound) and not _loopback(_host_name(request.host)):
            response = _error(f"host not allowed: {request.host}", 421)
        else:
            response = await handler(request)
    except Refused as exc:
        response = _error(str(exc), exc.status)
    except ConfigError as exc:
        response = _error(str(exc), 422)
    except web.HTTPException as exc:
        response = _error(exc.reason, exc.status)
    if not response.prepared:
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def _state(request: web.Request) -> State:
    return request.app[STATE]


def _int(request: web.Request, name: str, default: int, low: int = 0, high: int = 10**9) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Refused(f"{name}: expected an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise Refused(f"{name}: must be between {low} and {high}, got {value}")
    return value


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise Refused(f"{name}: missing query parameter")
    return value


async def _job(request: web.Request, name: str | None = None) -> JobIndex:
    return await asyncio.to_thread(_state(request).catalog.job, name or request.match_info["job"])


# ------------------------------------------------------------------------------------------ pages & files


async def index_page(request: web.Request) -> web.StreamResponse:
    return await _send_static(request, "index.html")


async def static_file(request: web.Request) -> web.StreamResponse:
    return await _send_static(request, request.match_info["path"])


async def _send_static(request: web.Request, rel: str) -> web.Response:
    """A file of the UI, revalidated by ETag (a reload costs a 304 per file, and an upgrade is seen at once)."""
    path = under(STATIC, *split(rel))
    body = await asyncio.to_thread(path.read_bytes)
    etag = f'"{hashlib.blake2b(body, digest_size=12).hexdigest()}"'
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    kind = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
    return web.Response(body=body, content_type=kind, charset="utf-8" if kind.startswith("text/") else None,
                        headers=headers)


async def artifact_file(request: web.Request) -> web.StreamResponse:
    """A file under the artifacts directory, as plain text (never as HTML), streamed."""
    state = _state(request)
    path = under(state.artifacts, *split(request.match_info["path"]))
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("path refused: not a regular file", 403)
        response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/plain; charset=utf-8",
                                               "Content-Length": str(st.st_size), "Cache-Control": "no-store"})
        await response.prepare(request)
        if request.method == "GET":
            while chunk := await asyncio.to_thread(os.read, fd, CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------------- API


async def jobs(request: web.Request) -> web.Response:
    return _json(await asyncio.to_thread(_state(request).catalog.jobs_list))


async def job(request: web.Request) -> web.Response:
    index = await _job(request)
    return _json(await asyncio.to_thread(index.detail))


async def job_events(request: web.Request) -> web.StreamResponse:
    """Server-sent `change` events whenever the job's index changes; ends when the job stops running or after
    STREAM_SECONDS (the browser reconnects by itself)."""
    state = _state(request)
    index = await _job(request)
    if state.streams >= MAX_STREAMS:
        return _error("too many live-update streams; refresh by hand", 503)
    state.streams += 1
    try:
        response = web.StreamResponse(headers={**SECURITY_HEADERS, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store"})
        await response.prepare(request)
        await response.write(b"retry: 2000\n\n")
        last = index.version
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_SECONDS
        while loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            await asyncio.to_thread(index.refresh)
            if index.version != last:
                last = index.version
                await response.write(b"event: change\ndata: " + orjson.dumps({"running": index.running}) + b"\n\n")
                if not index.running:
                    break
            else:
                await response.write(b": idle\n\n")
        return response
    except ConnectionResetError:
        return response
    finally:
        state.streams -= 1


async def trial(request: web.Request) -> web.Response:
    index = await _job(request)
    return _json(await asyncio.to_thread(trial_detail, index, request.match_info["try"]))


async def trial_trajectory(request: web.Request) -> web.Response:
    index = await _job(request)
    offset, limit = _int(request, "offset", 0), _int(request, "limit", 50, 1, traj.MAX_PAGE)
    path = await asyncio.to_thread(trajectory_path, index, request.match_info["try"])
    if path is None:
        return _json({"offset": offset, "limit": limit, "calls": [], "has_more": False, "problems": ["no trajectory"]})
    return _json(await asyncio.to_thread(traj.page, path, offset, limit))


async def trial_stats(request: web.Request) -> web.Response:
    """The trajectory's totals (a full pass over the file, so cached by the file's mtime and size)."""
    state = _state(request)
    index = await _job(request)
    path = await asyncio.to_thread(trajectory_path, index, request.match_info["try"])
    if path is None:
        return _json(None)
    st = await asyncio.to_thread(os.lstat, path)
    key = ("stats", str(path), st.st_mtime_ns, st.st_size)
    if key not in state.cache:
        def build() -> dict[str, Any]:
            problems: list[str] = []
            stats = summarize_trajectory(path, problems)
            return {**vars(stats), "duration_sec": stats.duration_sec, "problems": problems[:20]} if stats else {}
        state.remember(key, await asyncio.to_thread(build))
    return _json(state.cache[key])


async def job_search(request: web.Request) -> web.Response:
    index = await _job(request)
    rx = traj.compile_pattern(request.query.get("q", ""), request.query.get("case") != "1")
    only = request.query.get("try")

    def targets() -> list[tuple[str, Path]]:
        out = []
        for info in sorted(index.tries(), key=lambda i: i.record.dir.name):
            name = info.record.dir.name
            if only and name != only:
                continue
            try:
                path = trajectory_path(index, name)
            except Refused:
                continue
            if path is not None:
                out.append((name, path))
        return out

    state = _state(request)
    async with state.searches:
        found = await asyncio.to_thread(lambda: traj.search(targets(), rx))
    return _json(found)


async def compare(request: web.Request) -> web.Response:
    state = _state(request)
    a, b = await _job(request, _required(request, "a")), await _job(request, _required(request, "b"))
    k = _int(request, "k", 1, 1, 1000)
    n_boot = _int(request, "bootstrap", 10_000, 100, 100_000)
    key = ("compare", a.job_dir.name, a.version, b.job_dir.name, b.version, k, n_boot)
    if key not in state.cache:
        result = await asyncio.to_thread(compare_jobs, a.job_dir, b.job_dir, k=k, n_bootstrap=n_boot)
        state.remember(key, result.model_dump() | {"a": a.job_dir.name, "b": b.job_dir.name})
    return _json(state.cache[key])


async def compare_trajectories(request: web.Request) -> web.Response:
    a, b = await _job(request, _required(request, "a")), await _job(request, _required(request, "b"))
    task, attempt = _required(request, "task"), _int(request, "attempt", 0)
    offset, limit = _int(request, "offset", 0), _int(request, "limit", 50, 1, traj.MAX_PAGE)

    def build() -> dict[str, Any]:
        paths, tries = [], []
        for index in (a, b):
            final = next((t for t in index.finals() if t.task == task and t.attempt == attempt), None)
            tries.append(final.dir.name if final else None)
            paths.append(trajectory_path(index, final.dir.name) if final else None)
        return traj.aligned(paths[0], paths[1], offset, limit) | {"task": task, "attempt": attempt,
                                                                   "a_try": tries[0], "b_try": tries[1]}

    return _json(await asyncio.to_thread(build))


async def training_runs(request: web.Request) -> web.Response:
    return _json(await asyncio.to_thread(training.runs, _state(request).artifacts))


async def training_run(request: web.Request) -> web.Response:
    return _json(await asyncio.to_thread(training.run, _state(request).artifacts, request.match_info["run"]))


async def not_found(request: web.Request) -> web.Response:
    return _error(f"not found: {request.path[:200]}", 404)


async def _warm(app: web.Application):
    """Index every job once at start-up, in a worker thread, so the first page a person opens is fast."""
    task = asyncio.create_task(asyncio.to_thread(app[STATE].catalog.jobs_list))
    yield
    task.cancel()  # the thread finishes its job on its own; nothing waits for it
    await asyncio.gather(task, return_exceptions=True)


def create_app(artifacts: Path, *, bind_host: str = "127.0.0.1") -> web.Application:
    """The dashboard over `artifacts` (which need not exist yet: the pages then say there is nothing)."""
    app = web.Application(middlewares=[guard])
    app[STATE] = State(artifacts=Path(artifacts), catalog=Catalog(Path(artifacts)), bind_host=bind_host)
    app.cleanup_ctx.append(_warm)
    get = app.router.add_get
    get("/", index_page)
    get("/static/{path:.+}", static_file)
    get("/files/{path:.*}", artifact_file)
    get("/api/jobs", jobs)
    get("/api/jobs/{job}", job)
    get("/api/jobs/{job}/events", job_events)
    get("/api/jobs/{job}/search", job_search)
    get("/api/jobs/{job}/trials/{try}", trial)
    get("/api/jobs/{job}/trials/{try}/trajectory", trial_trajectory)
    get("/api/jobs/{job}/trials/{try}/stats", trial_stats)
    get("/api/compare", compare)
    get("/api/compare/trajectories", compare_trajectories)
    get("/api/training", training_runs)
    get("/api/training/{run}", training_run)
    get("/{tail:.*}", not_found)
    return app


async def serve(artifacts: Path, host: str = "127.0.0.1", port: int = 8765, *,
                started: Callable[[str], None] | None = None) -> None:
    """Serve until cancelled; `started(url)` is called once the socket listens."""
    from evalkit.cleanup import uncancellable

    runner = web.AppRunner(create_app(artifacts, bind_host=host), handler_cancellation=True, access_log=None,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        url = f"http://{f'[{bound[0]}]' if ':' in bound[0] else bound[0]}:{bound[1]}/"
        if started:
            started(url)
        await asyncio.Event().wait()
    finally:
        await uncancellable(runner.cleanup())
