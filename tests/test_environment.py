"""The Docker backend's contract, checked in real containers: what comes back through the Environment
(read_file, download) is only what is safe to take; every process the agent started dies before the
verifier; containers are hardened, limited and uniquely named; images are built once."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import pytest

from evalkit import evaluate
from evalkit.config import EnvironmentConfig
from evalkit.environments import (
    EnvironmentSpec,
    FileMissingError,
    FileTooLargeError,
    JobIdentity,
    Mount,
    NotARegularFileError,
    Resources,
    connect_backend,
)
from evalkit.environments.docker import DockerEnvironment, container_name
from evalkit.errors import ConfigError
from evalkit.tasks import load_task
from tests.conftest import HOST_NETWORK, job_containers, write_task

pytestmark = pytest.mark.docker


def spec(name: str = "t__0", **overrides) -> EnvironmentSpec:
    values = {"name": name, "network_mode": "none", "resources": Resources(cpus=1, memory_mb=512, storage_mb=1024, pids_limit=64),
              "build_timeout_sec": 300, "start_timeout_sec": 60}
    return EnvironmentSpec(**{**values, **overrides})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[DockerEnvironment]:
    task = load_task(write_task(tmp_path / "tasks", "t"))
    job = JobIdentity(job_id=str(uuid.uuid4()), job_name=f"engine-env-{uuid.uuid4().hex[:8]}", job_dir=tmp_path / "job")
    backend = await connect_backend(EnvironmentConfig(), job)
    environment = backend.environment(task, spec())
    try:
        await environment.start()
        yield environment
    finally:
        await environment.stop()
        await backend.close()
    assert await job_containers(job.job_name) == []


def archive_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "evalkit-archive"]


async def test_exec_timeout_kills_every_process_started_since_start(env: DockerEnvironment):
    result = await env.exec(
        "setsid sleep 600 </dev/null >/dev/null 2>&1 & sleep 601 & echo started; rm -rf /tmp/* /tmp/.[!.]*; wait", timeout_sec=1
    )
    assert result.timed_out and result.exit_code is None
    assert result.output == "started\n"
    left = await env.exec("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    assert "sleep 60" not in left.output and "sleep infinity" in left.output  # the keep-alive was in the baseline
    ok = await env.exec("exit 7")
    assert (ok.exit_code, ok.timed_out) == (7, False)


async def test_kill_agent_processes_reaches_setsid_daemons_and_spares_the_baseline(env: DockerEnvironment):
    await env.exec(
        "mkdir -p /tests && echo planted > /tests/conftest.py && echo 1 > /logs/verifier/reward.txt && "
        "for i in 1 2 3; do setsid sh -c 'while :; do echo 1 > /logs/verifier/reward.txt; sleep 0.1; done' </dev/null >/dev/null 2>&1 & done",
        user="root",
    )
    assert await env.kill_agent_processes(then_empty=["/tests", "/logs/verifier"]) >= 3
    left = await env.exec("n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo $n; ls -A /tests /logs/verifier; stat -c %a /tests /logs/verifier")
    # init, Harbor's keep-alive (`sh -c "exec sleep infinity"`: the shell became its sleep), this shell
    assert left.output.split() == ["3", "/logs/verifier:", "/tests:", "777", "777"]
    assert await env.kill_agent_processes() == 0  # idempotent
    with pytest.raises(ValueError, match="absolute paths below /"):
        await env.kill_agent_processes(then_empty=["/"])


async def test_a_container_over_its_pids_limit_still_has_its_processes_killed(env: DockerEnvironment):
    await env.exec("for i in $(seq 10); do setsid sleep 600 </dev/null >/dev/null 2>&1 & done")
    async with aiodocker.Docker() as docker:  # below what runs: no process in the container can fork
        await docker._query_json(f"containers/{env._running().id}/update", method="POST", data={"PidsLimit": 5})
    assert (await env.exec("sleep 0 & wait")).output.strip().endswith("Resource temporarily unavailable")
    assert await env.kill_agent_processes(then_empty=["/tests"]) == 10
    left = await env.exec("n=0; for p in /proc/[0-9]*; do n=$((n + 1)); done; echo $n; cat /sys/fs/cgroup/pids/pids.max")
    assert left.output.split() == ["3", "5"]  # init, the keep-alive, this shell


async def test_logs_directories_are_made_inside_the_container_for_any_user(env: DockerEnvironment):
    result = await env.exec("stat -c '%a %U' /logs/agent /logs/verifier /logs/artifacts; echo x > /logs/agent/x", user="nobody")
    assert result.output == "777 root\n777 root\n777 root\n" and result.exit_code == 0


async def test_read_file_takes_only_a_bounded_regular_file(env: DockerEnvironment):
    await env.exec(
        "cd /logs/verifier && printf 0.5 > ok.txt && ln -s /etc/hostname link && mkfifo fifo && mkdir dir "
        "&& ln -s /dev/zero zero && head -c 70000 /dev/zero > big && : > empty",
        user="root",
    )
    assert await env.read_file("/logs/verifier/ok.txt", max_bytes=100) == b"0.5"
    assert await env.read_file("/logs/verifier/empty", max_bytes=100) == b""
    with pytest.raises(FileMissingError, match=r"^/logs/verifier/nope does not exist$"):
        await env.read_file("/logs/verifier/nope", max_bytes=100)
    for name, kind in (("link", "symbolic link"), ("fifo", "FIFO"), ("dir", "directory"), ("zero", "symbolic link")):
        with pytest.raises(NotARegularFileError) as caught:
            await env.read_file(f"/logs/verifier/{name}", max_bytes=100)
        assert str(caught.value) == f"/logs/verifier/{name} is a {kind}, not a regular file"
    with pytest.raises(NotARegularFileError, match=r"^/dev/null is a character device, not a regular file$"):
        await env.read_file("/dev/null", max_bytes=100)
    with pytest.raises(FileTooLargeError, match=r"^/logs/verifier/big is larger than 65536 bytes \(70000\)$"):
        await env.read_file("/logs/verifier/big", max_bytes=65536)
    assert archive_threads() == []
    fifo_readers = await env.exec("ls -l /proc/[0-9]*/fd 2>/dev/null | grep -c fifo")
    assert fifo_readers.output.strip() == "0"  # nobody ever opened the FIFO


async def test_download_copies_files_and_directories_only(env: DockerEnvironment, tmp_path: Path):
    await env.exec(
        "cd /logs/agent && mkdir -p a/b && echo deep > a/b/deep.txt && echo top > top.txt && ln -s /etc/passwd link "
        "&& ln -s / rootlink && mkfifo fifo && ln top.txt hard.txt && echo mine > trajectory.jsonl "
        "&& echo theirs > existing.txt && printf '%s' \"$(printf 'x%.0s' $(seq 300))\" > 'wei\trd'"
    )
    target = tmp_path / "agent"
    target.mkdir()
    (target / "existing.txt").write_text("host\n")
    report = await env.download("/logs/agent", target, max_bytes=1 << 20, max_files=100, reserved={"trajectory.jsonl"})
    # Two names of one file: the archive carries the first as a file, the second as a link to it.
    first, second = sorted(["top.txt", "hard.txt"], key=lambda n: (target / n).exists(), reverse=True)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == sorted(
        ["a", "a/b", "a/b/deep.txt", "existing.txt", first, "wei\trd"]
    )
    assert (target / "a/b/deep.txt").read_text() == "deep\n" and (target / "existing.txt").read_text() == "host\n"
    assert (target / first).read_text() == "top\n"
    assert sorted(report.skipped) == sorted([
        "existing.txt: already present on the host; kept",
        "fifo: FIFO",
        "link: symbolic link",
        "rootlink: symbolic link",
        f"{second}: hard link",
        "trajectory.jsonl: reserved for the host's own file",
    ])
    assert (report.files, report.n_skipped, report.truncated, report.error) == (3, 6, False, None)
    assert all(oct(p.stat().st_mode & 0o777) in ("0o644", "0o755") for p in target.rglob("*"))
    assert archive_threads() == []


async def test_download_caps_bytes_and_entries(env: DockerEnvironment, tmp_path: Path):
    await env.exec("cd /logs/artifacts && head -c 1500 /dev/zero > big && for i in $(seq 20); do echo $i > f$i; done")
    capped = await env.download("/logs/artifacts", tmp_path / "by-size", max_bytes=1000, max_files=100)
    assert not (tmp_path / "by-size" / "big").exists()
    assert capped.skipped == ["big: 1500 bytes, over the download cap of 1000"]
    assert capped.files == 20 and not capped.truncated  # a file over the cap is skipped, the rest still come
    few = await env.download("/logs/artifacts", tmp_path / "by-count", max_bytes=1 << 20, max_files=5)
    assert few.truncated and few.files + few.n_skipped == 5
    assert len(list((tmp_path / "by-count").iterdir())) == few.files
    await env.exec("head -c 5000 /dev/zero > /logs/artifacts/huge")
    stopped = await env.download("/logs/artifacts", tmp_path / "stopped", max_bytes=1000, max_files=100)
    assert stopped.truncated  # not even worth streaming past: the copy stops there
    assert "huge: 5000 bytes, over the download cap of 1000" in stopped.skipped


async def test_download_of_a_directory_replaced_by_a_link_takes_nothing(env: DockerEnvironment, tmp_path: Path):
    await env.exec("rm -rf /logs/artifacts && ln -s /etc /logs/artifacts", user="root")
    report = await env.download("/logs/artifacts", tmp_path / "artifacts", max_bytes=1 << 20, max_files=100)
    assert report.skipped == ["artifacts: symbolic link instead of a directory; nothing downloaded"]
    assert list((tmp_path / "artifacts").iterdir()) == []


async def test_containers_are_hardened_and_limited(env: DockerEnvironment):
    envelope = await env.exec(
        "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; cat /sys/fs/cgroup/pids/pids.max; "
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
        user="root",
    )
    caps, nnp, pids, memory, quota, period = envelope.output.split("\n")[:6]
    effective = int(caps.split()[1], 16)
    for bit in (13, 27, 29, 18):  # NET_RAW, MKNOD, AUDIT_WRITE, SYS_CHROOT
        assert not effective & (1 << bit)
    assert effective & (1 << 0)  # CHOWN stays: package installs use it
    assert nnp.split() == ["NoNewPrivs:", "1"]
    assert (pids, memory) == ("64", str(512 * 1024 * 1024))
    assert int(quota) == int(period)  # one CPU


async def test_container_names_are_unique_per_try_whatever_the_task_name(tmp_path: Path):
    job_id = str(uuid.uuid4())
    names = {container_name(job_id, n) for n in ("任务__0", "工作__0", "a b__0", "a+b__0", "x.y__0")}
    assert len(names) == 5
    assert container_name("cj", "x.y__0") != container_name("cj.x", "y__0")
    assert container_name(job_id, "a b__0").startswith(f"evalkit-{job_id.replace('-', '')[:12]}-a-b__0-")
    tasks = tmp_path / "tasks"
    for name in ("任务", "工作"):
        write_task(tasks, name)
    result = await evaluate({"job_name": f"engine-names-{uuid.uuid4().hex[:6]}", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                             "n_concurrent": 2, "dataset": {"path": str(tasks)}})
    assert [t.rewards for t in result.trials] == [{"reward": 1.0}] * 2


async def test_a_remote_engine_refuses_mounts_naming_the_setting(tmp_path: Path):
    from evalkit.environments.docker import DockerBackend

    task = load_task(write_task(tmp_path / "tasks", "t"))
    backend = await connect_backend(EnvironmentConfig(), JobIdentity(str(uuid.uuid4()), "engine-remote", tmp_path))
    assert isinstance(backend, DockerBackend)
    try:
        backend.host, backend.local = "tcp://build-box:2375", False  # what connect() records for such an address
        backend.environment(task, spec())  # no mounts: fine
        with pytest.raises(ConfigError) as caught:
            backend.environment(task, spec(mounts=(Mount(tmp_path, "/opt/x"),)))
        assert str(caught.value).startswith(
            "environment.docker_host: the engine at tcp://build-box:2375 is not a local socket, so host paths "
            "cannot be mounted into its containers (/opt/x)"
        )
    finally:
        await backend.close()


def test_mounts_are_read_only_by_construction(tmp_path: Path):
    with pytest.raises(ValueError, match="read-write mounts are not offered"):
        Mount(tmp_path, "/x", read_only=False)


async def test_agent_cannot_see_tests(tmp_path: Path):
    write_task(
        tmp_path / "tasks",
        "peek",
        solve="if [ -e /tests ]; then echo saw > /tmp/out.txt; else echo done > /tmp/out.txt; fi",
        test='test "$(cat /tmp/out.txt)" = done && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt',
    )
    result = await evaluate({"job_name": f"engine-peek-{uuid.uuid4().hex[:6]}", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                             "dataset": {"path": str(tmp_path / "tasks")}})
    assert [t.rewards for t in result.trials] == [{"reward": 1.0}]


async def test_image_built_once_across_trials_and_jobs(tmp_path: Path):
    marker = uuid.uuid4().hex  # a build context no earlier run has seen
    write_task(tmp_path / "tasks", "fresh", dockerfile=f"FROM debian:bookworm-slim\nRUN echo {marker} > /marker\n")
    config = {**HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "n_attempts": 3, "n_concurrent": 3, "dataset": {"path": str(tmp_path / "tasks")}}
    first = await evaluate({**config, "job_name": f"engine-build-a-{marker[:6]}"})
    assert first.summary.mean_reward == 1.0
    assert (first.summary.images.built, first.summary.images.reused) == (1, 0)
    assert marker in (first.job_dir / "images" / "fresh.log").read_text()
    second = await evaluate({**config, "job_name": f"engine-build-b-{marker[:6]}"})
    assert second.summary.mean_reward == 1.0
    assert (second.summary.images.built, second.summary.images.reused) == (0, 1)
    assert not (second.job_dir / "images" / "fresh.log").exists()


async def test_ca_bundle_is_mounted_read_only_and_advertised(tmp_path: Path):
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nevalkit-test-ca\n-----END CERTIFICATE-----\n")
    write_task(
        tmp_path / "tasks",
        "ca",
        solve='grep -q evalkit-test-ca "$SSL_CERT_FILE" && ! echo x >> /etc/ssl/certs/ca-certificates.crt && echo done > /tmp/out.txt',
    )
    result = await evaluate(
        {"job_name": f"engine-ca-{uuid.uuid4().hex[:6]}", **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tmp_path / "tasks")},
         "environment": {"ca_bundle": str(bundle), "network_mode": "host"}}
    )
    assert [t.rewards for t in result.trials] == [{"reward": 1.0}]
    assert "evalkit-test-ca" in bundle.read_text() and "x\n" not in bundle.read_text()
    assert os.stat(bundle).st_mode & 0o777 == 0o644  # untouched
