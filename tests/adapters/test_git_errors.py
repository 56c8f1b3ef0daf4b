"""Bad git tasks: each error names the task, the repository and the commit, and leaves nothing behind."""

from __future__ import annotations

import pytest

from evalkit.errors import ConfigError, InfrastructureError
from tests.adapters.conftest import checkouts, git_task, resolve, task_files, temp_files, write_registry


async def failure(tmp_path, cache_dir, tasks: list[dict], error: type[Exception] = ConfigError) -> str:
    registry = write_registry(tmp_path / "registry.json", tasks)
    with pytest.raises(error) as caught:
        await resolve(registry, cache_dir, job_dir=tmp_path / "job")
    assert checkouts(cache_dir) == [] and temp_files(cache_dir) == []
    assert not (tmp_path / "job" / "tasks.lock.json").exists()
    return str(caught.value)


async def test_a_missing_full_commit_names_task_repository_and_commit(tmp_path, remote, cache_dir):
    sha = "0123456789abcdef0123456789abcdef01234567"
    message = await failure(tmp_path, cache_dir, [git_task("ghost", remote, sha, "tasks/alpha")])
    assert message == f"commit '{sha}' not found in repository {remote.url} (needed by task 'ghost')"


async def test_a_missing_short_commit_names_every_task_that_needs_it(tmp_path, remote, cache_dir):
    tasks = [git_task(f"t{i}", remote, "abcdef1", "tasks/alpha") for i in range(5)]
    message = await failure(tmp_path, cache_dir, tasks)
    assert message == f"commit 'abcdef1' not found in repository {remote.url} (needed by tasks 't0', 't1', 't2' and 2 more)"


async def test_a_missing_path_names_task_path_commit_and_repository(tmp_path, remote, cache_dir):
    c1 = remote.commits[1]
    message = await failure(tmp_path, cache_dir, [
        git_task("alpha", remote, c1, "tasks/alpha"),
        git_task("nowhere", remote, c1, "tasks/nowhere"),
        git_task("file", remote, c1, "tasks/alpha/task.toml"),
    ])
    assert message == (
        f"task 'nowhere': path 'tasks/nowhere' in commit {c1} of repository {remote.url} does not exist\n"
        f"task 'file': path 'tasks/alpha/task.toml' in commit {c1} of repository {remote.url} is not a directory"
    )


@pytest.mark.parametrize(("path", "problem"), [
    ("../outside", "escapes the repository checkout"),
    ("tasks/../../outside", "escapes the repository checkout"),
    ("/etc", "is absolute"),
])
async def test_a_path_out_of_the_checkout_is_refused_before_any_fetch(tmp_path, remote, cache_dir, network_ops, path, problem):
    message = await failure(tmp_path, cache_dir, [git_task("evil", remote, "HEAD", path)])
    assert message == f"task 'evil': path '{path}' in repository {remote.url} {problem}; refused"
    assert network_ops() == 0


@pytest.mark.parametrize(("link", "target", "path", "outside"), [
    ("tasks/escape", "../..", "tasks/escape/sub", "../sub"),  # git names the part that is outside
    ("tasks/etc", "/etc", "tasks/etc", "/etc"),
])
async def test_a_path_through_a_symlink_out_of_the_checkout_is_refused(tmp_path, remote, cache_dir, link, target, path, outside):
    commit = remote.commit({}, symlinks={link: target})
    message = await failure(tmp_path, cache_dir, [git_task("evil", remote, commit, path)])
    assert message == (
        f"task 'evil': path '{path}' in commit {commit} of repository {remote.url} "
        f"is a symlink out of the repository checkout (to '{outside}'); refused"
    )


async def test_a_symlink_inside_the_repository_is_followed(tmp_path, remote, cache_dir):
    commit = remote.commit({}, symlinks={"tasks/alias": "alpha"})
    registry = write_registry(tmp_path / "registry.json", [git_task("alias", remote, commit, "tasks/alias")])
    (ref,) = await resolve(registry, cache_dir)
    assert (ref.path / "tests" / "test.sh").read_text() == "echo alpha-v3\n"


async def test_a_task_with_a_symlink_out_of_its_directory_is_refused(tmp_path, remote, cache_dir):
    commit = remote.commit(
        task_files("tasks/leaky", "leaky"),
        symlinks={"tasks/leaky/tests/secret": "/etc/passwd", "tasks/leaky/solution/ok": "../tests/test.sh"},
    )
    message = await failure(tmp_path, cache_dir, [git_task("leaky", remote, commit, "tasks/leaky")])
    assert message == "task 'leaky': tests/secret is a symlink to '/etc/passwd', outside the task directory; refused"


async def test_an_unreachable_repository_is_an_infrastructure_error(tmp_path, cache_dir):
    url = (tmp_path / "no-such-repo.git").as_uri()
    tasks = [{"name": "far", "git_url": url, "git_commit_id": "HEAD", "path": "tasks/far"}]
    message = await failure(tmp_path, cache_dir, tasks, InfrastructureError)
    assert message == (
        f"cannot reach repository {url} to resolve commit 'HEAD' (needed by task 'far'): "
        f"fatal: '{tmp_path / 'no-such-repo.git'}' does not appear to be a git repository"
    )
    sha = "0123456789abcdef0123456789abcdef01234567"
    tasks[0]["git_commit_id"] = sha
    message = await failure(tmp_path, cache_dir, tasks, InfrastructureError)
    assert message == (
        f"cannot fetch from repository {url} (needed by task 'far'): "
        f"fatal: '{tmp_path / 'no-such-repo.git'}' does not appear to be a git repository"
    )


async def test_git_missing_from_the_machine_is_an_infrastructure_error(tmp_path, remote, cache_dir, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    message = await failure(tmp_path, cache_dir, [git_task("alpha", remote, "HEAD", "tasks/alpha")], InfrastructureError)
    assert message == "tasks from git repositories need the `git` command, which is not installed"
