"""Git plumbing for the task cache: one bare, blobless, mostly shallow repository per remote.

Only what a job needs crosses the network: commits are fetched one by one at depth 1 without blobs, and
the blobs of the task directories in use are fetched in one batch per commit. Local queries never trigger
git's lazy fetching, so a warm cache works offline.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import InfrastructureError

GIT_TIMEOUT_SEC = 900.0
"""Per git command: generous, since a first fetch of a large dataset's blobs takes minutes on a slow link."""

FULL_SHA = re.compile(r"[0-9a-f]{40}")
SHORT_SHA = re.compile(r"[0-9a-f]{4,39}")

_REPO_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
             "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE")  # an outer repository's, never ours


class GitError(Exception):
    """A git command failed; the caller knows what that means for the job and says it."""

    def __init__(self, args: tuple[str, ...], returncode: int, stderr: str) -> None:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]  # git's advice follows them
        self.detail = (fatal or lines or [f"exit status {returncode}"])[0]
        super().__init__(f"git {' '.join(args[:2])}: {self.detail}")


async def git(*args: str, git_dir: Path | None = None, stdin: str | None = None,
              env: dict[str, str] | None = None) -> str:
    """Run git without a terminal prompt; kill it on timeout or cancellation."""
    command = ["git", *(["--git-dir", str(git_dir)] if git_dir else []), *args]
    full_env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    full_env.update(GIT_TERMINAL_PROMPT="0", GCM_INTERACTIVE="never", LC_ALL="C", **(env or {}))
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=full_env,
        )
    except FileNotFoundError:
        raise InfrastructureError("tasks from git repositories need the `git` command, which is not installed") from None
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), GIT_TIMEOUT_SEC
        )
    except TimeoutError:
        raise InfrastructureError(f"`git {' '.join(args[:2])}` did not finish within {GIT_TIMEOUT_SEC:.0f} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode:
        raise GitError(args, proc.returncode, err.decode(errors="replace"))
    return out.decode(errors="surrogateescape")


@dataclass(frozen=True)
class PathLookup:
    """A task path looked up in a commit: its tree, or why there is none."""

    tree: str = ""
    problem: str = ""


class BareRepo:
    """The cache repository of one remote (`origin`). Callers hold the cache's lock while fetching."""

    def __init__(self, git_dir: Path, url: str) -> None:
        self.git_dir = git_dir
        self.url = url

    def exists(self) -> bool:
        return (self.git_dir / "config").is_file()

    async def create(self, staging: Path) -> None:
        """Initialise in `staging`, then rename into place, so a crash never leaves a repository without
        its remote."""
        await git("init", "--bare", "--quiet", str(staging))
        for key, value in (("remote.origin.url", self.url), ("gc.auto", "0"), ("maintenance.auto", "false")):
            await git("config", key, value, git_dir=staging)  # no auto-gc: other jobs read while we fetch
        self.git_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, self.git_dir)

    async def _git(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
        return await git(*args, git_dir=self.git_dir, stdin=stdin, env=env)

    # ------------------------------------------------------------------------------------- local only

    async def has_commit(self, sha: str) -> bool:
        # rev-list --missing disables lazy fetching (cat-file -e would ask the remote)
        try:
            await self._git("rev-list", "--missing=print", "--no-walk", sha)
        except GitError:
            return False
        return True

    async def local_commit(self, rev: str) -> str | None:
        """The full SHA of a commit the cache has (`rev`: a short SHA or a ref), or None: absent or ambiguous."""
        try:
            return (await self._git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")).strip()
        except GitError:
            return None

    async def remembered(self, name: str) -> str | None:
        """The commit a moving ref (`HEAD`, a branch) pointed to when last resolved online."""
        return await self.local_commit(f"refs/evalkit/{name}")

    async def remember(self, name: str, sha: str) -> None:
        await self._git("update-ref", f"refs/evalkit/{name}", sha)

    async def lookup(self, commit: str, paths: list[str]) -> dict[str, PathLookup]:
        """Resolve `commit:path` for each path in one process, following symlinks inside the repository."""
        query = "".join(f"{commit}:{'' if path == '.' else path}\n" for path in paths)
        lines = iter((await self._git("cat-file", "--batch-check", "--follow-symlinks", stdin=query)).splitlines())
        found = {}
        for path in paths:
            head = next(lines)
            kind = head.split(" ")[0]
            if kind in ("symlink", "dangling", "loop", "notdir"):
                target = next(lines)  # these answers carry a second line
                found[path] = PathLookup(problem=(
                    f"is a symlink out of the repository checkout (to {target!r}); refused" if kind == "symlink"
                    else "does not exist"
                ))
            elif head.endswith(" missing"):
                found[path] = PathLookup(problem="does not exist")
            elif head.split(" ")[1] != "tree":
                found[path] = PathLookup(problem="is not a directory")
            else:
                found[path] = PathLookup(tree=kind)
        return found

    async def check_out(self, trees: list[str], work_tree: Path, index_file: Path) -> None:
        """Write each tree's files into `work_tree/<its index in trees>/` with two git processes in all: a
        synthetic tree holding the trees as subdirectories, then one checkout of it. Blobs must be local
        (see `prefetch`)."""
        listing = "".join(f"040000 tree {tree}\t{i}\n" for i, tree in enumerate(trees))
        combined = (await self._git("mktree", "--missing", stdin=listing)).strip()
        work_tree.mkdir(parents=True, exist_ok=True)
        await self._git(f"--work-tree={work_tree}", "read-tree", "--reset", "-u", combined,
                        env={"GIT_INDEX_FILE": str(index_file)})

    # -------------------------------------------------------------------------------------- network

    async def remote_refs(self) -> dict[str, str]:
        """`{ref: sha}` as the remote advertises it, annotated tags peeled."""
        refs = {}
        for line in (await self._git("ls-remote", "origin")).splitlines():
            sha, _, ref = line.partition("\t")
            refs[ref.removesuffix("^{}")] = sha  # the peeled line follows the tag's own
        return refs

    async def fetch_commit(self, sha: str) -> None:
        await self._git("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--filter=blob:none",
                        "--depth=1", "origin", sha)

    async def fetch_refs(self, *, blobs: bool = False) -> None:
        """All branches and tags with their history: for servers that refuse a SHA they do not advertise,
        and for short SHAs that are no ref's tip. Without blobs, unless the server refuses to send blobs
        one by one too."""
        shallow = ["--unshallow"] if (self.git_dir / "shallow").exists() else []
        what = ["--refetch", "--no-filter"] if blobs else ["--filter=blob:none"]
        await self._git("fetch", "--quiet", *shallow, *what, "--no-write-fetch-head", "origin",
                        "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")

    async def prefetch(self, trees: list[str]) -> None:
        """Fetch the missing blobs under `trees` in one request, instead of one lazy fetch per file."""
        listing = await self._git("rev-list", "--objects", "--missing=print", "--stdin", stdin="\n".join(trees) + "\n")
        missing = [line[1:] for line in listing.splitlines() if line.startswith("?")]
        if missing:
            await self._git("-c", "fetch.negotiationAlgorithm=noop", "fetch", "--quiet", "--no-tags",
                            "--no-write-fetch-head", "--recurse-submodules=no", "--filter=blob:none",
                            "--stdin", "origin", stdin="\n".join(missing) + "\n")
