"""The Environment contract through a Ray node: hostile container files come back only as a local run lets
them (the driver unpacks the node's tar with the same rules), errors keep their type, message and fields,
an exec timeout still kills, and a node's containers and scratch files are gone after close."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from evalkit.config import EnvironmentConfig
from evalkit.environments import FileMissingError, FileTooLargeError, JobIdentity, NotARegularFileError, connect_backend
from evalkit.environments.ray_cluster import RayBackend
from evalkit.tasks import load_task
from tests.conftest import job_containers, write_task
from tests.ray.conftest import NODE_B, RayTestCluster
from tests.test_environment import spec

pytestmark = pytest.mark.docker


async def test_files_and_errors_through_a_node(ray_cluster: RayTestCluster, tmp_path: Path):
    task = load_task(write_task(tmp_path / "tasks", "t"))
    job = JobIdentity(job_id=str(uuid.uuid4()), job_name=f"ray-env-{uuid.uuid4().hex[:8]}", job_dir=tmp_path / "job")
    config = EnvironmentConfig(backend="ray", ray={"resources": {NODE_B: 1}})
    backend = await connect_backend(config, job)
    assert isinstance(backend, RayBackend)
    env = backend.environment(task, spec(build_log=tmp_path / "job" / "t__0" / "environment" / "build.log"))
    try:
        await env.start()
        node_b = ray_cluster.node_ids()[NODE_B][:12]
        assert [d for d in ray_cluster.scratch_dirs() if d.startswith(f"evalkit-ray-{job.job_id}-") and f"-{node_b}-" in d]
        await env.exec(
            "mkdir -p /logs/agent/sub && echo ok > /logs/agent/sub/kept.txt && ln -s /etc/passwd /logs/agent/link && "
            "mkfifo /logs/agent/fifo && echo forged > /logs/agent/verdict.json && head -c 2048 /dev/zero > /tmp/big"
        )
        with pytest.raises(NotARegularFileError) as caught:
            await env.read_file("/logs/agent/link", max_bytes=100)
        assert (str(caught.value), caught.value.file_type) == ("/logs/agent/link is a symbolic link, not a regular file", "symbolic link")
        with pytest.raises(FileTooLargeError) as too_large:
            await env.read_file("/tmp/big", max_bytes=100)
        assert (str(too_large.value), too_large.value.size) == ("/tmp/big is larger than 100 bytes (2048)", 2048)
        with pytest.raises(FileMissingError, match="^/nope does not exist$"):
            await env.read_file("/nope", max_bytes=100)

        target = tmp_path / "job" / "t__0" / "agent"
        target.mkdir(parents=True)
        (target / "sub").mkdir()
        (target / "sub" / "kept.txt").write_text("host's own\n")  # already there: never overwritten
        report = await env.download("/logs/agent", target, max_bytes=10_000, max_files=100, reserved=("verdict.json",))
        assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["sub", "sub/kept.txt"]
        assert (target / "sub" / "kept.txt").read_text() == "host's own\n"
        assert report.error is None and report.files == 0
        assert {entry.split(":")[0] for entry in report.skipped} == {"link", "fifo", "sub/kept.txt", "verdict.json"}

        (tmp_path / "upload").mkdir()
        (tmp_path / "upload" / "in.txt").write_text("from the host\n")
        await env.put(tmp_path / "upload", "/data")
        assert (await env.read_file("/data/in.txt", max_bytes=100)) == b"from the host\n"
        timed = await env.exec("setsid sleep 600 </dev/null >/dev/null 2>&1 & echo started; wait", timeout_sec=1)
        assert (timed.timed_out, timed.exit_code, timed.output) == (True, None, "started\n")
        assert "sleep 600" not in (await env.exec("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")).output
    finally:
        await env.stop()
        await backend.close()
    assert await job_containers(job.job_name) == []
    assert [d for d in ray_cluster.scratch_dirs() if job.job_id in d] == []  # the node's scratch is gone
