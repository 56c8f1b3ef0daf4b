"""The `dataset:` block of config.yaml: where a job's tasks come from and which of them run."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath

from pydantic import Field, model_validator

from evalkit.strict import StrictModel


class TaskSpec(StrictModel):
    """One task named directly: a local directory, or a directory inside a git repository."""

    path: str
    """The task directory: inside the repository for a git task, else a local path (relative to the config
    file)."""
    git_url: str | None = None
    """Repository that holds the task; unset for a local task."""
    git_commit_id: str | None = None
    """Full or short SHA, `HEAD` or a branch/tag name; unset means `HEAD`. Only for git tasks."""
    name: str | None = None
    """Name in results and filters; default: the last component of `path`."""

    @model_validator(mode="after")
    def _check(self) -> TaskSpec:
        if self.git_commit_id is not None and self.git_url is None:
            raise ValueError(f"task {self.path!r}: `git_commit_id` needs a `git_url`")
        if not self.task_name:
            raise ValueError(f"task {self.path!r}: give it a `name` (its path has no last component)")
        if (problem := task_name_problem(self.task_name)) is not None:
            raise ValueError(f"task name {self.task_name!r} {problem}")
        return self

    @property
    def task_name(self) -> str:
        return self.name or PurePosixPath(self.path).name

    @property
    def commit(self) -> str | None:
        """The commit as written (`HEAD` when unset) for a git task; None for a local one."""
        return (self.git_commit_id or "HEAD") if self.git_url else None


MAX_TASK_NAME_BYTES = 200
"""Try directories are `<name>__<attempt>-try<k>`: that must fit a file name (255 bytes)."""


def task_name_problem(name: str) -> str | None:
    """Why `name` cannot name a task (it becomes a directory name in the job), or None."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name or name == ".":
        return "contains '..' or is '.'"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "contains a control character"
    if len(name.encode()) > MAX_TASK_NAME_BYTES:
        return f"is longer than {MAX_TASK_NAME_BYTES} bytes"
    return None


class DatasetConfig(StrictModel):
    """Exactly one source (`name`, `path` or `tasks`), then filters applied in order: include, exclude,
    n_tasks."""

    registry: str | None = None
    """Harbor `registry.json`: a path (relative to the config file) or an http(s) URL; default: the
    bundled `benchmarks/registry.json`."""
    name: str | None = None
    """Registry dataset, `name` or `name@version`."""
    version: str | None = None
    """Dataset version; default: `head` if it exists, else the highest PEP 440 version, else the lexically
    last."""
    path: str | None = None
    """Instead of a registry: a local directory whose subdirectories holding a `task.toml` are the tasks."""
    tasks: list[TaskSpec] = []
    """Instead of a registry: individual tasks, local or in git repositories."""
    include: list[str] = []
    """Task-name globs (fnmatch) to keep; empty keeps every task."""
    exclude: list[str] = []
    """Task-name globs to drop, applied after `include`."""
    n_tasks: int | None = Field(default=None, ge=0)
    """Keep the first N tasks (registry order) after filtering, for a smoke run; unset keeps all."""
    cache_dir: str | None = None
    """Git task cache shared by jobs (relative to the config file); default:
    `$XDG_CACHE_HOME/evalkit/tasks`, i.e. `~/.cache/evalkit/tasks`."""
    max_concurrent_fetches: int = Field(default=4, ge=1)
    """Repositories fetched at once: a few fill a link without flooding the host with git processes."""

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        sources = [key for key in ("name", "path", "tasks") if getattr(self, key)]
        if len(sources) != 1:
            given = f"got {' and '.join(sources)}" if sources else "got none"
            raise ValueError(
                "set exactly one task source: `name` (a registry dataset), `path` (a local directory of "
                f"tasks) or `tasks` (a list of tasks); {given}"
            )
        if self.name is None and (self.registry is not None or self.version is not None):
            raise ValueError("`registry` and `version` select a registry dataset: they need a `name`")
        if self.name is not None:
            name, version = split_name(self.name)
            if not name or version == "":
                raise ValueError(f"dataset name {self.name!r} is not `name` or `name@version`")
            if version is not None and self.version is not None:
                raise ValueError(
                    f"the version is given twice: in `name: {self.name}` and `version: {self.version}`; keep one"
                )
        return self

    def dataset_version(self) -> tuple[str, str | None]:
        """(name, version or None) from `name@version` or the separate `version` field."""
        assert self.name is not None
        name, version = split_name(self.name)
        return name, (self.version if version is None else version)

    def cache_path(self, base_dir: Path) -> Path:
        if self.cache_dir is not None:
            return base_dir / Path(self.cache_dir).expanduser()
        return default_cache_dir()


def split_name(ref: str) -> tuple[str, str | None]:
    """`name@version` → (name, version), split on the first `@` as Harbor does; `name` → (name, None)."""
    name, at, version = ref.partition("@")
    return name, (version if at else None)


def default_cache_dir() -> Path:
    """`<user cache dir>/evalkit/tasks`, honouring XDG_CACHE_HOME when it is an absolute path (as XDG says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "evalkit" / "tasks"
