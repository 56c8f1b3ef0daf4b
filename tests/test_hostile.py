"""`evalkit-hostile@1.0` in real containers: every attack a task or an agent can mount on the host, on its
own verdict or on other trials ends exactly as `expected.json` says, a benign task in the same job is
unaffected, and nothing is left behind: no container, no reader of a FIFO, no thread, no host secret in any
file."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest

from evalkit import evaluate
from evalkit.errors import ConfigError
from tests.conftest import BENCHMARKS, HOST_NETWORK, expected_outcomes, job_containers, run_cli, write_config, write_task

pytestmark = pytest.mark.docker

HOST_SECRET = f"sk-ant-hostile-{uuid.uuid4().hex}"
CANARY = Path("/tmp/evalkit-hostile-canary.json")  # what reward-symlink-host points at


class Listener:
    """A TCP server on the host's loopback that counts who reached it."""

    def __init__(self) -> None:
        self.connections = 0

    async def __aenter__(self) -> Listener:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()


def all_files_text(*roots: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for root in roots for p in root.rglob("*") if p.is_file())


async def test_every_attack_ends_as_expected_and_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    expected = expected_outcomes("evalkit-hostile")
    monkeypatch.setenv("ANTHROPIC_API_KEY", HOST_SECRET)
    CANARY.write_text(json.dumps({"reward": 1.0, "secret": HOST_SECRET}))
    name = f"engine-hostile-{uuid.uuid4().hex[:6]}"
    try:
        async with Listener() as listener:
            result = await evaluate({"job_name": name, **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "n_concurrent": 4,
                                     "dataset": {"name": "evalkit-hostile@1.0"}})
    finally:
        CANARY.unlink()

    outcomes = {t.task_name: {"rewards": t.rewards, "error": t.error and t.error.type} for t in result.trials}
    assert outcomes == expected
    assert outcomes["benign"] == {"rewards": {"reward": 1.0}, "error": None}
    assert result.summary.status == "finished" and result.summary.task_errors.keys() == {"secret-interpolation"}
    messages = {t.task_name: t.error.message for t in result.trials if t.error}
    assert messages["reward-symlink-host"] == "reward.json is a symbolic link, not a regular file; refused"
    assert messages["reward-symlink-environ"] == "reward.txt is a symbolic link, not a regular file; refused"
    assert messages["reward-symlink-devzero"] == "reward.txt is a symbolic link, not a regular file; refused"
    assert messages["reward-fifo"] == "reward.txt is a FIFO, not a regular file; refused"
    assert messages["reward-directory"] == "reward.json is a directory, not a regular file; refused"
    assert messages["reward-huge"] == "reward.txt is larger than 65536 bytes (134217728); refused"
    assert messages["secret-interpolation"] == (
        "task 'secret-interpolation': environment.env.STOLEN refers to ${ANTHROPIC_API_KEY}, which "
        "environment.pass_env does not list; a task reads only host variables the job passes"
    )
    assert messages["agent-kills-its-container"].startswith("the container stopped")

    # Nothing reached the host: not its loopback, not its files, not its secrets.
    assert listener.connections == 0
    assert HOST_SECRET not in all_files_text(result.job_dir)
    by_task = {t.task_name: t for t in result.trials}
    assert by_task["reward-huge"].downloads["evaluation"].skipped == ["reward.txt: 134217728 bytes, over the download cap of 104857600"]
    log_tricks = result.job_dir / by_task["agent-log-tricks"].trial_name / "agent"
    assert sorted(p.name for p in log_tricks.rglob("*")) == ["hardlink.txt", "kept.txt", "nested", "oracle.txt"]
    assert sorted(by_task["agent-log-tricks"].downloads["agent"].skipped) == [
        "fifo: FIFO", "litellm-trajectory.jsonl: reserved for the host's own file", "notes.txt: hard link",
        "passwd-link: symbolic link", "root-link: symbolic link",
    ]
    envelope = by_task["fork-bomb"].environment
    assert (envelope.pids_limit, envelope.cpus, envelope.memory_mb, envelope.network_mode) == (4096, 1.0, 2048, "host")
    assert envelope.cap_drop == ["AUDIT_WRITE", "MKNOD", "NET_RAW", "SYS_CHROOT"] and envelope.no_new_privileges
    assert by_task["loopback-probe"].environment.network_mode == "none"

    # Nothing left behind.
    assert await job_containers(name) == []
    assert [t.name for t in threading.enumerate() if t.name == "evalkit-archive"] == []
    assert not [fd for fd in os.listdir("/proc/self/fd") if "reward" in os.path.realpath(f"/proc/self/fd/{fd}")]


async def test_the_loopback_probe_does_find_the_host_when_the_network_allows(tmp_path: Path):
    """The control for loopback-probe: the same agent on the host network reaches the listener, so the
    benchmark's 'reached=0' proves the `none` network, not a broken probe."""
    task = tmp_path / "tasks" / "probe"
    shutil.copytree(BENCHMARKS / "evalkit-hostile" / "loopback-probe", task)
    (task / "task.toml").write_text((task / "task.toml").read_text().replace('network_mode = "no-network"', 'network_mode = "public"'))
    async with Listener() as listener:
        result = await evaluate({"job_name": f"engine-probe-{uuid.uuid4().hex[:6]}", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                                 "dataset": {"path": str(tmp_path / "tasks")}})
    assert [t.rewards for t in result.trials] == [{"reward": 0.0}]
    assert listener.connections >= 1


def test_a_task_name_that_climbs_out_is_a_config_error(tmp_path: Path):
    write_task(tmp_path / "tasks", "t")
    listed = write_config(tmp_path / "listed.yaml", {"job_name": "x", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                                                      "dataset": {"tasks": [{"path": str(tmp_path / "tasks" / "t"), "name": "../escape"}]}})
    result = run_cli("run", str(listed), "--quiet")
    assert result.returncode == 2
    assert "dataset.tasks[0]: Value error, task name '../escape' contains a path separator" in result.stderr
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps([{"name": "evil", "version": "1.0", "tasks": [
        {"name": "fine", "path": "tasks/t"}, {"name": "../../escape", "path": "tasks/t"}]}]))
    from_registry = write_config(tmp_path / "registry.yaml", {"job_name": "y", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                                                               "dataset": {"registry": str(registry), "name": "evil"}})
    result = run_cli("run", str(from_registry), "--quiet")
    assert result.returncode == 2
    assert result.stderr == (
        f"evalkit: error: registry {registry} is not a Harbor registry.json: dataset evil@1.0, task entry 1: "
        "Value error, task name '../../escape' contains a path separator\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["listed.yaml", "registry.json", "registry.yaml", "tasks"]


@pytest.mark.parametrize(
    ("name", "problem"),
    [(".", "contains '..' or is '.'"), ("..", "contains '..' or is '.'"), ("a..b", "contains '..' or is '.'"),
     ("tab\there", "contains a control character"), ("x" * 201, "is longer than 200 bytes"), ("a\\b", "contains a path separator"),
     ("../up", "contains a path separator")],
)
def test_task_names_are_checked_before_any_directory_is_made(name: str, problem: str):
    from evalkit.adapters.harbor import TaskSpec

    with pytest.raises(ValueError, match=f"task name .* {problem}"):
        TaskSpec(path="p", name=name)
    with pytest.raises(ValueError, match="give it a `name`"):
        TaskSpec(path="/")


def test_local_tasks_linking_outside_are_refused(tmp_path: Path):
    task = write_task(tmp_path / "tasks", "linked")
    (task / "tests" / "data").symlink_to("/etc")
    config = write_config(tmp_path / "c.yaml", {"job_name": "z", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tmp_path / "tasks")}})
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 2
    assert result.stderr == (
        "evalkit: error: task 'linked': tests/data is a symlink to '/etc', outside the task directory; refused\n"
    )
    with pytest.raises(ConfigError):
        from evalkit.adapters.harbor.local import local_task_dir
        from evalkit.adapters.harbor import TaskSpec

        local_task_dir(TaskSpec(path="linked"), tmp_path / "tasks")
