"""The on-disk cache of git tasks, shared by concurrent jobs.

Layout under the cache root:

    repos/<key>.git                     bare blobless repository of one git_url (git.py)
    repos/<key>.lock                    flock held while that repository is fetched into or checked out from
    checkouts/<key>/<commit>/<h>/<dir>  one task directory per (url, full commit, path); immutable once there
    tmp/<key>/                          the lock holder's work in progress; anything left there is from a crash

A checkout is written in `tmp/` and renamed into place, so a task directory that exists is complete.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from evalkit.adapters.harbor.config import TaskSpec
from evalkit.adapters.harbor.git import FULL_SHA, SHORT_SHA, BareRepo, GitError
from evalkit.adapters.harbor.local import outward_symlink
from evalkit.errors import ConfigError, InfrastructureError

log = logging.getLogger(__name__)
T = TypeVar("T")

FetchPlan = dict[str, dict[str, dict[str, list[str]]]]
"""{git_url: {commit as written: {path in the repository: [task names]}}}"""


@dataclass(frozen=True)
class Checkout:
    commit: str
    """The full commit the task was taken from."""
    path: Path
    """The task directory in the cache."""


def repo_path(spec: TaskSpec) -> str:
    """The task's directory inside its repository, normalised; absolute or escaping paths are refused."""
    parts = [part for part in spec.path.split("/") if part not in ("", ".")]  # as PurePosixPath, 5x faster
    problem = (
        "is absolute" if spec.path.startswith("/")
        else "escapes the repository checkout" if ".." in parts
        else "contains a line break" if "\n" in spec.path
        else None
    )
    if problem:
        raise ConfigError(f"task {spec.task_name!r}: path {spec.path!r} in repository {spec.git_url} {problem}; refused")
    return "/".join(parts) or "."


def fetch_plan(specs: list[TaskSpec]) -> FetchPlan:
    """Group git tasks by repository, commit and path: each group is fetched and checked out once."""
    plan: FetchPlan = {}
    for spec in specs:
        assert spec.git_url is not None and spec.commit is not None
        paths = plan.setdefault(spec.git_url, {}).setdefault(spec.commit, {})
        paths.setdefault(repo_path(spec), []).append(spec.task_name)
    return plan


def describe(names: list[str]) -> str:
    """`task 'a'` or `tasks 'a', 'b', 'c' and 4 more`, for messages."""
    if len(names) == 1:
        return f"task {names[0]!r}"
    shown = ", ".join(repr(name) for name in names[:3])
    return f"tasks {shown}{f' and {len(names) - 3} more' if len(names) > 3 else ''}"


def repo_key(url: str) -> str:
    """A readable, collision-free directory name for a git_url."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", "-".join(url.rstrip("/").split("/")[-2:])).removesuffix(".git")
    return f"{tail.strip('-.')[:60]}-{hashlib.sha256(url.encode()).hexdigest()[:10]}"


class GitTaskCache:
    def __init__(self, root: Path, *, max_concurrent: int = 4) -> None:
        self.root = root
        self._slots = asyncio.Semaphore(max_concurrent)

    def checkout_dir(self, url: str, commit: str, path: str) -> Path:
        digest = hashlib.sha256(path.encode()).hexdigest()[:12]
        return self.root / "checkouts" / repo_key(url) / commit / digest / (PurePosixPath(path).name or "root")

    async def fetch(self, specs: list[TaskSpec]) -> list[Checkout]:
        """Check out every git task (in order); repositories are fetched concurrently, a few at a time."""
        plan = fetch_plan(specs)  # validates every path before any network
        results = await _concurrently(self._fetch_repo(url, commits) for url, commits in plan.items())
        resolved = dict(zip(plan, results))  # {url: {commit as written: full commit}}
        checkouts = []
        for spec in specs:
            assert spec.git_url is not None and spec.commit is not None
            commit = resolved[spec.git_url][spec.commit]
            checkouts.append(Checkout(commit, self.checkout_dir(spec.git_url, commit, repo_path(spec))))
        return checkouts

    async def _fetch_repo(self, url: str, commits: dict[str, dict[str, list[str]]]) -> dict[str, str]:
        """Resolve and check out one repository's tasks; returns {commit as written: full commit}."""
        async with self._slots:
            if all(FULL_SHA.fullmatch(c) and self.checkout_dir(url, c, p).is_dir() for c in commits for p in commits[c]):
                return {c: c for c in commits}  # all pinned and present: no lock, no git
            key = repo_key(url)
            async with _locked(self.root / "repos" / f"{key}.lock"):
                staging = self.root / "tmp" / key
                await asyncio.to_thread(shutil.rmtree, staging, True)  # left by a crashed holder
                staging.mkdir(parents=True)
                try:
                    repo = BareRepo(self.root / "repos" / f"{key}.git", url)
                    if not repo.exists():
                        await repo.create(staging / "repo.git")
                    resolved = await self._resolve(repo, commits)
                    by_commit: dict[str, dict[str, list[str]]] = {}
                    for cid, paths in commits.items():  # `HEAD` and a SHA may name one commit
                        for path, names in paths.items():
                            by_commit.setdefault(resolved[cid], {}).setdefault(path, []).extend(names)
                    for commit, paths in by_commit.items():
                        await self._check_out(repo, commit, paths, staging)
                    return resolved
                finally:
                    await asyncio.to_thread(shutil.rmtree, staging, True)

    async def _resolve(self, repo: BareRepo, commits: dict[str, dict[str, list[str]]]) -> dict[str, str]:
        """Full SHAs for the commits as written: full SHAs as they are, short SHAs from the cache if it has
        them, the rest (`HEAD`, branches, unknown short SHAs) from the remote."""
        resolved: dict[str, str] = {}
        remote = []
        for cid in commits:
            if FULL_SHA.fullmatch(cid):
                resolved[cid] = cid
            elif SHORT_SHA.fullmatch(cid) and (sha := await repo.local_commit(cid)):
                resolved[cid] = sha
            else:
                remote.append(cid)
        if not remote:
            return resolved
        try:
            refs = await repo.remote_refs()
        except GitError as exc:
            return resolved | await self._resolve_offline(repo, {cid: commits[cid] for cid in remote}, exc)
        for cid in remote:
            sha = _match_ref(refs, cid)
            if sha is None and SHORT_SHA.fullmatch(cid):  # not a ref's tip: look in the history
                await self._fetch_refs(repo, _names(commits[cid]))
                sha = await repo.local_commit(cid)
            if sha is None:
                raise ConfigError(_missing_commit(repo.url, cid, commits[cid]))
            if not SHORT_SHA.fullmatch(cid):  # a moving ref: keep where it points for offline runs
                await self._ensure_commit(repo, sha, commits[cid])
                await repo.remember(cid, sha)
            resolved[cid] = sha
        return resolved

    async def _resolve_offline(self, repo: BareRepo, commits: dict[str, dict[str, list[str]]],
                               exc: GitError) -> dict[str, str]:
        """Unreachable remote: a moving ref keeps the commit it had when last resolved here."""
        resolved = {}
        for cid, paths in commits.items():
            sha = None if SHORT_SHA.fullmatch(cid) else await repo.remembered(cid)
            if sha is None:
                raise InfrastructureError(
                    f"cannot reach repository {repo.url} to resolve commit {cid!r} "
                    f"(needed by {describe(_names(paths))}): {exc.detail}"
                )
            log.warning("cannot reach %s (%s); using %s = %s as last resolved", repo.url, exc.detail, cid, sha)
            resolved[cid] = sha
        return resolved

    async def _check_out(self, repo: BareRepo, commit: str, paths: dict[str, list[str]], staging: Path) -> None:
        todo = [path for path in paths if not self.checkout_dir(repo.url, commit, path).is_dir()]
        if not todo:
            return
        await self._ensure_commit(repo, commit, paths)
        lookups = await repo.lookup(commit, todo)
        problems = [
            f"{describe(paths[path])}: path {path!r} in commit {commit} of repository {repo.url} "
            f"{lookups[path].problem}"
            for path in todo if lookups[path].problem
        ]
        if problems:
            raise ConfigError("\n".join(problems))
        trees = [lookups[path].tree for path in todo]
        try:
            await repo.prefetch(trees)
        except GitError:  # a server that refuses unadvertised objects: take whole branches instead
            await self._fetch_refs(repo, _names(paths), blobs=True)
        work = Path(tempfile.mkdtemp(dir=staging))
        try:
            await repo.check_out(trees, work / "trees", work / "index")
            await asyncio.to_thread(self._move_into_place, repo.url, commit, work / "trees", todo, paths)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    def _move_into_place(self, url: str, commit: str, checked_out: Path, todo: list[str],
                         paths: dict[str, list[str]]) -> None:
        """Check every task directory, then rename it into the cache: a task directory there is complete."""
        for i, path in enumerate(todo):
            task_dir = checked_out / str(i)
            task_dir.mkdir(exist_ok=True)  # a tree without files checks out as nothing
            _refuse_outward_symlinks(task_dir, paths[path])
        for i, path in enumerate(todo):
            dest = self.checkout_dir(url, commit, path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(checked_out / str(i), dest)

    async def _ensure_commit(self, repo: BareRepo, commit: str, paths: dict[str, list[str]]) -> None:
        if await repo.has_commit(commit):
            return
        try:
            await repo.fetch_commit(commit)
        except GitError:  # the server may refuse an unadvertised SHA: look in its branches and tags
            await self._fetch_refs(repo, _names(paths))
            if not await repo.has_commit(commit):
                raise ConfigError(_missing_commit(repo.url, commit, paths)) from None

    @staticmethod
    async def _fetch_refs(repo: BareRepo, names: list[str], *, blobs: bool = False) -> None:
        try:
            await repo.fetch_refs(blobs=blobs)
        except GitError as exc:
            raise InfrastructureError(
                f"cannot fetch from repository {repo.url} (needed by {describe(names)}): {exc.detail}"
            ) from None


async def _concurrently(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run together; the first failure cancels the others and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coro) for coro in coros]
    except ExceptionGroup as errors:
        raise errors.exceptions[0] from None
    return [task.result() for task in tasks]


def _match_ref(refs: dict[str, str], cid: str) -> str | None:
    if SHORT_SHA.fullmatch(cid):
        hits = {sha for sha in refs.values() if sha.startswith(cid)}
        return hits.pop() if len(hits) == 1 else None
    return next((refs[ref] for ref in (cid, f"refs/heads/{cid}", f"refs/tags/{cid}") if ref in refs), None)


def _names(paths: dict[str, list[str]]) -> list[str]:
    return [name for names in paths.values() for name in names]


def _missing_commit(url: str, cid: str, paths: dict[str, list[str]]) -> str:
    return f"commit {cid!r} not found in repository {url} (needed by {describe(_names(paths))})"


def _refuse_outward_symlinks(task_dir: Path, names: list[str]) -> None:
    if (problem := outward_symlink(task_dir)) is not None:
        raise ConfigError(f"{describe(names)}: {problem}; refused")


@asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on `path`, so jobs in other processes wait; the wait happens in a thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(waiting)
        except BaseException:
            # the thread cannot be interrupted: close the descriptor, releasing the lock, once it returns
            waiting.add_done_callback(lambda _: os.close(fd))
            raise
    try:
        yield
    finally:
        os.close(fd)
