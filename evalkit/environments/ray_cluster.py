"""The Ray backend: a job's environments run on the nodes of a Ray cluster, each node driving its own Docker
engine through one long-lived `NodeAgent` actor pinned to it.

The job (trials, gateway, retries, the job directory) stays in the driver process; only the sandbox moves.
A `RayEnvironment` is the driver's handle on one environment: every `Environment` call becomes one call to
the actor of the node the environment was placed on, and everything a try produces comes back as bytes
(bounded by the same download caps) that the driver unpacks with the same safe extractor as a local run. So
the driver is the only writer of the job directory, its layout is a local run's, and resume works the same.

A node whose actor or raylet dies fails the calls in flight with `RayNodeError`, an infrastructure error in
every phase (like a Docker engine that stops answering): the try is recorded and retried on a surviving
node under the job's retry policy. Its containers are removed by a surviving node at the end of the job
when they share its engine, and otherwise by the next run of the job (every actor sweeps the job id first).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from evalkit.cleanup import uncancellable
from evalkit.environments import connect_backend
from evalkit.environments.archive import extraction_reader, read_tar_stream
from evalkit.environments.base import (
    BackendHealth,
    DownloadTarget,
    Environment,
    EnvironmentBackend,
    EnvironmentSpec,
    ExecResult,
    JobIdentity,
    NetworkMode,
)
from evalkit.environments.images import tar_directory
from evalkit.environments.ray_routes import NodeGateway, NodeRoutes, RouteSetup
from evalkit.errors import ConfigError, InfrastructureError, RayNodeError
from evalkit.results import DownloadReport, ImageSummary, NodeStats, ResourceEnvelope

if TYPE_CHECKING:
    from evalkit.config import EnvironmentConfig, RayConfig
    from evalkit.environments.base import Mount
    from evalkit.gateway.config import LLMApiConfig
    from evalkit.gateway.trials import TrialAccess
    from evalkit.tasks import Task

LABEL_NODE = "evalkit.ray_node"
"""Container label: the Ray node whose actor made it."""
_BUILD_LOGS_MAX_BYTES = 64 * 1024 * 1024
_CONNECT_TIMEOUT_SEC = 120.0
"""How long a node's actor may take to start and reach its Docker engine."""


# ----------------------------------------------------------------------------------------- on each node


class NodeAgent:
    """One per node and job: the node's Docker backend and the environments placed there. Every method
    returns `(ok, value, files)`: exceptions travel as values (`_portable`) so the driver re-raises the very
    error a local run would, with its message, instead of Ray's wrapper; `files` is a tar for the driver."""

    def __init__(self, config: EnvironmentConfig, job: JobIdentity) -> None:
        self.config = config.model_copy(update={"backend": "docker"})
        self.job = job
        self.backend: EnvironmentBackend | None = None
        self.environments: dict[str, Environment] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix=f"evalkit-ray-{job.job_id[:8]}-"))
        """Node-local files on their way to the driver (build logs, downloads); removed as they leave."""
        self.gateway = NodeGateway(self.scratch)
        """The node's model route, for agents in containers (started by the driver's first try here)."""

    async def connect(self) -> tuple[bool, Any, None]:
        """Connect this node's Docker backend (an InfrastructureError if its engine does not answer); returns
        the network it gives tasks that need the internet."""

        async def run() -> NetworkMode | None:
            self.backend = await connect_backend(self.config, self.job)
            return self.backend.internet_network

        return await _outcome(run())

    async def prepare(self, task: Task, timeout_sec: float | None, log_name: str | None) -> tuple[bool, Any, bytes | None]:
        assert self.backend is not None
        logs = self.scratch / f"prepare-{uuid.uuid4().hex}"
        await asyncio.to_thread(logs.mkdir, parents=True)
        log_path = logs / log_name if log_name is not None else None
        ok, value, _ = await _outcome(self.backend.prepare(task, timeout_sec=timeout_sec, log_path=log_path))
        return ok, value, await asyncio.to_thread(_tar_and_remove, logs)

    async def release(self, task: Task) -> tuple[bool, Any, None]:
        assert self.backend is not None
        return await _outcome(self.backend.release(task))

    async def sweep(self, stopped_only: bool = False) -> tuple[bool, Any, None]:
        assert self.backend is not None
        return await _outcome(self.backend.sweep(stopped_only=stopped_only))

    async def close(self) -> tuple[bool, Any, None]:
        """Close the Docker backend; returns what it did with images."""
        backend = self.backend

        async def run() -> ImageSummary | None:
            if backend is None:
                return None
            await backend.close()
            return backend.image_summary

        try:
            await self.gateway.stop()  # normally stopped already (`stop_gateway`)
            return await _outcome(run())
        finally:
            await asyncio.to_thread(shutil.rmtree, self.scratch, True)

    async def start(self, env_id: str, task: Task, spec: EnvironmentSpec) -> tuple[bool, Any, bytes | None]:
        assert self.backend is not None
        logs = self.scratch / env_id / "build"
        await asyncio.to_thread(logs.mkdir, parents=True)
        name = spec.build_log.name if spec.build_log is not None else "build.log"
        node_spec = replace(spec, build_log=logs / name if spec.build_log is not None else None)
        backend = self.backend

        async def run() -> ResourceEnvelope:
            env = self.environments[env_id] = backend.environment(task, node_spec)
            return await env.start()

        ok, value, _ = await _outcome(run())
        return ok, value, await asyncio.to_thread(_tar_and_remove, logs)

    async def mark_baseline(self, env_id: str) -> tuple[bool, Any, None]:
        return await _outcome(self.environments[env_id].mark_baseline())

    async def exec(self, env_id: str, command: str, options: dict[str, Any]) -> tuple[bool, Any, None]:
        return await _outcome(self.environments[env_id].exec(command, **options))

    async def kill_agent_processes(self, env_id: str, then_empty: Collection[str]) -> tuple[bool, Any, None]:
        return await _outcome(self.environments[env_id].kill_agent_processes(then_empty=then_empty))

    async def read_file(self, env_id: str, path: str, max_bytes: int) -> tuple[bool, Any, None]:
        return await _outcome(self.environments[env_id].read_file(path, max_bytes=max_bytes))

    async def put(self, env_id: str, data: bytes, target: str, executable: Collection[str]) -> tuple[bool, Any, None]:
        source = self.scratch / env_id / f"put-{uuid.uuid4().hex}"

        async def run() -> None:
            await asyncio.to_thread(_untar, data, source)
            try:
                await self.environments[env_id].put(source, target, executable=executable)
            finally:
                await asyncio.to_thread(shutil.rmtree, source, True)

        return await _outcome(run())

    async def download(self, env_id: str, source_dir: str, limits: dict[str, Any]) -> tuple[bool, Any, bytes | None]:
        target = self.scratch / env_id / f"download-{uuid.uuid4().hex}"
        ok, value, _ = await _outcome(self.environments[env_id].download(source_dir, target, **limits))
        return ok, value, await asyncio.to_thread(_tar_and_remove, target)

    async def download_many(self, env_id: str, source_dir: str, routes: dict[str, DownloadTarget]) -> tuple[bool, Any, dict[str, bytes | None]]:
        base = self.scratch / env_id / f"download-{uuid.uuid4().hex}"
        here = {name: replace(route, target_dir=base / name) for name, route in routes.items()}
        ok, value, _ = await _outcome(self.environments[env_id].download_many(source_dir, here))
        files = {name: await asyncio.to_thread(_tar_and_remove, route.target_dir) for name, route in here.items()}
        await asyncio.to_thread(shutil.rmtree, base, True)
        return ok, value, files

    async def stop(self, env_id: str) -> tuple[bool, Any, None]:
        env = self.environments.pop(env_id, None)
        try:
            return await _outcome(env.stop()) if env is not None else (True, None, None)
        finally:
            await asyncio.to_thread(shutil.rmtree, self.scratch / env_id, True)


    # ------------------------------------------------------------------- the node's model route (ray_routes.py)

    async def start_gateway(self, setup: RouteSetup) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.start(setup))

    async def open_route(self, trial_id: str, home: int | None) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.open(trial_id, home))

    async def close_route(self, api_key: str) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.close(api_key))

    async def read_trajectory(self, api_key: str, offset: int, size: int) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.read(api_key, offset, size))

    async def release_route(self, access: TrialAccess) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.release(access))

    async def stop_gateway(self) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.stop())


_ACTOR = ray.remote(NodeAgent)


async def _outcome(work: Any) -> tuple[bool, Any, None]:
    try:
        return True, await work, None
    except Exception as exc:  # every failure goes back to the driver as the value it is
        return False, _portable(exc), None


def _portable(exc: Exception) -> tuple[type[Exception], tuple[Any, ...], dict[str, Any]]:
    """An exception as (class, args, attributes): rebuilt on the driver without calling its `__init__`
    (whose signature may differ from its args), so its message and fields are exactly the original's."""
    return type(exc), exc.args, {k: v for k, v in vars(exc).items() if not k.startswith("__")}


def _rebuilt(portable: tuple[type[Exception], tuple[Any, ...], dict[str, Any]]) -> Exception:
    cls, args, attributes = portable
    exc = cls.__new__(cls)
    exc.args = args
    vars(exc).update(attributes)
    return exc


def _tar_and_remove(directory: Path) -> bytes | None:
    """The directory as a tar whose top entry is the directory (as the Docker engine hands out), or None
    when nothing was written there."""
    try:
        if not directory.is_dir() or not any(directory.iterdir()):
            return None
        return tar_directory(directory, directory.name)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _untar(data: bytes, target: Path) -> None:
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(target, filter="data")


# ----------------------------------------------------------------------------------------- on the driver


@dataclass
class Node:
    """One selected node as the driver sees it."""

    node_id: str
    address: str
    actor: Any
    in_flight: int = 0
    tries: int = 0
    lost: bool = False

    @property
    def label(self) -> str:
        return self.node_id[:12]


class RayBackend:
    """One job's nodes: an actor per selected node, placement by free capacity, and the node statistics for
    `results.json`. Create with `await RayBackend.connect(...)`."""

    def __init__(self, config: EnvironmentConfig, nodes: list[Node], *, owns_connection: bool, driver_address: str) -> None:
        self.config = config
        self.nodes = nodes
        self.driver_address = driver_address
        """The address of the node this driver runs on (what reaches the driver's loopback)."""
        self._reserved: dict[Path, _Reservation] = {}
        """Model routes opened on a node, by mount source: the try's container goes to that node."""
        self.owns_connection = owns_connection
        """Whether evalkit called `ray.init` (and so calls `ray.shutdown`); never for the caller's connection."""
        self._changed = asyncio.Event()
        """Set when a node frees a slot or is lost: placements waiting for capacity look again."""
        self.health = BackendHealth()
        """Round trips of the calls to the nodes' actors (what `n_concurrent: auto` steers by)."""
        self.image_summary = ImageSummary()
        """The nodes' image work, summed when the job's nodes close."""
        self.internet_network: NetworkMode | None = None
        """The nodes' network for tasks that need the internet, when every node offers the same one."""
        self.outages = 0
        """A node that dies is lost for the job (its tries fail with RayNodeError), never an outage to wait out."""

    @classmethod
    async def connect(cls, config: EnvironmentConfig, job: JobIdentity) -> RayBackend:
        owns = await asyncio.to_thread(_ensure_connection, config.ray)
        nodes: list[Node] = []
        try:
            driver_address = await asyncio.to_thread(_driver_address)
            for info in await asyncio.to_thread(_select_nodes, config.ray):
                pinned = NodeAffinitySchedulingStrategy(info["NodeID"], soft=False)
                actor = _ACTOR.options(num_cpus=0, max_restarts=0, scheduling_strategy=pinned).remote(config, job)
                nodes.append(Node(info["NodeID"], info["NodeManagerAddress"], actor))
            backend = cls(config, nodes, owns_connection=owns, driver_address=driver_address)
            networks = await backend._all("connect", "starting evalkit on node {} and reaching its Docker engine",
                                          timeout=_CONNECT_TIMEOUT_SEC)
            backend.internet_network = networks[0] if len(set(networks)) == 1 else None
            return backend
        except BaseException:
            for node in nodes:
                ray.kill(node.actor)
            if owns:
                await uncancellable(asyncio.to_thread(ray.shutdown))
            raise

    def environment(self, task: Task, spec: EnvironmentSpec) -> RayEnvironment:
        return RayEnvironment(self, task, spec)

    def model_routes(self, llm_api: LLMApiConfig, *, job_name: str, artifacts_dir: Path,
                     tasks: Mapping[str, Task]) -> Any:
        """The job's model route for agents in containers: a gateway on each node (`ray_routes.NodeRoutes`)."""
        return NodeRoutes.serve(self, llm_api, job_name=job_name, artifacts_dir=artifacts_dir, tasks=tasks)

    def reserve(self, source: Path, node: Node) -> None:
        """A slot `place` gave for a model route mounted from `source`: the environment that mounts it takes it."""
        self._reserved[source] = _Reservation(node)

    def take(self, mounts: Collection[Mount]) -> Node | None:
        """The node reserved for an environment that mounts a model route (its slot now the environment's)."""
        for mount in mounts:
            if (reservation := self._reserved.get(mount.source)) is not None and not reservation.taken:
                reservation.taken = True
                return reservation.node
        return None

    def unreserve(self, source: Path) -> Node | None:
        """The route is gone: its slot is freed unless an environment took it (that one frees it on `stop`)."""
        reservation = self._reserved.pop(source, None)
        if reservation is None:
            return None
        if not reservation.taken:
            self.free(reservation.node)
        return reservation.node

    async def prepare(self, task: Task, *, timeout_sec: float | None, log_path: Path | None) -> None:
        """The task's images on every live node (a try may be placed on any), held there until `release`;
        the first node's build log comes back to `log_path`. Raises the first node's typed error."""
        live = [n for n in self.nodes if not n.lost]
        outcomes = await asyncio.gather(*(_ask(n.actor.prepare.remote(task, timeout_sec, log_path and log_path.name)) for n in live))
        error: Exception | None = None
        for node, outcome in zip(live, outcomes):
            if outcome is None:
                self.lose(node)
                continue
            ok, value, logs = outcome
            if logs is not None and log_path is not None:
                await _unpack(logs, log_path.parent, max_bytes=_BUILD_LOGS_MAX_BYTES, max_files=100)
            if not ok and error is None:
                error = _rebuilt(value)
        if error is not None:
            raise error

    async def release(self, task: Task) -> None:
        await asyncio.gather(*(_ask(n.actor.release.remote(task)) for n in self.nodes if not n.lost))

    @property
    def up(self) -> bool:
        return any(not n.lost for n in self.nodes)

    async def available(self) -> None:
        if not self.up:
            raise InfrastructureError("every Ray node of this job was lost; finished tries are kept, run the job again to resume it")

    async def answers(self) -> bool:
        return self.up

    async def sweep(self, *, stopped_only: bool = False) -> int:
        return sum(await self._all("sweep", "removing the job's leftovers on node {}", stopped_only))

    async def close(self) -> None:
        """Have a surviving node remove what lost nodes left on a shared engine, close every node's Docker
        connection, stop the actors; shut Ray down only if evalkit connected it."""
        try:
            if any(n.lost for n in self.nodes) and not self.config.keep_containers:
                await self._all("sweep", "removing what lost nodes left, from node {}", strict=False)
            for images in await self._all("close", "closing node {}", strict=False):
                for name, value in (images or ImageSummary()).model_dump().items():
                    setattr(self.image_summary, name, getattr(self.image_summary, name) + value)
        finally:
            for node in self.nodes:
                ray.kill(node.actor)
            if self.owns_connection:
                await uncancellable(asyncio.to_thread(ray.shutdown))

    def node_stats(self) -> dict[str, NodeStats]:
        """Per node: environments in flight, tries placed, whether it was lost (for `results.json`)."""
        return {n.label: NodeStats(address=n.address, in_flight=n.in_flight, tries=n.tries, lost=n.lost) for n in self.nodes}

    async def call(self, node: Node, method: str, doing: str, *args: Any) -> Any:
        """One call to a node's actor; its value, or the error the node raised (rebuilt here)."""
        return _value(*await self.call_raw(node, method, doing, *args))

    async def call_raw(self, node: Node, method: str, doing: str, *args: Any) -> tuple[bool, Any, Any]:
        """One call to a node's actor as `(ok, value, files)`. A lost node is a `RayNodeError` (and is lost
        for the job when its actor died); cancelling the caller cancels the call on the node."""
        if node.lost:
            raise RayNodeError(f"Ray node {node.label} ({node.address}) was lost before {doing}")
        ref = getattr(node.actor, method).remote(*args)
        started = time.monotonic()
        try:
            outcome: tuple[bool, Any, Any] = await ref
        except asyncio.CancelledError:
            with contextlib.suppress(RayError):
                ray.cancel(ref)  # the node stops the call (an exec's clean-up runs there)
            raise
        except RayActorError:
            self.health.failures += 1
            self.lose(node)
            raise RayNodeError(f"Ray node {node.label} ({node.address}) was lost while {doing}") from None
        except RayError as exc:
            self.health.failures += 1
            raise RayNodeError(f"Ray node {node.label} ({node.address}) failed while {doing}: {type(exc).__name__}") from None
        self.health.record(time.monotonic() - started)
        return outcome

    async def _all(self, method: str, doing: str, *args: Any, strict: bool = True, timeout: float | None = None) -> list[Any]:
        """Call `method` on every live node's actor at once. `strict`: the first failure is raised as an
        InfrastructureError naming the node; otherwise failed nodes are skipped."""
        live = [n for n in self.nodes if not n.lost]
        refs = [getattr(n.actor, method).remote(*args) for n in live]
        values = []
        for node, ref in zip(live, refs):
            try:
                async with asyncio.timeout(timeout):
                    ok, value, _ = await ref
            except (RayError, TimeoutError) as exc:
                ok, value = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'}"
            else:
                value = value if ok else _rebuilt(value)
            if ok:
                values.append(value)
            elif strict:
                raise InfrastructureError(f"Ray backend: {doing.format(node.label)} ({node.address}) failed: {value}")
        return values

    async def place(self) -> Node:
        """The live node with the most free slots (fewest tries placed, on a tie); waits while all are full."""
        limit = self.config.ray.max_trials_per_node
        while True:
            live = [n for n in self.nodes if not n.lost]
            if not live:
                raise RayNodeError("every Ray node of this job was lost")
            free = [n for n in live if n.in_flight < limit]
            if free:
                node = min(free, key=lambda n: (n.in_flight, n.tries))
                node.in_flight += 1
                node.tries += 1
                return node
            self._changed.clear()
            await self._changed.wait()

    def free(self, node: Node) -> None:
        """A slot of `node` is free again."""
        node.in_flight -= 1
        self._changed.set()

    def lose(self, node: Node) -> None:
        node.lost = True
        self._changed.set()


@dataclass
class _Reservation:
    node: Node
    taken: bool = False


def _driver_address() -> str:
    here = ray.get_runtime_context().get_node_id()
    return next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == here), "")


def _ensure_connection(config: RayConfig) -> bool:
    """Reuse this process's Ray connection, or open one to `address`; True if evalkit opened it."""
    if ray.is_initialized():
        return False
    if config.address is None:
        raise ConfigError(
            "environment.ray.address: Ray is not initialised in this process; set an address "
            "(auto, ray://host:port, host:port) or call ray.init() before running the job"
        )
    try:
        ray.init(address=config.address, log_to_driver=False, logging_level="warning")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InfrastructureError(f"environment.ray.address: cannot connect to the Ray cluster at {config.address!r}: {exc}") from None
    return True


def _select_nodes(config: RayConfig) -> list[dict[str, Any]]:
    alive = [n for n in ray.nodes() if n.get("Alive")]
    selected = [n for n in alive if all(n["Resources"].get(k, 0) >= v for k, v in config.resources.items())]
    if not selected:
        wanted = ", ".join(f"{k}>={v:g}" for k, v in config.resources.items())
        raise ConfigError(f"environment.ray.resources: no live Ray node offers {wanted} ({len(alive)} node(s) alive)")
    return selected


class RayEnvironment:
    """The driver's handle on one environment: placed on a node at `start`, every call forwarded to that
    node's actor, files unpacked here."""

    def __init__(self, backend: RayBackend, task: Task, spec: EnvironmentSpec) -> None:
        self.backend = backend
        self.task = task
        self.spec = spec
        self.env_id = uuid.uuid4().hex
        self.node: Node | None = None

    @property
    def network_mode(self) -> NetworkMode:
        return self.spec.network_mode

    async def start(self) -> ResourceEnvelope:
        self.node = self.backend.take(self.spec.mounts) or await self.backend.place()
        spec = replace(self.spec, labels={**self.spec.labels, LABEL_NODE: self.node.node_id})
        ok, value, logs = await self._raw("start", "starting the environment", self.task, spec)
        if logs is not None and self.spec.build_log is not None:
            await _unpack(logs, self.spec.build_log.parent, max_bytes=_BUILD_LOGS_MAX_BYTES, max_files=100)
        return _value(ok, value)

    async def mark_baseline(self) -> None:
        await self._call("mark_baseline", "listing the environment's processes")

    async def exec(self, command: str, *, timeout_sec: float | None = None, env: dict[str, str] | None = None,
                   user: str | None = None, workdir: str | None = None) -> ExecResult:
        options = {"timeout_sec": timeout_sec, "env": env, "user": user, "workdir": workdir}
        result: ExecResult = await self._call("exec", "running a command", command, options)
        return result

    async def put(self, source: Path, target: str, *, executable: Collection[str] = ()) -> None:
        data = await asyncio.to_thread(tar_directory, source)
        await self._call("put", "copying files into the container", data, target, tuple(executable))

    async def read_file(self, path: str, *, max_bytes: int) -> bytes:
        data: bytes = await self._call("read_file", f"reading {path}", path, max_bytes)
        return data

    async def download(self, source_dir: str, target_dir: Path, *, max_bytes: int, max_files: int,
                       reserved: Collection[str] = ()) -> DownloadReport:
        limits = {"max_bytes": max_bytes, "max_files": max_files, "reserved": tuple(reserved)}
        try:
            ok, value, data = await self._raw("download", f"copying {source_dir} out", source_dir, limits)
            node_report: DownloadReport = _value(ok, value)
        except RayNodeError as exc:
            return DownloadReport(error=str(exc))
        return await _received(node_report, data, target_dir, max_bytes=max_bytes, max_files=max_files, reserved=reserved)

    async def download_many(self, source_dir: str, routes: Mapping[str, DownloadTarget]) -> dict[str, DownloadReport]:
        try:
            ok, value, files = await self._raw("download_many", f"copying {source_dir} out", source_dir, dict(routes))
            node_reports: dict[str, DownloadReport] = _value(ok, value)
        except RayNodeError as exc:
            return {name: DownloadReport(error=str(exc)) for name in routes}
        reports = {}
        for name, route in routes.items():
            reports[name] = await _received(node_reports[name], files.get(name), route.target_dir, max_bytes=route.max_bytes,
                                            max_files=route.max_files, reserved=route.reserved)
        return reports

    async def kill_agent_processes(self, *, then_empty: Collection[str] = ()) -> int:
        killed: int = await self._call("kill_agent_processes", "killing the agent's processes", tuple(then_empty))
        return killed

    async def stop(self) -> None:
        node, self.node = self.node, None
        if node is None:
            return
        try:
            if not node.lost:
                await self._call_on(node, "stop", "removing the environment")
        finally:
            self.backend.free(node)

    async def _call(self, method: str, doing: str, *args: Any) -> Any:
        return _value(*await self._raw(method, doing, *args))

    async def _raw(self, method: str, doing: str, *args: Any) -> tuple[bool, Any, bytes | None]:
        if self.node is None:
            raise RuntimeError(f"{method} before start")
        return await self.backend.call_raw(self.node, method, doing, self.env_id, *args)

    async def _call_on(self, node: Node, method: str, doing: str, *args: Any) -> Any:
        return _value(*await self.backend.call_raw(node, method, doing, self.env_id, *args))


def _value(ok: bool, value: Any, *_: Any) -> Any:
    if not ok:
        raise _rebuilt(value)
    return value


async def _ask(ref: Any) -> tuple[bool, Any, Any] | None:
    """One actor call's outcome, or None when its node is gone."""
    try:
        outcome: tuple[bool, Any, Any] = await ref
    except RayActorError:
        return None
    return outcome


async def _received(node_report: DownloadReport, data: bytes | None, target: Path, *, max_bytes: int, max_files: int,
                    reserved: Collection[str]) -> DownloadReport:
    """A download as a local run reports it: what the node skipped (links, FIFOs, caps) plus what the driver
    skipped unpacking its tar (files already on the host)."""
    if data is None:
        return node_report
    here = await _unpack(data, target, max_bytes=max_bytes, max_files=max_files, reserved=reserved)
    return DownloadReport(files=here.files, bytes=here.bytes, skipped=node_report.skipped + here.skipped,
                          n_skipped=node_report.n_skipped + here.n_skipped,
                          truncated=node_report.truncated or here.truncated, error=node_report.error or here.error)


async def _unpack(data: bytes, target: Path, *, max_bytes: int, max_files: int, reserved: Collection[str] = ()) -> DownloadReport:
    """A node's tar into a host directory through the same checks as a download from a container: the node's
    files are no more trusted than the container they came from."""

    async def chunks() -> Any:
        yield data

    report: DownloadReport = await read_tar_stream(chunks(), extraction_reader(target, max_bytes=max_bytes, max_files=max_files, reserved=reserved))
    return report
