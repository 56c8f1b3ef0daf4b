"""The Docker environment's contract, checked in real containers: timeouts really kill, tests arrive only
after the agent, images are built once across trials and jobs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from evalkit import evaluate
from evalkit.environments import DockerEngine, DockerEnvironment
from evalkit.tasks import load_task
from tests.conftest import job_containers, write_task

pytestmark = pytest.mark.docker


async def test_exec_timeout_kills_the_whole_process_group(tmp_path: Path):
    task = load_task(write_task(tmp_path / "tasks", "t"))
    async with await DockerEngine.connect(docker_host=None, job_name="env-timeout") as engine:
        env = DockerEnvironment(
            engine, task, trial_name="t__0", trial_dir=tmp_path / "trial", network_mode="none",
            build_timeout_sec=300, start_timeout_sec=60,
        )
        try:
            await env.start()
            result = await env.exec("sleep 600 & sleep 601 & echo started; wait", timeout_sec=1)
            assert result.timed_out and result.exit_code is None
            assert result.output == "started\n"
            left = await env.exec("cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
            assert "sleep 60" not in left.output
            ok = await env.exec("exit 7")
            assert (ok.exit_code, ok.timed_out) == (7, False)
        finally:
            await env.stop()
    assert await job_containers("env-timeout") == []


async def test_agent_cannot_see_tests(tmp_path: Path):
    write_task(
        tmp_path / "tasks",
        "peek",
        solve="if [ -e /tests ]; then echo saw > /tmp/out.txt; else echo done > /tmp/out.txt; fi",
        test='test "$(cat /tmp/out.txt)" = done && echo 1 > /logs/verifier/reward.txt || echo 0 > /logs/verifier/reward.txt',
    )
    result = await evaluate({"job_name": "peek", "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tmp_path / "tasks")}})
    assert [t.rewards for t in result.trials] == [{"reward": 1.0}]


async def test_image_built_once_across_trials_and_jobs(tmp_path: Path):
    marker = uuid.uuid4().hex  # a build context no earlier run has seen
    write_task(tmp_path / "tasks", "fresh", dockerfile=f"FROM debian:bookworm-slim\nRUN echo {marker} > /marker\n")
    config = {"jobs_dir": str(tmp_path / "jobs"), "n_attempts": 3, "n_concurrent": 3, "dataset": {"path": str(tmp_path / "tasks")}}
    first = await evaluate({**config, "job_name": "build-a"})
    assert first.summary.mean_reward == 1.0
    assert len(list((tmp_path / "jobs" / "build-a").glob("*/environment/build.log"))) == 1
    second = await evaluate({**config, "job_name": "build-b"})
    assert second.summary.mean_reward == 1.0
    assert list((tmp_path / "jobs" / "build-b").glob("*/environment/build.log")) == []


async def test_ca_bundle_is_mounted_read_only_and_advertised(tmp_path: Path):
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nevalkit-test-ca\n-----END CERTIFICATE-----\n")
    write_task(
        tmp_path / "tasks",
        "ca",
        solve='grep -q evalkit-test-ca "$SSL_CERT_FILE" && ! echo x >> /etc/ssl/certs/ca-certificates.crt && echo done > /tmp/out.txt',
    )
    result = await evaluate(
        {"job_name": "ca", "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tmp_path / "tasks")},
         "environment": {"ca_bundle": str(bundle)}}
    )
    assert [t.rewards for t in result.trials] == [{"reward": 1.0}]
    assert "evalkit-test-ca" in bundle.read_text() and "x\n" not in bundle.read_text()
