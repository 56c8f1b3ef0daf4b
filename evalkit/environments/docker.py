"""The Docker backend: tasks in containers, driven through the Engine API (aiodocker), never the CLI.

`DockerBackend` is one job's connection to the engine: the image cache, the build limit, archives of task
directories, and removal of containers. `DockerEnvironment` is one try's container. Nothing is shared
with the host read-write: the `/logs` directories live inside the container and come back through
`download`; reward files through `read_file`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiodocker
import aiohttp

from evalkit.cleanup import uncancellable
from evalkit.environments.archive import (
    CHUNK,
    extraction_reader,
    read_tar_stream,
    routed_extraction_reader,
    single_file_reader,
)
from evalkit.environments.compose import KEEP_ALIVE, MAIN, ComposeProject, Service
from evalkit.environments.base import (
    LOG_DIRS,
    BackendHealth,
    DownloadTarget,
    EnvironmentSpec,
    ExecResult,
    FileMissingError,
    JobIdentity,
    NetworkMode,
)
from evalkit.environments.images import ImageStore, tar_directory
from evalkit.errors import (
    AgentProcessesSurvivedError,
    ConfigError,
    ContainerLostError,
    DockerUnavailableError,
    EnvironmentStartError,
    HealthcheckError,
    InfrastructureError,
)
from evalkit.lock import job_is_running
from evalkit.results import DownloadReport, ImageSummary, ResourceEnvelope
from evalkit.tasks import Task

if TYPE_CHECKING:
    from evalkit.config import EnvironmentConfig

logger = logging.getLogger(__name__)
LABEL_JOB = "evalkit.job"
LABEL_JOB_ID = "evalkit.job_id"
LABEL_JOB_DIR = "evalkit.job_dir"
LABEL_TRY = "evalkit.try"
LABEL_ROLE = "evalkit.role"
"""`agent` or `verifier`: which of a try's environments a container belongs to."""
LABEL_SERVICE = "evalkit.service"
"""The compose service a container runs (`main`, a sidecar's name, or `pod` for the namespace holder)."""
CAP_DROP = ("AUDIT_WRITE", "MKNOD", "NET_RAW", "SYS_CHROOT")
"""Removed from Docker's defaults: raw sockets (sniffing other trials' traffic on a shared network),
device nodes, audit writes and chroot, which tasks do not need. CHOWN, SETUID, KILL and the rest stay:
package installs and test suites use them."""
_OUTPUT_CAP = 1 << 20
_STORAGE_DRIVERS = {"btrfs", "devicemapper", "windowsfilter", "zfs"}
"""Drivers that cap a container's writable layer; overlay2 can too, on xfs with project quotas."""
_KILL_ROUNDS = 200
_CONTAINER_GONE = ("No such container", "is not running", "stopped state", "is restarting")
"""How the engine says a container is gone, whatever status code it picks (404, 409, 500)."""
KILL_TIMEOUT_SEC = 90.0
"""How long the kill script may take: on a machine loaded far beyond its cores (150 tries on 2 cores)
one exec can take tens of seconds to be scheduled."""
ARCHIVES_KEPT = 64
"""tests/ and solution/ tars kept per job, most recently used first."""
_KILLED = re.compile(r"killed=(\d+)")


def default_docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def is_local(docker_host: str) -> bool:
    """A Unix socket is this machine's engine; anything else may be another machine with its own paths."""
    return docker_host.startswith("unix://")


class _MeasuredDocker(aiodocker.Docker):
    """An Engine API client that records how long each call takes to answer and which calls failed: the
    health signal adaptive concurrency steers by."""

    health: BackendHealth

    async def _do_query(self, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            response = await super()._do_query(*args, **kwargs)
        except aiodocker.DockerError as exc:
            if exc.status >= 500 or exc.status == 900:
                self.health.failures += 1
            raise
        except (aiohttp.ClientError, OSError):
            self.health.failures += 1
            raise
        self.health.record(time.monotonic() - started)
        return response


async def open_client(docker_host: str | None) -> aiodocker.Docker:
    """A connection to the engine that answers; InfrastructureError if it does not. The connection pool is
    unbounded: long-running execs hold connections, and a kill must never wait for one."""
    host = docker_host or default_docker_host()
    try:
        if is_local(host):
            client = _MeasuredDocker(url=host, connector=aiohttp.UnixConnector(host.removeprefix("unix://"), limit=0))
            client.docker_host = "unix://localhost"  # what aiodocker sets when it makes the connector itself
        else:
            client = _MeasuredDocker(url=host, connector=aiohttp.TCPConnector(limit=0))
            client.docker_host = host.replace("tcp://", "http://", 1)
        client.health = BackendHealth()
    except (ValueError, OSError) as exc:
        raise InfrastructureError(f"cannot use Docker engine address {host!r}: {exc}") from None
    try:
        await asyncio.wait_for(client.version(), timeout=15)
    except (aiohttp.ClientError, aiodocker.DockerError, OSError, asyncio.TimeoutError) as exc:
        await close_client(client)
        raise InfrastructureError(
            f"the Docker engine at {host} is unreachable ({type(exc).__name__}: {exc}). "
            "Start it with `bash scripts/setup.sh` (or `bash scripts/docker-engine.sh`), "
            "or point environment.docker_host / DOCKER_HOST at a running engine."
        ) from None
    return client


async def close_client(client: aiodocker.Docker) -> None:
    """aiodocker closes only a connector it made itself; ours too."""
    try:
        await client.close()
    finally:
        await client.connector.close()


@contextmanager
def engine_errors(doing: str) -> Iterator[None]:
    """Docker's failures as trial errors: an engine that stopped answering is the machine's; a container
    that stopped or vanished is the container's (whoever killed it)."""
    try:
        yield
    except aiodocker.DockerError as exc:
        if exc.status == 900:  # aiodocker's code for "cannot connect"
            raise DockerUnavailableError(f"the Docker engine stopped answering while {doing}") from None
        if any(sign in exc.message for sign in _CONTAINER_GONE):
            raise ContainerLostError(f"the container stopped or vanished while {doing}: {exc.message}") from None
        raise
    except (aiohttp.ClientError, ConnectionError) as exc:
        raise DockerUnavailableError(f"the Docker engine stopped answering while {doing} ({type(exc).__name__})") from None


class DockerBackend:
    """One job's connection to a Docker engine. Create with `await DockerBackend.connect(...)`.

    Besides containers it owns the job's images (prepared ahead, evicted under the budget) and a watch on
    the engine: a lost connection (the daemon stopped or restarted) bumps `outages`, and `available()`
    waits, with backoff, until the engine answers again."""

    def __init__(self, client: aiodocker.Docker, job: JobIdentity, *, host: str, images: ImageStore,
                 storage_capable: bool, outage_timeout_sec: float = 600.0,
                 internet_network: NetworkMode | None = None) -> None:
        self.client = client
        self.internet_network = internet_network
        """`bridge` when the engine has its default bridge network, else None (this machine's engine)."""
        self.job = job
        self.host = host
        self.local = is_local(host)
        self.images = images
        self.storage_capable = storage_capable
        """Whether `StorageOpt` size limits work on this engine; found once, corrected by the first refusal."""
        self.outage_timeout_sec = outage_timeout_sec
        self.outages = 0
        """How many times the engine went away since the job started (a restart counts)."""
        self._up = asyncio.Event()
        self._up.set()
        self._suspect = asyncio.Event()
        """Set by a failed `answers()`: the watch stops trusting its event stream."""
        self._archives: OrderedDict[tuple[Path, str, frozenset[str]], asyncio.Task[bytes]] = OrderedDict()
        self._removals: set[asyncio.Task[None]] = set()
        self._entrypoints: dict[str, list[str]] = {}
        self._watch = asyncio.ensure_future(self._watch_engine())

    @classmethod
    async def connect(cls, config: EnvironmentConfig, job: JobIdentity) -> DockerBackend:
        host = config.docker_host or default_docker_host()
        client = await open_client(host)
        try:
            info = await client.system.info()
            version = await client.version()
        except (aiodocker.DockerError, aiohttp.ClientError) as exc:
            await close_client(client)
            raise InfrastructureError(f"the Docker engine at {host} does not describe itself: {exc}") from None
        driver_status = dict(info.get("DriverStatus") or [])
        storage_capable = info.get("Driver") in _STORAGE_DRIVERS or (
            info.get("Driver") == "overlay2" and driver_status.get("Backing Filesystem") == "xfs"
        )
        api = tuple(int(part) for part in str(version.get("ApiVersion", "1.0")).split(".")[:2])
        images = ImageStore(
            client,
            job_id=job.job_id,
            job_name=job.job_name,
            n_builds=config.n_concurrent_builds,
            n_pulls=config.n_concurrent_pulls,
            pull_timeout_sec=config.pull_timeout_sec,
            budget_bytes=image_budget(config.image_cache_gb, info.get("DockerRootDir") if is_local(host) else None),
            buildkit=api >= (1, 39) and info.get("OSType", "linux") == "linux",
            engine=str(version.get("Version", "")),
        )
        try:
            await client.networks.get("bridge")
            internet: NetworkMode | None = "bridge"
        except aiodocker.DockerError:  # `dockerd --bridge=none`: only host and none
            internet = None
        return cls(client, job, host=host, images=images, storage_capable=storage_capable,
                   outage_timeout_sec=config.outage_timeout_sec, internet_network=internet)

    def environment(self, task: Task, spec: EnvironmentSpec) -> DockerEnvironment:
        if spec.mounts and not self.local:
            raise ConfigError(
                f"environment.docker_host: the engine at {self.host} is not a local socket, so "
                f"host paths cannot be mounted into its containers ({', '.join(m.target for m in spec.mounts)}); "
                "remote engines work only without mounts (no environment.ca_bundle, no mounted agent runtime)"
            )
        return DockerEnvironment(self, task, spec)

    async def prepare(self, task: Task, *, timeout_sec: float | None, log_path: Path | None) -> None:
        """Every image a try of `task` runs (its own, compose sidecars', a separate verifier's), held."""
        await asyncio.gather(*(
            self.images.prepare(view, timeout_sec=timeout_sec,
                                log_path=Path(os.devnull) if log_path is None else _view_log(log_path, part))
            for part, view in await asyncio.to_thread(image_views, task)  # verifier plans look at the task's files
        ))

    async def release(self, task: Task) -> None:
        for _, view in await asyncio.to_thread(image_views, task):
            await self.images.release(view)

    @property
    def up(self) -> bool:
        return self._up.is_set()

    @property
    def image_summary(self) -> ImageSummary:
        return self.images.stats

    @property
    def health(self) -> BackendHealth:
        return self.client.health  # type: ignore[attr-defined, no-any-return]

    async def available(self) -> None:
        """Return once the engine answers (at once, unless it went away); InfrastructureError when it has
        not come back within `outage_timeout_sec`."""
        if self._up.is_set():
            return
        try:
            async with asyncio.timeout(self.outage_timeout_sec):
                await self._up.wait()
        except TimeoutError:
            raise InfrastructureError(
                f"the Docker engine at {self.host} has not answered for {self.outage_timeout_sec:g} s "
                "(environment.outage_timeout_sec); finished tries are kept, run the job again to resume it"
            ) from None

    async def answers(self) -> bool:
        """Whether the engine answers a ping now (a new connection, within seconds). When it does not, an
        outage starts here: new tries wait, and the watch waits for the engine to come back."""
        if not self._up.is_set():
            return False
        if await self._ping():
            return True
        self._suspect.set()
        if self._up.is_set():
            self._lost()
        return False

    def _lost(self) -> None:
        self.outages += 1
        self._up.clear()
        logger.warning("the Docker engine at %s went away; new tries wait until it answers", self.host)

    async def _ping(self) -> bool:
        try:
            async with asyncio.timeout(5):
                async with self.client._query("_ping", versioned_api=False) as response:
                    await response.read()
            return True
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _watch_engine(self) -> None:
        """Hold an event stream open: the daemon closes it when it stops, so even a quick restart is seen
        (and `answers()` reports a refused connection sooner, while a stopping daemon still holds it). Then
        ping with backoff until the engine answers, and remove what the outage left of this job's tries."""
        while True:
            stream = asyncio.ensure_future(self._follow_events())
            suspect = asyncio.ensure_future(self._suspect.wait())
            try:
                await asyncio.wait([stream, suspect], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (stream, suspect):
                    task.cancel()
                await asyncio.wait([stream, suspect])
            self._suspect.clear()
            if self._up.is_set():
                self._lost()
            delay = 0.2
            while not await self._ping():
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            logger.warning("the Docker engine at %s answers again", self.host)
            self._up.set()
            try:
                await self.sweep(stopped_only=True)
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                logger.warning("could not remove containers the outage left: %s", exc)

    async def _follow_events(self) -> None:
        try:
            async with self.client._query("events", params={"filters": '{"type":["daemon"]}'}, timeout=None) as response:
                async for _ in response.content:
                    pass
        except (aiodocker.DockerError, aiohttp.ClientError, OSError):
            pass

    async def sweep(self, *, stopped_only: bool = False, labels: Mapping[str, str] | None = None) -> int:
        """Remove every container of this job id (left by a killed run of it, or stopped by an engine
        restart); other jobs' are untouched. `stopped_only` spares those still running or being made;
        `labels` narrows it to those that also carry these labels (a lost cluster node's)."""
        extra = [f"{key}={value}" for key, value in (labels or {}).items()]
        filters: dict[str, list[str]] = {"label": [f"{LABEL_JOB_ID}={self.job.job_id}", *extra]}
        if stopped_only:
            filters["status"] = ["exited", "dead"]
        containers = await self.client.containers.list(all=True, filters=filters)
        await asyncio.gather(*(_remove(c) for c in containers))
        if not stopped_only:  # compose volumes of the job's tries (one in use is left, logged)
            label = {"label": filters["label"]}
            for volume in (await self.client.volumes.list(filters=label)).get("Volumes") or []:
                await _remove_volume(self.client, volume["Name"])
        return len(containers)

    async def close(self) -> None:
        """Wait for every container removal still under way, then close the connection."""
        self._watch.cancel()
        for task in self._archives.values():
            task.cancel()
        try:
            await uncancellable(asyncio.gather(*self._removals))
            await uncancellable(asyncio.wait([self._watch]))
            if self._up.is_set():  # what the last removals kept in use can go now
                await uncancellable(self.images.fit())
        finally:
            await close_client(self.client)

    def remove_soon(self, *containers: aiodocker.containers.DockerContainer, volumes: Collection[str] = ()) -> None:
        """Remove containers (then the volumes they used) without making their try wait: the next try starts
        while Docker tears these down. The backend owns the removal and `close()` waits for it, so none is
        ever lost."""
        task = asyncio.ensure_future(self._remove_group(containers, volumes))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove_group(self, containers: Collection[aiodocker.containers.DockerContainer], volumes: Collection[str]) -> None:
        await asyncio.gather(*(self._remove_logged(c) for c in containers))
        for volume in volumes:
            await _remove_volume(self.client, volume)

    async def image_entrypoint(self, image: str) -> list[str]:
        """The image's ENTRYPOINT (looked up once per image per job)."""
        if image not in self._entrypoints:
            self._entrypoints[image] = (await self.client.images.inspect(image)).get("Config", {}).get("Entrypoint") or []
        return self._entrypoints[image]

    async def _remove_logged(self, container: aiodocker.containers.DockerContainer) -> None:
        for delay in (1, 2, 4, None):  # a container with thousands of processes can outlast one kill
            try:
                await _remove(container)
                return
            except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
                if delay is None:
                    # Labelled with its job id: swept when the engine is back, by the next run of the job,
                    # or by `evalkit clean`.
                    logger.warning("could not remove container %s: %s", container.id[:12], exc)
                    return
                await asyncio.sleep(delay)
                await self._up.wait()

    async def archive(self, source: Path, target: str, executable: frozenset[str] = frozenset()) -> bytes:
        """A tar of `source` laid out under `target` (tests/, solution/), built once in a thread and kept
        for the next tries while it is among the most recently used (memory does not grow with tasks)."""
        key = (source, target, executable)
        if key not in self._archives:
            self._archives[key] = asyncio.ensure_future(asyncio.to_thread(tar_directory, source, target.strip("/"), executable))
            while len(self._archives) > ARCHIVES_KEPT:
                self._archives.popitem(last=False)[1].cancel()
        self._archives.move_to_end(key)
        return await asyncio.shield(self._archives[key])

    def labels(self, spec: EnvironmentSpec, service: str = MAIN) -> dict[str, str]:
        return {
            **spec.labels,
            LABEL_JOB: self.job.job_name,
            LABEL_JOB_ID: self.job.job_id,
            LABEL_JOB_DIR: str(self.job.job_dir),
            LABEL_TRY: spec.name,
            LABEL_ROLE: spec.role,
            LABEL_SERVICE: service,
        }


def image_views(task: Task) -> list[tuple[str, Task]]:
    """Every image a try of `task` runs, named by its part (`main`, a compose sidecar, `verifier` or
    `verifier-<step>`), each as a view of the task the image store treats like any task environment."""
    views = [(MAIN, task)]
    for service in task.compose.sidecars if task.compose is not None else ():
        views.append((service.name, task.with_image(context=service.build_context, docker_image=service.image)))
    plans = [(f"verifier-{step.name}", task.verifier_plan(step)) for step in task.steps] or [("verifier", task.verifier_plan())]
    for part, plan in plans:
        if plan.separate:
            views.append((part, task.with_image(context=plan.image_context, docker_image=plan.docker_image,
                                                environment=plan.environment)))
    return views


def _view_log(log: Path, part: str) -> Path:
    return log if part == MAIN else log.with_name(f"{log.stem}.{part}.log")


def image_budget(image_cache_gb: float | None, data_root: str | None) -> int | None:
    """`environment.image_cache_gb`, or half the free disk where the engine keeps images (when that is
    this machine); None (no budget) when neither is known."""
    if image_cache_gb is not None:
        return int(image_cache_gb * 1e9)
    if data_root is None:
        return None
    try:
        return shutil.disk_usage(data_root).free // 2
    except OSError:
        return None


def container_name(job_id: str, try_name: str, role: str = "agent", service: str = MAIN) -> str:
    """Unique per try whatever the task name: the job id and a hash of the try's name, plus a readable part
    (which may collide between names that differ only in characters Docker does not allow). A try's other
    containers (a separate verifier, compose services) add their role and service."""
    readable = re.sub(r"[^A-Za-z0-9_.-]", "-", try_name)[:40]
    digest = hashlib.sha256(try_name.encode()).hexdigest()[:12]
    name = f"evalkit-{job_id.replace('-', '')[:12]}-{readable}-{digest}"
    if role != "agent":
        name += f"-{role}"
    if service != MAIN:
        name += f"-{re.sub(r'[^A-Za-z0-9_.-]', '-', service)[:30]}-{hashlib.sha256(service.encode()).hexdigest()[:6]}"
    return name


async def _remove(container: aiodocker.containers.DockerContainer) -> None:
    try:
        await container.delete(force=True, v=True)
    except aiodocker.DockerError as exc:
        if exc.status not in (404, 409):  # gone already, or removal already in progress
            raise


async def _remove_volume(client: aiodocker.Docker, name: str) -> None:
    """Remove a compose volume of a try; one still in use or already gone is left (logged), the next sweep
    of the job removes it."""
    try:
        await client._query_json(f"volumes/{name}", method="DELETE")
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            logger.warning("could not remove volume %s: %s", name, exc.message)
    except (aiohttp.ClientError, OSError) as exc:
        logger.warning("could not remove volume %s: %s", name, exc)


async def remove_idle_containers(docker_host: str | None, job_name: str | None) -> tuple[int, list[str]]:
    """`evalkit clean`: remove evalkit's containers (one job's, or all) except those of jobs whose lock is
    held by a running process. Returns (removed, names of running jobs whose containers were kept)."""
    client = await open_client(docker_host)
    try:
        label = f"{LABEL_JOB}={job_name}" if job_name else LABEL_JOB
        containers = await client.containers.list(all=True, filters={"label": [label]})
        running: dict[str, bool] = {}
        doomed, kept = [], set()
        for container in containers:
            labels = container._container.get("Labels") or {}
            job_dir = labels.get(LABEL_JOB_DIR)
            if job_dir is not None:
                if job_dir not in running:
                    running[job_dir] = await asyncio.to_thread(job_is_running, Path(job_dir))
                if running[job_dir]:
                    kept.add(labels.get(LABEL_JOB, job_dir))
                    continue
            doomed.append(container)
        await asyncio.gather(*(_remove(c) for c in doomed))
        # Compose volumes go with their try's containers (a volume still in use is left for next time).
        for volume in (await client.volumes.list(filters={"label": [label]})).get("Volumes") or []:
            job_dir = (volume.get("Labels") or {}).get(LABEL_JOB_DIR)
            if job_dir is not None and job_dir not in running:
                running[job_dir] = await asyncio.to_thread(job_is_running, Path(job_dir))
            if job_dir is None or not running[job_dir]:
                await _remove_volume(client, volume["Name"])
        return len(doomed), sorted(kept)
    finally:
        await close_client(client)


# Process bookkeeping inside the container, in bash builtins: nothing forks while killing, so it works even
# when the agent has used up the container's pids limit. After the last ") " of /proc/<pid>/stat come field
# 3 (state) onwards, so field 22, the start time, is ${20}. A pid and its start time name one process for
# the container's life: the host keeps the baseline, out of the agent's reach, and passes it as arguments.
_LIST = r"""
list() {
  listed=()
  for f in /proc/[0-9]*/stat; do
    p=${f#/proc/}; p=${p%/stat}
    [[ $p == "$$" ]] && continue
    read -r line 2>/dev/null < "$f" || continue
    set -- ${line##*) }
    [[ $1 == Z ]] || listed+=("$p:${20}")
  done
}
"""
_START = _LIST + r"""
settle=$1; shift
mkdir -p "$@" && chmod 777 "$@" || exit 1
# The init process forks the keep-alive as the container starts: wait until it is there to be counted. When
# an image ENTRYPOINT runs first (settle=1), it may start services before exec'ing the keep-alive: wait
# until the process list has held still for three looks 0.1 s apart (at most ~5 s).
previous=""; stable=0; looks=0
for ((i = 0; i < 500; i++)); do
  list
  if ((${#listed[@]} >= 2)); then
    [[ $settle == 1 ]] || break
    current="${listed[*]}"
    if [[ $current == "$previous" ]]; then stable=$((stable + 1)); else stable=0; fi
    ((stable >= 3 || ++looks >= 50)) && break
    previous=$current
    sleep 0.1
  else
    sleep 0.01
  fi
done
echo "${listed[*]}"
"""
_SNAPSHOT = _LIST + r"""
list
echo "${listed[*]}"
"""
_KILL = _LIST + r"""
declare -A keep=() gone=()
empty=()
for arg in "$@"; do
  if [[ $arg == /* ]]; then empty+=("$arg"); else keep[$arg]=1; fi
done
killed=0
for ((round = 0; round < ROUNDS; round++)); do
  list; victims=()
  for entry in "${listed[@]}"; do
    [[ ${keep[$entry]} || ${gone[$entry]} ]] && continue
    kill -STOP "${entry%%:*}" 2>/dev/null && victims+=("$entry")
  done
  if ((${#victims[@]} == 0)); then
    # Quiet now, and every pid is free again: forking is safe.
    ((${#empty[@]} == 0)) || { rm -rf -- "${empty[@]}" && mkdir -p -- "${empty[@]}" && chmod 777 -- "${empty[@]}"; } || exit 2
    echo "killed=$killed"; exit 0
  fi
  for entry in "${victims[@]}"; do
    kill -KILL "${entry%%:*}" 2>/dev/null && killed=$((killed + 1))
    gone[$entry]=1
  done
done
echo "killed=$killed"; exit 1
""".replace("ROUNDS", str(_KILL_ROUNDS))
# Stopped first, killed after: a stopped process cannot fork, so a fork bomb shrinks every round. A killed
# process can take a moment to disappear under load; it runs no more code, so it counts as gone.
_ENTRY = re.compile(r"^\d+:\d+$")


class DockerEnvironment:
    """One try's container: built from the task, labelled, limited, hardened, /logs inside it. A task with a
    docker-compose file gets a pod: its services share one network namespace (see `_start_pod`), and every
    container of it is labelled, limited and removed like the main one."""

    def __init__(self, backend: DockerBackend, task: Task, spec: EnvironmentSpec) -> None:
        self.backend = backend
        self.task = task
        self.spec = spec
        self.name = container_name(backend.job.job_id, spec.name, spec.role)
        self._container: aiodocker.containers.DockerContainer | None = None
        self._others: dict[str, aiodocker.containers.DockerContainer] = {}
        """A pod's other containers by service (`pod`, the namespace holder; sidecars): removed with the main one."""
        self._volumes: list[str] = []
        """A pod's named volumes, removed after its containers."""
        self._baseline: list[str] = []
        """`pid:starttime` of every process running right after start; kept here, out of the agent's reach."""

    async def start(self) -> ResourceEnvelope:
        images = await self._images()
        try:
            async with asyncio.timeout(self.spec.start_timeout_sec):
                with engine_errors("starting the container"):
                    if self.task.compose is not None:
                        storage_enforced = await self._start_pod(self.task.compose, images)
                    else:
                        try:
                            self._container, storage_enforced = await self._create(lambda storage: self._create_config(images[MAIN], storage=storage))
                        except aiodocker.DockerError as exc:
                            if exc.status != 404 or "image" not in exc.message.lower():
                                raise
                            # Evicted by another job between ensure and create: make it again, once.
                            self.backend.images.forget(images[MAIN])
                            images[MAIN] = await self.backend.images.ensure(self.task, timeout_sec=self.spec.build_timeout_sec,
                                                                            log_path=self._build_log())
                            self._container, storage_enforced = await self._create(lambda storage: self._create_config(images[MAIN], storage=storage))
                        await self._container.start()
                    settle = await self._runs_entrypoint(images[MAIN])
                    setup = await self._run_quietly(_START, "1" if settle else "0", *LOG_DIRS)
        except TimeoutError:
            raise EnvironmentStartError(f"container did not start within {self.spec.start_timeout_sec:g} s") from None
        except aiodocker.DockerError as exc:
            raise EnvironmentStartError(f"container failed to start: {exc.message}") from None
        except ContainerLostError as exc:
            raise EnvironmentStartError(f"container exited as it started: {exc}") from None
        if setup.exit_code != 0:
            raise EnvironmentStartError(f"could not create /logs in the container: {setup.output.strip()[:200]}")
        self._baseline = [entry for entry in setup.output.split() if _ENTRY.match(entry)]
        resources = self.spec.resources
        return ResourceEnvelope(
            cpus=resources.cpus,
            memory_mb=resources.memory_mb,
            storage_mb=resources.storage_mb,
            storage_enforced=storage_enforced,
            pids_limit=resources.pids_limit,
            network_mode=self.spec.network_mode,
            cap_drop=list(CAP_DROP),
            no_new_privileges=True,
        )

    async def mark_baseline(self) -> None:
        with engine_errors("listing the environment's processes"):
            listing = await self._run_quietly(_SNAPSHOT)
        entries = [entry for entry in listing.output.split() if _ENTRY.match(entry)]
        if listing.exit_code != 0 or not entries:
            raise EnvironmentStartError(f"could not list the container's processes: {listing.output.strip()[:200]}")
        self._baseline = entries

    @property
    def network_mode(self) -> NetworkMode:
        return self.spec.network_mode

    def _build_log(self) -> Path:
        return self.spec.build_log or Path(os.devnull)

    async def _images(self) -> dict[str, str]:
        """The image of every service: `main` is the task's; sidecars build from their context or use their
        image (through the same cache, as if each were a task environment)."""
        log = self._build_log()
        images = {MAIN: await self.backend.images.ensure(self.task, timeout_sec=self.spec.build_timeout_sec, log_path=log)}
        for service in self.task.compose.sidecars if self.task.compose is not None else ():
            view = self.task.with_image(context=service.build_context, docker_image=service.image)
            service_log = log if self.spec.build_log is None else log.with_name(f"build-{service.name}.log")
            images[service.name] = await self.backend.images.ensure(view, timeout_sec=self.spec.build_timeout_sec, log_path=service_log)
        return images

    async def _runs_entrypoint(self, image: str) -> bool:
        """Whether the main container starts through an ENTRYPOINT (which may start services first)."""
        compose = self.task.compose
        if compose is not None and compose.services[MAIN].entrypoint is not None:
            return bool(compose.services[MAIN].entrypoint)
        return bool(await self.backend.image_entrypoint(image))

    async def _create(self, config: Callable[[bool], dict[str, Any]], service: str = MAIN) -> tuple[aiodocker.containers.DockerContainer, bool]:
        """Create one container of this environment from `config(storage_capped)`; returns it and whether
        its storage is capped. An engine that refuses the cap is remembered, and the container is made
        without it (the result says so)."""
        try:
            return await self._create_once(config(self.backend.storage_capable), service), self.backend.storage_capable
        except aiodocker.DockerError as exc:
            if not self.backend.storage_capable or "storage" not in exc.message.lower():
                raise
        self.backend.storage_capable = False
        logger.warning("the Docker engine cannot cap container storage; containers run without storage_mb")
        return await self._create_once(config(False), service), False

    async def _create_once(self, config: dict[str, Any], service: str) -> aiodocker.containers.DockerContainer:
        # Not cancellable: a create the engine finishes after we stopped listening would leave a container
        # nobody knows the id of. It takes a fraction of a second; `stop()` then removes what it made.
        made: list[aiodocker.containers.DockerContainer] = []

        async def create() -> None:
            name = container_name(self.backend.job.job_id, self.spec.name, self.spec.role, service)
            made.append(await self.backend.client.containers.create(config, name=name))
            if service == MAIN:
                self._container = made[0]
            else:
                self._others[service] = made[0]

        await uncancellable(create())  # the container is recorded even when this raises CancelledError afterwards
        return made[0]

    def _host_config(self, network_mode: str, *, storage: bool) -> dict[str, Any]:
        """The hardening and resource envelope every container of the try gets."""
        resources = self.spec.resources
        host_config: dict[str, Any] = {
            "Init": True,
            "NetworkMode": network_mode,
            "NanoCpus": int(resources.cpus * 1e9),
            "Memory": resources.memory_mb * 1024 * 1024,
            "PidsLimit": resources.pids_limit,
            "CapDrop": list(CAP_DROP),
            "SecurityOpt": ["no-new-privileges"],
        }
        if storage:
            host_config["StorageOpt"] = {"size": f"{resources.storage_mb}M"}
        return host_config

    def _create_config(self, image: str, *, storage: bool, network_mode: str | None = None,
                       service: Service | None = None) -> dict[str, Any]:
        """The main container: the image's ENTRYPOINT kept and only the command replaced, as Harbor does,
        so services an entrypoint starts do run (a compose file may set either)."""
        host_config = self._host_config(network_mode or self.spec.network_mode, storage=storage)
        host_config["Mounts"] = [
            {"Type": "bind", "Source": str(m.source), "Target": m.target, "ReadOnly": True} for m in self.spec.mounts
        ]
        env = {**(service.environment if service else {}), **self.task.config.environment.env, **self.spec.env}
        config: dict[str, Any] = {
            "Image": image,
            "Cmd": list(service.command if service and service.command is not None else KEEP_ALIVE),
            "Labels": self.backend.labels(self.spec),
            "Env": [f"{k}={v}" for k, v in env.items()],
            "HostConfig": host_config,
        }
        if service is not None and service.entrypoint is not None:
            config["Entrypoint"] = list(service.entrypoint)
        if service is not None:
            self._add_service_options(config, service)
        if self.task.config.environment.workdir:
            config["WorkingDir"] = self.task.config.environment.workdir
        return config

    # ------------------------------------------------------------------------------- compose services as a pod

    async def _start_pod(self, project: ComposeProject, images: dict[str, str]) -> bool:
        """Compose services as a pod, through the Engine API: a holder container owns the network namespace
        (network `none` or `host`, as the job says) and maps every service name to 127.0.0.1; each service
        joins it (`NetworkMode: container:<holder>`). Services start in `depends_on` order, a dependant only
        once its `service_healthy` dependencies are healthy (the engine's own HEALTHCHECK) or its
        `service_completed_successfully` ones exited 0; then, like `up --wait`, every service must be running
        (and healthy, if it has a healthcheck). Returns whether storage is capped."""
        for volume in project.volumes:
            name = f"{self.name}-{re.sub(r'[^A-Za-z0-9_.-]', '-', volume)[:30]}"
            await self.backend.client.volumes.create({"Name": name, "Labels": self.backend.labels(self.spec, f"volume:{volume}")})
            self._volumes.append(name)
        holder, storage_enforced = await self._create(lambda storage: {
            "Image": images[MAIN],
            "Entrypoint": ["sleep"],
            "Cmd": ["infinity"],
            "Labels": self.backend.labels(self.spec, "pod"),
            "HostConfig": {**self._host_config(self.spec.network_mode, storage=False),
                           "ExtraHosts": [f"{name}:127.0.0.1" for name in project.services]},
        }, service="pod")
        await holder.start()
        joined = f"container:{holder.id}"
        for service in project.services.values():
            await self._wait_dependencies(project, service)
            if service.name == MAIN:
                container, _ = await self._create(lambda storage: self._create_config(
                    images[MAIN], storage=storage, network_mode=joined, service=service))
            else:
                container, _ = await self._create(lambda storage, s=service: self._sidecar_config(s, images[s.name], joined, storage), service.name)
            await container.start()
        for service in project.services.values():
            await self._wait_condition(service, "ready")
        return storage_enforced

    def _sidecar_config(self, service: Service, image: str, network_mode: str, storage: bool) -> dict[str, Any]:
        config: dict[str, Any] = {
            "Image": image,
            "Labels": self.backend.labels(self.spec, service.name),
            "Env": [f"{k}={v}" for k, v in service.environment.items()],
            "HostConfig": {**self._host_config(network_mode, storage=storage), "Mounts": []},
        }
        if service.command is not None:
            config["Cmd"] = list(service.command)
        if service.entrypoint is not None:
            config["Entrypoint"] = list(service.entrypoint)
        self._add_service_options(config, service)
        return config

    def _add_service_options(self, config: dict[str, Any], service: Service) -> None:
        mounts = config["HostConfig"].setdefault("Mounts", [])
        for volume in service.volumes:
            mount: dict[str, Any] = {"Type": "volume", "Target": volume.target, "ReadOnly": volume.read_only}
            if volume.source is not None:
                mount["Source"] = self._volumes[self.task.compose.volumes.index(volume.source)]
            mounts.append(mount)
        if service.healthcheck is not None:
            check = service.healthcheck
            config["Healthcheck"] = {
                "Test": list(check.test),
                "Interval": int(check.interval_sec * 1e9),
                "Timeout": int(check.timeout_sec * 1e9),
                "Retries": check.retries,
                "StartPeriod": int(check.start_period_sec * 1e9),
            }
        if service.working_dir:
            config["WorkingDir"] = service.working_dir
        if service.user:
            config["User"] = service.user

    async def _wait_dependencies(self, project: ComposeProject, service: Service) -> None:
        for dependency, condition in service.depends_on.items():
            await self._wait_condition(project.services[dependency], condition)

    async def _wait_condition(self, service: Service, condition: str) -> None:
        """Poll a started service until `condition` holds: `service_started` (running), `service_healthy`,
        `service_completed_successfully` (exited 0), or `ready` (what `up --wait` needs: running, and healthy
        if it has a healthcheck; one that others wait to complete may have exited 0). Bounded by the build
        timeout, which in Harbor bounds the whole start."""
        container = self._running() if service.name == MAIN else self._others[service.name]
        deadline = self.spec.build_timeout_sec
        try:
            async with asyncio.timeout(deadline):
                while True:
                    state = (await container.show()).get("State", {})
                    health = (state.get("Health") or {}).get("Status")
                    if state.get("Status") in ("exited", "dead"):
                        completes = condition == "service_completed_successfully" or (condition == "ready" and self._completes(service.name))
                        if completes and state.get("ExitCode") == 0:
                            return
                        raise EnvironmentStartError(await self._exit_message(container, service.name, state))
                    if condition != "service_completed_successfully":
                        if health == "unhealthy":
                            raise HealthcheckError(f"compose service {service.name!r} is unhealthy: {_last_probe(state)}")
                        if condition == "service_started" or service.healthcheck is None or health == "healthy":
                            return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise HealthcheckError(
                f"compose service {service.name!r} was not {condition.removeprefix('service_')} within {deadline:g} s"
            ) from None

    def _completes(self, name: str) -> bool:
        assert self.task.compose is not None
        return any(s.depends_on.get(name) == "service_completed_successfully" for s in self.task.compose.services.values())

    async def _exit_message(self, container: aiodocker.containers.DockerContainer, name: str, state: dict[str, Any]) -> str:
        try:
            lines = await container.log(stdout=True, stderr=True, tail=5)
        except aiodocker.DockerError:
            lines = []
        tail = "".join(lines).strip()[-300:]
        return f"compose service {name!r} exited with code {state.get('ExitCode')}" + (f": {tail}" if tail else "")

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
        with engine_errors("running a command"):
            execution = await self._running().exec(
                ["bash", "-c", command], stdout=True, stderr=True, user=user or "", environment=env or None, workdir=workdir
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
        if timed_out:
            # After leaving the stream: the kill needs no connection this command still holds.
            await self.kill_agent_processes()
            return ExecResult(exit_code=None, output=_decode(chunks), timed_out=True)
        with engine_errors("reading an exit code"):
            return ExecResult(exit_code=await _exit_code(execution), output=_decode(chunks))

    async def _run_quietly(self, script: str, *args: str) -> ExecResult:
        """A bookkeeping script as root (bash, like every command here), no timeout of its own."""
        execution = await self._running().exec(["bash", "-c", script, "bash", *args], stdout=True, stderr=True, user="0")
        chunks = []
        async with execution.start(detach=False) as stream:
            while (message := await stream.read_out()) is not None:
                chunks.append(message.data)
        return ExecResult(exit_code=await _exit_code(execution), output=_decode(chunks))

    async def kill_agent_processes(self, *, then_empty: Collection[str] = ()) -> int:
        if any(not path.startswith("/") or path.rstrip("/") == "" for path in then_empty):
            raise ValueError(f"then_empty takes absolute paths below /, got {list(then_empty)}")
        result = await self._kill(then_empty)
        if not _KILLED.search(result.output):
            # The script never ran or died: with its container (which the engine notices a moment later), or
            # for a reason seen once under heavy load and not understood. Check the first, retry once.
            await self._check_running("stopping the agent's processes", settle_sec=3.0)
            result = await self._kill(then_empty)
        counts = _KILLED.findall(result.output)
        if not counts:
            said = result.output.strip()[-120:].encode("unicode_escape").decode()
            raise AgentProcessesSurvivedError(
                f"the engine's kill script could not run in the container (exit code {result.exit_code}: {said!r}); "
                "the verifier did not run"
            )
        if result.exit_code == 2:
            raise RuntimeError(f"could not empty {', '.join(then_empty)} after the kill: {result.output.strip()[-200:]}")
        if result.exit_code != 0:
            raise AgentProcessesSurvivedError(
                f"processes the agent started were still appearing after {_KILL_ROUNDS} kill rounds ({counts[-1]} killed)"
            )
        return int(counts[-1])

    async def _kill(self, then_empty: Collection[str]) -> ExecResult:
        try:
            async with asyncio.timeout(KILL_TIMEOUT_SEC):
                with engine_errors("stopping the agent's processes"):
                    try:
                        return await self._run_quietly(_KILL, *self._baseline, *then_empty)
                    except aiodocker.DockerError as exc:  # e.g. "OCI runtime exec failed: ... unavailable"
                        if any(sign in exc.message for sign in _CONTAINER_GONE) or exc.status == 900:
                            raise
                        return ExecResult(exit_code=None, output=exc.message)
        except TimeoutError:
            raise AgentProcessesSurvivedError(
                f"could not stop the agent's processes within {KILL_TIMEOUT_SEC:g} s; the verifier did not run"
            ) from None

    async def _check_running(self, doing: str, *, settle_sec: float) -> None:
        """ContainerLostError if the container stops within `settle_sec` (the engine notices a dead init
        process a moment after its other processes died)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + settle_sec
        while True:
            with engine_errors(doing):
                state = (await self._running().show()).get("State", {})
            if not state.get("Running"):
                raise ContainerLostError(f"the container stopped while {doing} (exit code {state.get('ExitCode')})")
            if loop.time() >= end:
                return
            await asyncio.sleep(0.1)

    async def put(self, source: Path, target: str, *, executable: Collection[str] = ()) -> None:
        # The task's own files are tarred once per job; anything else (a try's artifacts) every time.
        if source.is_relative_to(self.task.path):
            data = await self.backend.archive(source, target, frozenset(executable))
        else:
            data = await asyncio.to_thread(tar_directory, source, target.strip("/"), executable)
        with engine_errors("copying files into the container"):
            await self._running().put_archive("/", data)

    @asynccontextmanager
    async def _archive(self, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The tar stream of one container path, read as it arrives (never buffered whole)."""
        container = self._running()
        try:
            async with self.backend.client._query(
                f"containers/{container.id}/archive", method="GET", params={"path": path}, timeout=None
            ) as response:
                yield response.content.iter_chunked(CHUNK)
        except aiodocker.DockerError as exc:
            if exc.status == 404 and "No such container" not in exc.message:
                raise FileMissingError(f"{path} does not exist") from None
            raise

    async def read_file(self, path: str, *, max_bytes: int) -> bytes:
        with engine_errors(f"reading {path}"):
            async with self._archive(path) as chunks:
                return await read_tar_stream(chunks, single_file_reader(path, max_bytes))

    async def download(
        self, source_dir: str, target_dir: Path, *, max_bytes: int, max_files: int, reserved: Collection[str] = ()
    ) -> DownloadReport:
        reader = extraction_reader(target_dir, max_bytes=max_bytes, max_files=max_files, reserved=reserved)
        try:
            with engine_errors(f"copying {source_dir} out"):
                async with self._archive(source_dir) as chunks:
                    return await read_tar_stream(chunks, reader)
        except (FileMissingError, ContainerLostError, DockerUnavailableError, aiodocker.DockerError) as exc:
            return DownloadReport(error=str(exc))

    async def download_many(self, source_dir: str, routes: Mapping[str, DownloadTarget]) -> dict[str, DownloadReport]:
        """One archive of `source_dir` split into its routes. A route that hits its cap stops the transfer
        (its size would otherwise be ours to read); the routes after it are then fetched on their own."""
        reader = routed_extraction_reader(routes)
        try:
            with engine_errors(f"copying {source_dir} out"):
                async with self._archive(source_dir) as chunks:
                    done = await read_tar_stream(chunks, reader)
        except (FileMissingError, ContainerLostError, DockerUnavailableError, aiodocker.DockerError) as exc:
            return {name: DownloadReport(error=str(exc)) for name in routes}
        reports = done.reports
        for name in routes:
            if name in done.unfinished:
                target = routes[name]
                reports[name] = await self.download(f"{source_dir}/{name}", target.target_dir, max_bytes=target.max_bytes,
                                                    max_files=target.max_files, reserved=target.reserved)
            elif name not in done.seen and not reports[name].error:
                reports[name].error = f"{source_dir}/{name} does not exist"
        return reports

    async def stop(self) -> None:
        containers = [c for c in (self._container, *self._others.values()) if c is not None]
        volumes, self._container, self._others, self._volumes = self._volumes, None, {}, []
        if (containers or volumes) and not self.spec.keep:
            self.backend.remove_soon(*containers, volumes=volumes)


def _last_probe(state: dict[str, Any]) -> str:
    """The last healthcheck probe's exit code and output, short and escaped (the container wrote it)."""
    log = (state.get("Health") or {}).get("Log") or [{}]
    output = str(log[-1].get("Output", "")).strip()[-200:].encode("unicode_escape").decode()
    return f"last probe exited {log[-1].get('ExitCode')}" + (f" ({output})" if output else "")


async def _exit_code(execution: aiodocker.execs.Exec, deadline_sec: float = 10.0) -> int | None:
    """The stream can close a moment before the engine records the exit code: poll, with a deadline
    long enough that a slow daemon does not turn into a bogus non-zero exit."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_sec
    delay = 0.0
    while True:
        await asyncio.sleep(delay)
        info = await execution.inspect()
        if not info.get("Running"):
            return info.get("ExitCode")
        if loop.time() >= end:
            return None
        delay = min(0.5, delay * 2 or 0.01)


def _decode(chunks: list[bytes]) -> str:
    return b"".join(chunks)[:_OUTPUT_CAP].decode("utf-8", errors="replace")
