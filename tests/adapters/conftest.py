"""Local git remotes (file:// URLs, several commits), registries pointing at them, and a real count of
git network operations."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from evalkit.adapters.harbor import DatasetConfig, TaskRef, resolve_tasks

def _real_registry() -> Path:
    """Harbor's real registry from `shared/` beside the checkout (CI) or beside a worktree's parent."""
    for parent in Path(__file__).resolve().parents[2:5]:
        candidate = parent.parent / "shared" / "data" / "harbor-registry.json"
        if candidate.exists():
            return candidate
    raise RuntimeError("shared/data/harbor-registry.json not found beside the checkout; CI clones main next to ../shared")


REAL_REGISTRY = _real_registry()


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def task_files(name: str, marker: str) -> dict[str, str]:
    """A Harbor task whose files all carry `marker`, so a test can tell which commit it came from."""
    return {
        f"{name}/task.toml": f'# {marker}\n[verifier]\ntimeout_sec = 60\n',
        f"{name}/instruction.md": f"{marker}\n",
        f"{name}/environment/Dockerfile": "FROM debian:bookworm-slim\n",
        f"{name}/tests/test.sh": f"echo {marker}\n",
        f"{name}/solution/solve.sh": f"echo {marker}\n",
    }


class GitRemote:
    """A bare repository reached through a file:// URL, filled by commits made in a work clone."""

    def __init__(self, root: Path, name: str = "tasks") -> None:
        self.work = root / f"{name}-work"
        self.bare = root / f"{name}.git"
        self.url = self.bare.as_uri()
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        # what GitHub allows too: filtered fetches, and fetching any commit by SHA
        git("config", "uploadpack.allowFilter", "true", cwd=self.bare)
        git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=self.bare)
        git("init", "--quiet", "--initial-branch=main", str(self.work))
        git("config", "user.email", "test@example.com", cwd=self.work)
        git("config", "user.name", "test", cwd=self.work)
        self.commits: list[str] = []

    def commit(self, files: dict[str, str], symlinks: dict[str, str] | None = None) -> str:
        for rel, content in files.items():
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.work / rel).write_text(content)
        for rel, target in (symlinks or {}).items():
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.work / rel).symlink_to(target)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "-m", "change", cwd=self.work)
        git("push", "--quiet", str(self.bare), "main", cwd=self.work)
        self.commits.append(git("rev-parse", "HEAD", cwd=self.work))
        return self.commits[-1]

    def tag(self, name: str, commit: str) -> None:
        git("tag", name, commit, cwd=self.work)
        git("push", "--quiet", str(self.bare), name, cwd=self.work)


@pytest.fixture
def remote(tmp_path: Path) -> GitRemote:
    """commits[0]: a README only; [1]: alpha v1, beta v1; [2]: alpha v2; [3] = HEAD: alpha v3."""
    remote = GitRemote(tmp_path)
    remote.commit({"README.md": "tasks\n"})
    remote.commit({**task_files("tasks/alpha", "alpha-v1"), **task_files("tasks/beta", "beta-v1")})
    remote.commit(task_files("tasks/alpha", "alpha-v2"))
    remote.commit(task_files("tasks/alpha", "alpha-v3"))
    return remote


def write_registry(path: Path, tasks: list[dict], name: str = "gitbench", version: str = "1.0") -> Path:
    path.write_text(json.dumps([{"name": name, "version": version, "description": "test", "tasks": tasks}]))
    return path


def git_task(name: str, remote: GitRemote, commit: str | None, path: str) -> dict:
    return {"name": name, "git_url": remote.url, "git_commit_id": commit, "path": path}


@pytest.fixture
def network_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Git network operations since the last call. Every fetch, ls-remote or lazy blob fetch starts one
    `upload-pack` on the file:// server; git's trace2 (inherited by all git processes) records each."""
    trace = tmp_path / "git-trace2.jsonl"
    monkeypatch.setenv("GIT_TRACE2_EVENT", str(trace))
    seen = 0

    def count() -> int:
        nonlocal seen
        events = [json.loads(line) for line in trace.read_text().splitlines()] if trace.exists() else []
        total = sum(1 for e in events if e["event"] == "cmd_name" and e["name"] == "upload-pack")
        new, seen = total - seen, total
        return new

    return count


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


async def resolve(registry: Path, cache_dir: Path, job_dir: Path | None = None, **config) -> list[TaskRef]:
    dataset = DatasetConfig(registry=str(registry), name=config.pop("name", "gitbench"), cache_dir=str(cache_dir), **config)
    return await resolve_tasks(dataset, base_dir=registry.parent, job_dir=job_dir)


def temp_files(cache_dir: Path) -> list[Path]:
    """Work in progress a finished run must not leave behind."""
    return list((cache_dir / "tmp").glob("**/*"))


def checkouts(cache_dir: Path) -> list[Path]:
    """Task directories in the cache."""
    return list((cache_dir / "checkouts").glob("*/*/*/*"))
