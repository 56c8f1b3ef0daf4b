"""Tasks on local disk: a directory of task directories, or single task paths."""

from __future__ import annotations

import os
from pathlib import Path

from evalkit.adapters.harbor.config import TaskSpec
from evalkit.errors import ConfigError


def tasks_in_directory(directory: Path) -> list[TaskSpec]:
    """The subdirectories holding a `task.toml`, by name; their paths are relative to `directory`."""
    if not directory.is_dir():
        raise ConfigError(f"task directory not found: {directory}")
    specs = [TaskSpec(path=entry.name) for entry in sorted(directory.iterdir()) if (entry / "task.toml").is_file()]
    if not specs:
        raise ConfigError(f"no task in {directory}: no subdirectory holds a task.toml")
    return specs


def local_task_dir(spec: TaskSpec, root: Path | None) -> Path:
    """`root`: what relative paths are relative to; None when the tasks came from a registry URL."""
    if root is None:
        raise ConfigError(
            f"task {spec.task_name!r} has no git_url, and a registry loaded from a URL has no local tasks"
        )
    path = (root / Path(spec.path).expanduser()).resolve()
    if not path.is_dir():
        raise ConfigError(f"task {spec.task_name!r}: local task directory {path} does not exist")
    if (problem := outward_symlink(path)) is not None:
        raise ConfigError(f"task {spec.task_name!r}: {problem}; refused")
    return path


def outward_symlink(task_dir: Path) -> str | None:
    """The first symlink under `task_dir` that leads outside it, described; None if there is none. Such a
    link would hand host files to a container (uploads and image builds follow what they archive)."""
    root = task_dir.resolve()
    for parent, dirs, files in os.walk(task_dir):
        for entry in dirs + files:
            link = Path(parent, entry)
            if link.is_symlink() and not Path(os.path.realpath(link)).is_relative_to(root):
                return f"{link.relative_to(task_dir)} is a symlink to {os.readlink(link)!r}, outside the task directory"
    return None
