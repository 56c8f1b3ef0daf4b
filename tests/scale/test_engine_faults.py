"""The engine going away and an engine elsewhere, for real: a Docker daemon this test starts itself (its own
socket, data root, exec root and pidfile) is stopped and restarted mid-job, and the job still scores every
trial once; the shared engine reached over TCP through a forwarder (no shared filesystem assumed) runs
the smoke benchmark with exact outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import aiohttp
import pytest

from evalkit import evaluate
from tests.conftest import BENCHMARKS, expected_outcomes, job_containers, write_task
from tests.conftest import unique

pytestmark = pytest.mark.docker

MINBASE = Path.home() / ".cache" / "evalkit" / "bookworm-minbase.tar"


class PrivateEngine:
    """A dockerd of our own, started and stopped by PID; never the shared one."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ek-", dir="/tmp"))  # short: a socket path has ~100 bytes
        self.socket = self.root / "d.sock"
        self.host = f"unix://{self.socket}"
        (self.root / "daemon.json").write_text("{}")
        tag = self.root.name.replace("-", "")
        self.args = [
            "dockerd", f"--host={self.host}", f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'd.pid'}", f"--config-file={self.root / 'daemon.json'}", "--bridge=none",
            "--iptables=false", "--ip-masq=false", f"--containerd-namespace={tag}", f"--containerd-plugins-namespace={tag}p",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        log = (self.root / "dockerd.log").open("ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=log, start_new_session=True)
        for _ in range(300):
            if await self.answers():
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the private dockerd did not answer: {(self.root / 'dockerd.log').read_text()[-2000:]}")

    async def answers(self) -> bool:
        try:
            async with aiohttp.UnixConnector(str(self.socket)) as connector, aiohttp.ClientSession(connector=connector) as http:
                async with http.get("http://localhost/_ping", timeout=aiohttp.ClientTimeout(total=2)) as response:
                    return response.status == 200
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            await asyncio.to_thread(self.process.wait, 60)
        self.process = None

    def leftover_pids(self) -> list[int]:
        """Processes started for this daemon (its containerd, shims) that outlived it."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if str(self.root).encode() in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids

    async def close(self) -> None:
        await self.stop()
        for pid in self.leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        subprocess.run(["umount", "-R", "-l", str(self.root / "exec")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
async def engine() -> AsyncIterator[PrivateEngine]:
    engine = PrivateEngine()
    try:
        await engine.start()
        async with aiodocker.Docker(url=engine.host) as docker:
            with MINBASE.open("rb") as tar:
                async with docker._query("images/create", method="POST", data=tar, timeout=None,
                                         params={"fromSrc": "-", "repo": "debian", "tag": "bookworm-slim"},
                                         headers={"Content-Type": "application/x-tar"}) as response:
                    await response.read()
        yield engine
    finally:
        await engine.close()
    assert engine.leftover_pids() == []


async def containers_of(host: str, job_name: str, **filters: list[str]) -> list[dict]:
    async with aiodocker.Docker(url=host) as docker:
        found = await docker.containers.list(all=True, filters={"label": [f"evalkit.job={job_name}"], **filters})
        return [c._container for c in found]


async def test_an_engine_restart_mid_job_pauses_the_queue_and_every_trial_is_scored_once(tmp_path: Path, engine: PrivateEngine):
    for i in range(8):
        write_task(tmp_path / "tasks", f"r{i}", solve="sleep 3; echo done > /tmp/out.txt")
    name = unique("restart")
    config = {"job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_concurrent": 4,
              "environment": {"docker_host": engine.host, "network_mode": "host"}, "dataset": {"path": str(tmp_path / "tasks")}}
    job = asyncio.ensure_future(evaluate(config))
    try:
        for _ in range(600):
            if len(await containers_of(engine.host, name, status=["running"])) >= 2 or job.done():
                break
            await asyncio.sleep(0.1)
        assert not job.done()
        await engine.stop()  # SIGTERM: the daemon kills its containers and goes away
        await asyncio.sleep(3)
        assert not job.done()  # waiting for the engine, not burning trials
        await engine.start()
        result = await asyncio.wait_for(job, timeout=600)
    finally:
        job.cancel()
    summary = result.summary
    assert (summary.status, summary.n_trials, summary.n_finished, summary.errors, summary.mean_reward) == ("finished", 8, 8, {}, 1.0)
    assert set(summary.trials) == {f"r{i}__0" for i in range(8)}  # each trial scored once: one final try
    outages = [json.loads(p.read_text()) for p in (tmp_path / "jobs" / name).glob("*/result.json")]
    hit = [r for r in outages if r["outage"]]
    assert hit and all(r["will_retry"] and r["error"]["type"] == "DockerUnavailableError" for r in hit)
    assert all(r["error"]["kind"] == "infrastructure" for r in hit)
    assert await containers_of(engine.host, name) == []

    # A container an earlier run could not remove is swept even when a resume has nothing to run.
    job_id = json.loads((tmp_path / "jobs" / name / "job.json").read_text())["job_id"]
    async with aiodocker.Docker(url=engine.host) as docker:
        await docker.containers.create({"Image": "debian:bookworm-slim", "Cmd": ["true"],
                                        "Labels": {"evalkit.job": name, "evalkit.job_id": job_id}})
    assert len(await containers_of(engine.host, name)) == 1
    resumed = await evaluate(config)
    assert resumed.summary.n_tries == summary.n_tries
    assert await containers_of(engine.host, name) == []


class Forwarder:
    """127.0.0.1:<port> → the shared engine's socket: the engine as a remote client sees it."""

    def __init__(self, socket: str = "/var/run/docker.sock") -> None:
        self.socket = socket
        self.connections = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Forwarder:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.socket)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            writer.close()
            self.tasks.discard(task)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(1 << 16):
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            sink.close()


async def test_a_remote_engine_runs_the_smoke_benchmark_through_the_seam(tmp_path: Path):
    expected = expected_outcomes("evalkit-smoke")
    name = unique("remote")
    async with Forwarder() as forwarder:
        result = await evaluate({"job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_concurrent": 4,
                                 "environment": {"docker_host": f"tcp://127.0.0.1:{forwarder.port}", "network_mode": "host"},
                                 "dataset": {"tasks": [{"path": str(BENCHMARKS / "evalkit-smoke" / t)} for t in expected]}})
        assert forwarder.connections > 0  # every engine call went through the "remote" address
    outcomes = {t.task_name: {"rewards": t.rewards, "error": t.error and t.error.type} for t in result.trials}
    assert outcomes == expected
    assert all(t.downloads["evaluation"].files >= 1 for t in result.trials)  # results came back as archives
    assert await job_containers(name) == []
