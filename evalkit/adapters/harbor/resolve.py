"""From a `dataset:` block to task directories on disk: select, fetch, and pin the commits in the job.

Task names stay as the source gives them (registry names, directory names, `name:` in a task list). Two
entries with one name are kept once when they are the same task (same repository, commit and path), and
are an error when they differ, since results are keyed by name.
"""

from __future__ import annotations

import asyncio
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from evalkit.adapters.harbor.cache import GitTaskCache
from evalkit.adapters.harbor.config import DatasetConfig, TaskSpec
from evalkit.adapters.harbor.local import local_task_dir, tasks_in_directory
from evalkit.adapters.harbor.registry import load_registry
from evalkit.errors import ConfigError
from evalkit.results import write_json_atomic
from evalkit.strict import StrictModel

LOCK_FILE = "tasks.lock.json"


class TaskRef(BaseModel):
    """One task to run, materialised on local disk."""

    model_config = ConfigDict(frozen=True)
    name: str
    path: Path
    """The local task directory (task.toml, instruction.md, environment/, tests/, solution/)."""
    git_url: str | None = None
    git_commit: str | None = None
    """The full commit a git task was taken from, whatever the source wrote (`HEAD`, a short SHA)."""
    source_path: str | None = None
    """`path` as the source wrote it."""


class TasksLock(StrictModel):
    """`<job>/tasks.lock.json`: the job's tasks with every commit resolved, so a resumed job runs exactly
    these."""

    schema_version: Literal[1] = 1
    tasks: list[TaskSpec]
    """Git tasks pinned to full commits; local tasks by absolute path."""


async def resolve_tasks(config: DatasetConfig, *, base_dir: Path, job_dir: Path | None = None) -> list[TaskRef]:
    """The selected tasks, fetched into the cache if needed, in source order.

    base_dir: what relative paths in `config` are relative to (the config file's directory).
    job_dir: when given, the tasks and their resolved commits are recorded in `job_dir/tasks.lock.json`;
    if that file exists (a resumed job), its tasks are used exactly and the source is not read again."""
    lock = job_dir / LOCK_FILE if job_dir is not None else None
    if lock is not None and lock.exists():
        specs, root = read_lock(lock), base_dir
    else:
        specs, root = await _source(config, base_dir)
        specs = select(specs, config)
    local = await asyncio.to_thread(
        lambda: {i: local_task_dir(spec, root) for i, spec in enumerate(specs) if spec.git_url is None}
    )
    cache = GitTaskCache(config.cache_path(base_dir), max_concurrent=config.max_concurrent_fetches)
    checkouts = iter(await cache.fetch([spec for spec in specs if spec.git_url is not None]))
    refs = []
    for i, spec in enumerate(specs):
        if i in local:
            refs.append(TaskRef(name=spec.task_name, path=local[i], source_path=spec.path))
        else:
            checkout = next(checkouts)
            refs.append(TaskRef(name=spec.task_name, path=checkout.path, git_url=spec.git_url,
                                git_commit=checkout.commit, source_path=spec.path))
    if lock is not None and not lock.exists():
        await asyncio.to_thread(write_json_atomic, lock, _lock_of(refs))
    return refs


async def _source(config: DatasetConfig, base_dir: Path) -> tuple[list[TaskSpec], Path | None]:
    """The source's tasks, and the directory their local paths are relative to."""
    if config.name is not None:
        registry = await load_registry(config.registry, base_dir=base_dir, cache_dir=config.cache_path(base_dir))
        return list(registry.dataset(*config.dataset_version()).tasks), registry.task_root
    if config.path is not None:
        directory = base_dir / Path(config.path).expanduser()
        return await asyncio.to_thread(tasks_in_directory, directory), directory
    return config.tasks, base_dir


def select(specs: list[TaskSpec], config: DatasetConfig) -> list[TaskSpec]:
    """include, then exclude (fnmatch globs on task names), one task per name, then the first n_tasks."""
    if config.include:
        specs = [spec for spec in specs if any(fnmatchcase(spec.task_name, glob) for glob in config.include)]
    if config.exclude:
        specs = [spec for spec in specs if not any(fnmatchcase(spec.task_name, glob) for glob in config.exclude)]
    first: dict[str, TaskSpec] = {}
    for spec in specs:
        seen = first.setdefault(spec.task_name, spec)
        if seen is not spec and seen.model_dump(exclude={"name"}) != spec.model_dump(exclude={"name"}):
            raise ConfigError(
                f"two different tasks are named {spec.task_name!r} ({_where(seen)} and {_where(spec)}); "
                "give one of them another `name`"
            )
    specs = list(first.values())
    return specs if config.n_tasks is None else specs[: config.n_tasks]


def _where(spec: TaskSpec) -> str:
    return f"{spec.path} at {spec.commit} in {spec.git_url}" if spec.git_url else spec.path


def read_lock(path: Path) -> list[TaskSpec]:
    try:
        return TasksLock.model_validate_json(path.read_bytes()).tasks
    except ValidationError as exc:
        raise ConfigError(
            f"cannot read {path} ({exc.error_count()} problems, first: {exc.errors()[0]['msg']}); "
            "delete it to select the tasks again"
        ) from None


def _lock_of(refs: list[TaskRef]) -> TasksLock:
    return TasksLock(tasks=[
        TaskSpec(name=ref.name, path=ref.source_path, git_url=ref.git_url, git_commit_id=ref.git_commit)
        if ref.git_url else TaskSpec(name=ref.name, path=str(ref.path))
        for ref in refs
    ])
