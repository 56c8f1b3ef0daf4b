"""Git tasks: fetched by full SHA, short SHA or HEAD; shared paths; the cache; the resume lock."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from evalkit.adapters.harbor.git import BareRepo
from tests.adapters.conftest import checkouts, git, git_task, resolve, task_files, temp_files, write_registry


def marker(ref) -> str:
    return (ref.path / "tests" / "test.sh").read_text().split()[-1]


async def test_fetch_by_full_sha_short_sha_and_head(tmp_path, remote, cache_dir, network_ops):
    c = remote.commits
    remote.tag("v2", c[2])
    registry = write_registry(tmp_path / "registry.json", [
        git_task("by-full", remote, c[1], "tasks/alpha"),
        git_task("by-short", remote, c[2][:7], "tasks/alpha"),
        git_task("by-head", remote, "HEAD", "tasks/alpha"),
    ])
    refs = await resolve(registry, cache_dir)
    assert [(r.name, r.git_commit, marker(r)) for r in refs] == [
        ("by-full", c[1], "alpha-v1"), ("by-short", c[2], "alpha-v2"), ("by-head", c[3], "alpha-v3"),
    ]
    assert all(r.source_path == "tasks/alpha" and r.git_url == remote.url for r in refs)
    assert sorted(p.name for p in refs[0].path.iterdir()) == ["environment", "instruction.md", "solution", "task.toml", "tests"]
    # one ls-remote (for HEAD, and the short SHA: a tag's tip), then per commit a fetch of the commit and
    # one of the task's blobs
    assert network_ops() == 1 + 3 * 2
    # only what the tasks need came over: not the unused first commit, not beta's files
    repo = BareRepo(next((cache_dir / "repos").glob("*.git")), remote.url)
    assert not await repo.has_commit(c[0])
    listing = git("--git-dir", str(repo.git_dir), "rev-list", "--objects", "--missing=print", f"{c[1]}:tasks/beta")
    assert "?" + git("rev-parse", f"{c[1]}:tasks/beta/task.toml", cwd=remote.work) in listing.splitlines()


async def test_tasks_sharing_a_path_keep_their_names_and_one_checkout(tmp_path, remote, cache_dir, network_ops):
    registry = write_registry(tmp_path / "registry.json", [
        git_task(name, remote, remote.commits[1], "tasks/alpha") for name in ("first", "second", "third")
    ])
    refs = await resolve(registry, cache_dir)
    assert [r.name for r in refs] == ["first", "second", "third"]
    assert len({r.path for r in refs}) == 1 and marker(refs[0]) == "alpha-v1"
    assert len(checkouts(cache_dir)) == 1
    assert network_ops() == 2  # the commit, then its blobs: once for all three


async def test_a_second_run_does_no_network_operation(tmp_path, remote, cache_dir, network_ops):
    c = remote.commits
    registry = write_registry(tmp_path / "registry.json", [
        git_task("full", remote, c[1], "tasks/alpha"),
        git_task("short", remote, c[2][:8], "tasks/alpha"),
        git_task("shared", remote, c[1], "tasks/alpha"),
        git_task("beta", remote, c[1], "tasks/beta"),
    ])
    first = await resolve(registry, cache_dir, job_dir=tmp_path / "job-1")
    assert network_ops() > 0
    shutil.move(remote.bare, tmp_path / "gone.git")  # offline from here on
    second = await resolve(registry, cache_dir, job_dir=tmp_path / "job-2")
    assert network_ops() == 0
    assert second == first


async def test_a_resumed_job_uses_exactly_the_recorded_commits(tmp_path, remote, cache_dir, network_ops):
    registry = write_registry(tmp_path / "registry.json", [git_task("alpha", remote, "HEAD", "tasks/alpha")])
    job_dir = tmp_path / "job"
    (first,) = await resolve(registry, cache_dir, job_dir=job_dir)
    assert json.loads((job_dir / "tasks.lock.json").read_text()) == {
        "schema_version": 1,
        "tasks": [{"path": "tasks/alpha", "git_url": remote.url, "git_commit_id": remote.commits[3], "name": "alpha"}],
    }
    c4 = remote.commit(task_files("tasks/alpha", "alpha-v4"))  # HEAD moves on
    network_ops()
    (resumed,) = await resolve(registry, cache_dir, job_dir=job_dir)
    assert (resumed.git_commit, marker(resumed)) == (remote.commits[3], "alpha-v3")
    assert network_ops() == 0
    (new_job,) = await resolve(registry, cache_dir, job_dir=tmp_path / "another-job")
    assert (new_job.git_commit, marker(new_job)) == (c4, "alpha-v4")


async def test_a_resumed_job_refetches_its_commits_when_the_cache_is_gone(tmp_path, remote, cache_dir):
    registry = write_registry(tmp_path / "registry.json", [git_task("alpha", remote, "HEAD", "tasks/alpha")])
    (first,) = await resolve(registry, cache_dir, job_dir=tmp_path / "job")
    shutil.rmtree(cache_dir)
    (again,) = await resolve(registry, cache_dir, job_dir=tmp_path / "job")
    assert again == first and marker(again) == "alpha-v3"


async def test_head_offline_falls_back_to_where_it_pointed_last(tmp_path, remote, cache_dir, caplog):
    registry = write_registry(tmp_path / "registry.json", [git_task("alpha", remote, "HEAD", "tasks/alpha")])
    await resolve(registry, cache_dir)
    shutil.move(remote.bare, tmp_path / "gone.git")
    with caplog.at_level(logging.WARNING):
        (ref,) = await resolve(registry, cache_dir)
    assert ref.git_commit == remote.commits[3]
    assert f"cannot reach {remote.url} (fatal: '{remote.bare}' does not appear to be a git repository); " \
           f"using HEAD = {remote.commits[3]} as last resolved" in caplog.text


async def test_a_server_that_refuses_unadvertised_shas_is_fetched_through_its_refs(
    tmp_path, remote, cache_dir, monkeypatch
):
    git("config", "uploadpack.allowAnySHA1InWant", "false", cwd=remote.bare)
    for key, value in (("GIT_CONFIG_COUNT", "1"), ("GIT_CONFIG_KEY_0", "protocol.version"), ("GIT_CONFIG_VALUE_0", "0")):
        monkeypatch.setenv(key, value)  # protocol v0 enforces the server's want rules
    registry = write_registry(tmp_path / "registry.json", [git_task("old", remote, remote.commits[1], "tasks/alpha")])
    (ref,) = await resolve(registry, cache_dir)
    assert (ref.git_commit, marker(ref)) == (remote.commits[1], "alpha-v1")


async def test_a_short_sha_that_is_no_branch_tip_is_found_in_the_history(tmp_path, remote, cache_dir):
    registry = write_registry(tmp_path / "registry.json", [
        git_task("head", remote, "HEAD", "tasks/alpha"),  # makes the cache shallow at HEAD first
        git_task("old", remote, remote.commits[1][:7], "tasks/beta"),
    ])
    refs = await resolve(registry, cache_dir)
    assert [(r.git_commit, marker(r)) for r in refs] == [(remote.commits[3], "alpha-v3"), (remote.commits[1], "beta-v1")]


async def test_crash_leftovers_in_the_cache_are_cleared_and_never_used(tmp_path, remote, cache_dir):
    registry = write_registry(tmp_path / "registry.json", [git_task("alpha", remote, remote.commits[1], "tasks/alpha")])
    await resolve(registry, cache_dir)
    (task_dir,) = checkouts(cache_dir)
    half = cache_dir / "tmp" / task_dir.parents[2].name / "tmpcrashed" / "0"
    half.mkdir(parents=True)
    (half / "task.toml").write_text("half written")
    shutil.rmtree(task_dir)
    (ref,) = await resolve(registry, cache_dir)
    assert marker(ref) == "alpha-v1" and ref.path == task_dir
    assert temp_files(cache_dir) == []
