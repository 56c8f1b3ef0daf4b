"""Tasks in Docker containers, driven through the Engine API (aiodocker), never the `docker` CLI.

`DockerEngine` is one API connection shared by a job: the image cache, the build limit, archives of task
directories, and leaked-container clean-up. `DockerEnvironment` is one trial's container.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp

from evalkit.cleanup import uncancellable
from evalkit.environments.base import ExecResult
from evalkit.environments.images import ImageBuilder, tar_directory
from evalkit.errors import EnvironmentStartError, InfrastructureError
from evalkit.tasks import Task

logger = logging.getLogger(__name__)
LABEL_JOB = "evalkit.job"
LABEL_TRIAL = "evalkit.trial"
_OUTPUT_CAP = 1 << 20
_CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "PIP_CERT", "CURL_CA_BUNDLE")
_CA_PATH = "/etc/ssl/certs/ca-certificates.crt"


def default_docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


class DockerEngine:
    """A job's connection to the Docker engine. Use as `async with DockerEngine.connect(...) as engine`."""

    def __init__(self, client: aiodocker.Docker, *, job_name: str, n_concurrent_builds: int) -> None:
        self.client = client
        self.job_name = job_name
        self.images = ImageBuilder(client, n_concurrent=n_concurrent_builds, job_name=job_name)
        self._archives: dict[tuple[Path, str], asyncio.Task[bytes]] = {}
        self._removals: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(cls, *, docker_host: str | None, job_name: str, n_concurrent_builds: int = 1) -> DockerEngine:
        """Open the API connection and check the engine answers; InfrastructureError if it does not."""
        host = docker_host or default_docker_host()
        try:
            client = aiodocker.Docker(url=host)
        except (ValueError, OSError) as exc:
            raise InfrastructureError(f"cannot use Docker engine address {host!r}: {exc}") from None
        try:
            await asyncio.wait_for(client.version(), timeout=15)
        except (aiohttp.ClientError, aiodocker.DockerError, OSError, asyncio.TimeoutError) as exc:
            await client.close()
            raise InfrastructureError(
                f"the Docker engine at {host} is unreachable ({type(exc).__name__}: {exc}). "
                "Start it with `bash scripts/setup.sh` (or `bash scripts/docker-engine.sh`), "
                "or point environment.docker_host / DOCKER_HOST at a running engine."
            ) from None
        return cls(client, job_name=job_name, n_concurrent_builds=n_concurrent_builds)

    async def close(self) -> None:
        """Wait for every container removal still under way, then close the connection."""
        for task in self._archives.values():
            task.cancel()
        try:
            await uncancellable(asyncio.gather(*self._removals))
        finally:
            await self.client.close()

    def remove_soon(self, container: aiodocker.containers.DockerContainer) -> None:
        """Remove a container without making its trial wait: the next trial starts while Docker tears this
        one down. The engine owns the removal and `close()` waits for it, so none is ever lost."""
        task = asyncio.ensure_future(self._remove_logged(container))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def __aenter__(self) -> DockerEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @staticmethod
    async def _remove_logged(container: aiodocker.containers.DockerContainer) -> None:
        try:
            await _remove(container)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            # Labelled with its job: the next run of the job (or `evalkit clean`) removes it.
            logger.warning("could not remove container %s: %s", container.id[:12], exc)

    async def archive(self, source: Path, target: str) -> bytes:
        """A tar of `source` laid out under `target`, built once per job in a thread (tests/, solution/)."""
        key = (source, target)
        if key not in self._archives:
            self._archives[key] = asyncio.ensure_future(asyncio.to_thread(tar_directory, source, target.strip("/")))
        return await asyncio.shield(self._archives[key])

    async def remove_containers(self, job_name: str | None) -> int:
        """Remove evalkit's containers: one job's (left by a crashed run of it), or every job's (None)."""
        label = f"{LABEL_JOB}={job_name}" if job_name else LABEL_JOB
        containers = await self.client.containers.list(all=True, filters={"label": [label]})
        await asyncio.gather(*(_remove(c) for c in containers))
        return len(containers)


async def _remove(container: aiodocker.containers.DockerContainer) -> None:
    try:
        await container.delete(force=True, v=True)
    except aiodocker.DockerError as exc:
        if exc.status not in (404, 409):  # gone already, or removal already in progress
            raise


class DockerEnvironment:
    """One trial's container: built from the task, labelled, limited, with /logs bind-mounted."""

    def __init__(
        self,
        engine: DockerEngine,
        task: Task,
        *,
        trial_name: str,
        trial_dir: Path,
        network_mode: str,
        build_timeout_sec: float | None,
        start_timeout_sec: float | None,
        ca_bundle: Path | None = None,
        keep: bool = False,
    ) -> None:
        self.engine = engine
        self.task = task
        self.trial_name = trial_name
        self.trial_dir = trial_dir
        self.network_mode = "none" if task.config.environment.network_mode == "no-network" else network_mode
        self.build_timeout_sec = build_timeout_sec
        self.start_timeout_sec = start_timeout_sec
        self.ca_bundle = ca_bundle
        self.keep = keep
        self._container: aiodocker.containers.DockerContainer | None = None

    @property
    def log_mounts(self) -> dict[str, Path]:
        """Container path → host directory; what the agent and verifier write lands in the trial directory."""
        return {
            "/logs/agent": self.trial_dir / "agent",
            "/logs/verifier": self.trial_dir / "evaluation",
            "/logs/artifacts": self.trial_dir / "artifacts",
        }

    async def start(self) -> None:
        image = await self.engine.images.ensure(
            self.task, timeout_sec=self.build_timeout_sec, log_path=self.trial_dir / "environment" / "build.log"
        )
        try:
            async with asyncio.timeout(self.start_timeout_sec):
                self._container = await self.engine.client.containers.create(self._create_config(image), name=self._name())
                await self._container.start()
        except TimeoutError:
            raise EnvironmentStartError(f"container did not start within {self.start_timeout_sec:.0f} s") from None
        except aiodocker.DockerError as exc:
            raise EnvironmentStartError(f"container failed to start: {exc.message}") from None

    def _name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", f"evalkit.{self.engine.job_name}.{self.trial_name}")[:200]

    def _create_config(self, image: str) -> dict[str, Any]:
        env_cfg = self.task.config.environment
        binds = []
        for target, host_dir in self.log_mounts.items():
            host_dir.mkdir(parents=True, exist_ok=True)
            host_dir.chmod(0o777)  # the task's user may not be root
            binds.append(f"{host_dir.resolve()}:{target}")
        env = dict(self.task.config.environment.env)
        if self.ca_bundle is not None:
            binds.append(f"{self.ca_bundle.resolve()}:{_CA_PATH}:ro")
            env.update({name: _CA_PATH for name in _CA_ENV})
        host_config: dict[str, Any] = {"Init": True, "NetworkMode": self.network_mode, "Binds": binds}
        if env_cfg.cpus:
            host_config["NanoCpus"] = int(env_cfg.cpus * 1e9)
        if env_cfg.memory_mb:
            host_config["Memory"] = env_cfg.memory_mb * 1024 * 1024
        config: dict[str, Any] = {
            "Image": image,
            # Tasks' images may define their own entrypoint; the container only has to stay up for execs.
            "Entrypoint": ["sleep"],
            "Cmd": ["infinity"],
            "Labels": {LABEL_JOB: self.engine.job_name, LABEL_TRIAL: self.trial_name},
            "Env": [f"{k}={v}" for k, v in env.items()],
            "HostConfig": host_config,
        }
        if env_cfg.workdir:
            config["WorkingDir"] = env_cfg.workdir
        return config

    def _running(self) -> aiodocker.containers.DockerContainer:
        if self._container is None:
            raise RuntimeError("the environment is not started")
        return self._container

    async def exec(
        self,
        command: str,
        *,
        timeout_sec: float | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
    ) -> ExecResult:
        container = self._running()
        # The exec'd process leads its own process group; remembering its pid lets a timeout kill the group.
        pidfile = f"/tmp/.evalkit-exec-{uuid.uuid4().hex}.pid"
        execution = await container.exec(
            ["sh", "-c", f'echo $$ > {pidfile}; exec bash -c "$0"', command],
            stdout=True,
            stderr=True,
            user=user or "",
            environment=env or None,
            workdir=workdir,
        )
        chunks: list[bytes] = []
        size = 0
        timed_out = False
        async with execution.start(detach=False) as stream:
            try:
                async with asyncio.timeout(timeout_sec):
                    while (message := await stream.read_out()) is not None:
                        if size < _OUTPUT_CAP:
                            chunks.append(message.data)
                            size += len(message.data)
            except TimeoutError:
                timed_out = True
                await self._kill_group(pidfile)
        if timed_out:
            return ExecResult(exit_code=None, output=_decode(chunks), timed_out=True)
        return ExecResult(exit_code=await _exit_code(execution), output=_decode(chunks))

    async def _kill_group(self, pidfile: str) -> None:
        """SIGKILL the timed-out command's process group and wait until that is done, so nothing it
        started can still write while the next phase (the verifier) runs."""
        kill = await self._running().exec(
            # No `--` before the negative pid: dash's kill rejects it.
            ["sh", "-c", f'p=$(cat {pidfile} 2>/dev/null) && {{ kill -KILL "-$p" || kill -KILL "$p"; }} 2>/dev/null; true'],
            user="root",
        )
        async with kill.start(detach=False) as stream:
            while await stream.read_out() is not None:
                pass

    async def put(self, source: Path, target: str) -> None:
        data = await self.engine.archive(source, target)
        await self._running().put_archive("/", data)

    async def stop(self) -> None:
        container, self._container = self._container, None
        if container is not None and not self.keep:
            self.engine.remove_soon(container)


async def _exit_code(execution: aiodocker.execs.Exec) -> int | None:
    # The stream can close a moment before the engine records the exit code.
    for delay in (0, 0.01, 0.05, 0.1, 0.25, 0.5):
        await asyncio.sleep(delay)
        info = await execution.inspect()
        if not info.get("Running"):
            return info.get("ExitCode")
    return None


def _decode(chunks: list[bytes]) -> str:
    return b"".join(chunks)[:_OUTPUT_CAP].decode("utf-8", errors="replace")
