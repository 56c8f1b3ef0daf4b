"""Task sources besides a registry, selection (include → exclude → n_tasks), and the `dataset:` block."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from evalkit.adapters.harbor import DatasetConfig, TaskSpec, resolve_tasks
from evalkit.adapters.harbor.config import default_cache_dir
from evalkit.adapters.harbor.resolve import select
from evalkit.errors import ConfigError
from tests.adapters.conftest import git_task, task_files, write_registry


def write_tasks(root: Path, *names: str) -> None:
    for name in names:
        for rel, content in task_files(name, name).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(content)


async def test_a_local_directory_of_tasks(tmp_path):
    write_tasks(tmp_path / "suite", "b-task", "a-task")
    (tmp_path / "suite" / "notes").mkdir()  # no task.toml: not a task
    refs = await resolve_tasks(DatasetConfig(path="suite"), base_dir=tmp_path)
    assert [(r.name, r.path, r.source_path, r.git_url) for r in refs] == [
        ("a-task", tmp_path / "suite" / "a-task", "a-task", None),
        ("b-task", tmp_path / "suite" / "b-task", "b-task", None),
    ]


async def test_a_directory_without_tasks_or_missing_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=rf"^no task in {tmp_path / 'empty'}: no subdirectory holds a task.toml$"):
        await resolve_tasks(DatasetConfig(path="empty"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=rf"^task directory not found: {tmp_path / 'absent'}$"):
        await resolve_tasks(DatasetConfig(path="absent"), base_dir=tmp_path)


async def test_a_list_of_local_and_git_tasks(tmp_path, remote, cache_dir):
    write_tasks(tmp_path / "mine", "local-one")
    config = DatasetConfig(cache_dir=str(cache_dir), tasks=[
        TaskSpec(path="mine/local-one"),
        TaskSpec(path="tasks/alpha", git_url=remote.url, git_commit_id=remote.commits[1][:7], name="alpha-v1"),
        TaskSpec(path="tasks/beta", git_url=remote.url),  # HEAD
    ])
    refs = await resolve_tasks(config, base_dir=tmp_path)
    assert [(r.name, r.git_commit) for r in refs] == [
        ("local-one", None), ("alpha-v1", remote.commits[1]), ("beta", remote.commits[3]),
    ]
    assert refs[0].path == tmp_path / "mine" / "local-one"


async def test_a_missing_local_task_names_the_task_and_the_directory(tmp_path):
    config = DatasetConfig(tasks=[TaskSpec(path="nowhere/task", name="lost")])
    with pytest.raises(ConfigError) as caught:
        await resolve_tasks(config, base_dir=tmp_path, job_dir=tmp_path / "job")
    assert str(caught.value) == f"task 'lost': local task directory {tmp_path / 'nowhere' / 'task'} does not exist"
    assert not (tmp_path / "job").exists()


async def test_registry_local_tasks_are_relative_to_the_registry_file(tmp_path):
    write_tasks(tmp_path / "reg" / "suite", "one")
    registry = write_registry(tmp_path / "reg" / "registry.json", [
        {"name": "one", "git_url": None, "git_commit_id": None, "path": "suite/one"},
    ])
    config = DatasetConfig(registry=str(registry.relative_to(tmp_path)), name="gitbench")
    (ref,) = await resolve_tasks(config, base_dir=tmp_path)
    assert ref.path == tmp_path / "reg" / "suite" / "one"


async def test_the_bundled_registry_is_the_default():
    refs = await resolve_tasks(DatasetConfig(name="evalkit-smoke", n_tasks=2), base_dir=Path("/nonexistent"))
    assert len(refs) == 2 and all((r.path / "task.toml").is_file() for r in refs)


def specs(*names: str) -> list[TaskSpec]:
    return [TaskSpec(path=f"tasks/{name}") for name in names]


def test_include_then_exclude_then_n_tasks_in_source_order():
    tasks = specs("django-1", "flask-1", "django-2", "django-3", "numpy-1")
    config = DatasetConfig(path="x", include=["django-*", "numpy-*"], exclude=["*-2"], n_tasks=2)
    assert [s.task_name for s in select(tasks, config)] == ["django-1", "django-3"]
    assert [s.task_name for s in select(tasks, DatasetConfig(path="x", n_tasks=0))] == []


def test_a_name_listed_twice_for_one_task_is_kept_once_and_for_two_tasks_is_an_error(remote):
    same = [TaskSpec(**git_task("t", remote, "HEAD", "tasks/alpha"))] * 2 + specs("other")
    assert [s.task_name for s in select(same, DatasetConfig(path="x"))] == ["t", "other"]
    clash = [TaskSpec(**git_task("t", remote, "HEAD", "tasks/alpha")), TaskSpec(**git_task("t", remote, "HEAD", "tasks/beta"))]
    with pytest.raises(ConfigError) as caught:
        select(clash, DatasetConfig(path="x"))
    assert str(caught.value) == (
        f"two different tasks are named 't' (tasks/alpha at HEAD in {remote.url} and tasks/beta at HEAD in "
        f"{remote.url}); give one of them another `name`"
    )
    assert [s.task_name for s in select(clash, DatasetConfig(path="x", exclude=["t"]))] == []


@pytest.mark.parametrize(("block", "message"), [
    ({}, "set exactly one task source: `name` (a registry dataset), `path` (a local directory of tasks) or "
         "`tasks` (a list of tasks); got none"),
    ({"name": "a", "path": "b"}, "set exactly one task source: `name` (a registry dataset), `path` (a local "
                                 "directory of tasks) or `tasks` (a list of tasks); got name and path"),
    ({"name": "swe@1.0", "version": "2.0"}, "the version is given twice: in `name: swe@1.0` and `version: 2.0`; keep one"),
    ({"name": "swe@"}, "dataset name 'swe@' is not `name` or `name@version`"),
    ({"path": "x", "version": "1.0"}, "`registry` and `version` select a registry dataset: they need a `name`"),
    ({"path": "x", "n_tasks": -1}, "Input should be greater than or equal to 0"),
    ({"path": "x", "nme": "y"}, "Extra inputs are not permitted"),
    ({"tasks": [{"path": "t", "git_commit_id": "HEAD"}]}, "task 't': `git_commit_id` needs a `git_url`"),
])
def test_bad_dataset_blocks_are_refused(block, message):
    with pytest.raises(ValidationError) as caught:
        DatasetConfig.model_validate(block)
    assert message in str(caught.value)


def test_name_and_version_and_the_cache_default(tmp_path, monkeypatch):
    assert DatasetConfig(name="swe-lancer-diamond@ic").dataset_version() == ("swe-lancer-diamond", "ic")
    assert DatasetConfig(name="terminal-bench", version="2.0").dataset_version() == ("terminal-bench", "2.0")
    assert DatasetConfig(name="terminal-bench").dataset_version() == ("terminal-bench", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "evalkit" / "tasks"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir() == Path.home() / ".cache" / "evalkit" / "tasks"
    assert DatasetConfig(path="x", cache_dir="c").cache_path(tmp_path) == tmp_path / "c"
