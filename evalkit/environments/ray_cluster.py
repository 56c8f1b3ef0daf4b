"""The Ray backend: a job's environments run on the nodes of a Ray cluster, each node driving its own Docker
engine through one long-lived `NodeAgent` actor pinned to it.

The job (trials, gateway, retries, the job directory) stays in the driver process; only the sandbox moves.
A `RayEnvironment` is the driver's handle on one environment: every `Environment` call becomes one call to
the actor of the node the environment was placed on, and everything a try produces comes back as bytes
(bounded by the same download caps) that the driver unpacks with the same safe extractor as a local run. So
the driver is the only writer of the job directory, its layout is a local run's, and resume works the same.

Images follow the tries: a task's images are prepared on one node (one that has them already, else the one
holding the fewest), and a try goes to a node with a free slot that has its task's images, before the node
with the most free slots; a node that lacks them makes them when the try starts there.

A node whose actor or raylet dies fails the calls in flight with `RayNodeError`, an infrastructure error in
every phase (like a Docker engine that stops answering): the try is recorded and retried on a surviving
node under the job's retry policy. From the first loss on, the backend looks for selected nodes that came
alive (the lost one back, a replacement): each gets an actor that first removes what the lost nodes left
where it can reach (their containers of this job on its engine, their scratch directories on its disk), and
then takes tries. Whatever is still left goes at the end of the job (a surviving node sweeps), or in the next
run of the job (every actor sweeps the job id, and its disk's scratch directories of earlier runs, first).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from evalkit.cleanup import uncancellable
from evalkit.environments.archive import extraction_reader, read_tar_stream
from evalkit.environments.base import (
    BackendHealth,
    DownloadTarget,
    Environment,
    EnvironmentSpec,
    ExecResult,
    JobIdentity,
    NetworkMode,
)
from evalkit.environments.docker import DockerBackend, image_views
from evalkit.environments.images import tar_directory
from evalkit.environments.ray_routes import NodeGateway, NodeRoutes, RouteSetup
from evalkit.errors import ConfigError, EnvironmentBuildError, InfrastructureError, RayNodeError, kind_of
from evalkit.results import DownloadReport, ImageSummary, NodeStats, ResourceEnvelope

if TYPE_CHECKING:
    from evalkit.config import EnvironmentConfig, RayConfig
    from evalkit.environments.base import Mount
    from evalkit.gateway.config import LLMApiConfig
    from evalkit.gateway.trials import TrialAccess
    from evalkit.tasks import Task

log = logging.getLogger(__name__)
LABEL_NODE = "evalkit.ray_node"
"""Container label: the Ray node whose actor made it."""
_BUILD_LOGS_MAX_BYTES = 64 * 1024 * 1024
_CONNECT_TIMEOUT_SEC = 120.0
"""How long a node's actor may take to start and reach its Docker engine."""
_DISMISS_TIMEOUT_SEC = 30.0
"""How long an actor that never joined may take to remove its scratch directory before it is killed."""
REJOIN_POLL_SEC = 1.0
"""After a node is lost: how often the cluster is asked for selected nodes that came alive."""


# ----------------------------------------------------------------------------------------- on each node


class NodeAgent:
    """One per node and job: the node's Docker backend and the environments placed there. Every method
    returns `(ok, value, files)`: exceptions travel as values (`_portable`) so the driver re-raises the very
    error a local run would, with its message, instead of Ray's wrapper; `files` is a tar for the driver."""

    def __init__(self, config: EnvironmentConfig, job: JobIdentity, run_id: str) -> None:
        self.config = config.model_copy(update={"backend": "docker"})
        self.job = job
        self.run_id = run_id
        """This run of the job (one per `RayBackend`): scratch directories of other runs are leftovers."""
        self.backend: DockerBackend | None = None
        self.environments: dict[str, Environment] = {}
        node_id = ray.get_runtime_context().get_node_id()
        self.scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix(job.job_id, run_id, node_id)))
        """Node-local files on their way to the driver (build logs, downloads); removed as they leave, and
        whole at close; named by job, run and node, so a later actor on the same disk knows whose it is."""
        self.gateway = NodeGateway(self.scratch)
        """The node's model route, for agents in containers (started by the driver's first try here)."""

    async def connect(self) -> tuple[bool, Any, None]:
        """Remove what earlier runs of this job left in this disk's temp directory (their actors died with
        their driver), connect this node's Docker backend (an InfrastructureError if its engine does not
        answer); returns the network it gives tasks that need the internet."""

        async def run() -> NetworkMode | None:
            await asyncio.to_thread(_remove_scratch, _scratch_prefix(self.job.job_id), spare=_scratch_prefix(self.job.job_id, self.run_id))
            self.backend = await DockerBackend.connect(self.config, self.job)
            return self.backend.internet_network

        return await _outcome(run())

    async def prepare(self, task: Task, timeout_sec: float | None, log_name: str | None) -> tuple[bool, Any, bytes | None]:
        """The task's images made here and held; returns this node's image work so far."""
        assert self.backend is not None
        logs = self.scratch / f"prepare-{uuid.uuid4().hex}"
        await asyncio.to_thread(logs.mkdir, parents=True)
        log_path = logs / log_name if log_name is not None else None
        ok, value, _ = await _outcome(self.backend.prepare(task, timeout_sec=timeout_sec, log_path=log_path))
        return ok, self.backend.image_summary if ok else value, await asyncio.to_thread(_tar_and_remove, logs)

    async def release(self, task: Task) -> tuple[bool, Any, None]:
        assert self.backend is not None
        return await _outcome(self.backend.release(task))

    async def sweep(self, stopped_only: bool = False) -> tuple[bool, Any, None]:
        assert self.backend is not None
        return await _outcome(self.backend.sweep(stopped_only=stopped_only))

    async def forget(self, lost_node_ids: list[str]) -> tuple[bool, Any, None]:
        """What lost nodes of this run left where this node reaches: their containers of the job on this
        engine (unless the job keeps containers) and their scratch directories on this disk. Returns how
        many containers were removed."""
        backend = self.backend
        assert backend is not None

        async def run() -> int:
            removed = 0
            for node_id in lost_node_ids:
                if not self.config.keep_containers:
                    removed += await backend.sweep(labels={LABEL_NODE: node_id})
                await asyncio.to_thread(_remove_scratch, _scratch_prefix(self.job.job_id, self.run_id, node_id))
            return removed

        return await _outcome(run())

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
        """Remove the environment; returns this node's image work so far (a start may have made images)."""
        env = self.environments.pop(env_id, None)
        try:
            ok, value, _ = await _outcome(env.stop()) if env is not None else (True, None, None)
            return ok, self.backend.image_summary if ok and self.backend is not None else value, None
        finally:
            await asyncio.to_thread(shutil.rmtree, self.scratch / env_id, True)


    # ------------------------------------------------------------------- the node's model route (ray_routes.py)

    async def start_gateway(self, setup: RouteSetup) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.start(setup))

    async def open_route(self, trial_id: str, home: int | None) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.open(trial_id, home))

    async def close_route(self, api_key: str) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.close(api_key))

    async def read_trajectory(self, api_key: str, offset: int, size: int, whole_lines: bool) -> tuple[bool, Any, None]:
        return await _outcome(self.gateway.read(api_key, offset, size, whole_lines))

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


def _scratch_prefix(job_id: str, run_id: str | None = None, node_id: str | None = None) -> str:
    """The name a scratch directory starts with: of the job, of one of its runs, of one node in that run."""
    parts = [job_id, run_id, node_id[:12] if node_id else None]
    return "evalkit-ray-" + "".join(f"{part}-" for part in parts if part is not None)


def _remove_scratch(prefix: str, *, spare: str | None = None) -> None:
    """Remove this disk's scratch directories whose names start with `prefix` (but not with `spare`)."""
    root = Path(tempfile.gettempdir())
    for path in root.glob(f"{prefix}*"):
        if (spare is None or not path.name.startswith(spare)) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _untar(data: bytes, target: Path) -> None:
    target.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(target, filter="data")


# ----------------------------------------------------------------------------------------- on the driver


@dataclass(eq=False)
class Node:
    """One selected node as the driver sees it."""

    node_id: str
    address: str
    actor: Any
    in_flight: int = 0
    tries: int = 0
    lost: bool = False
    failures: int = 0
    """Calls to it that failed with an infrastructure error (its engine's, its actor's)."""
    images: ImageSummary = field(default_factory=ImageSummary)
    """The node's image work, as it last reported it."""
    image_keys: set[str] = field(default_factory=set)
    """Images made, or being made, there for this job (`_image_key`): tries of those tasks prefer this node."""
    held: int = 0
    """Prepares here whose `release` has not come yet: a task whose images no node has goes to the least held."""

    @property
    def label(self) -> str:
        return self.node_id[:12]


class RayBackend:
    """One job's nodes: an actor per selected node, placement by image locality and free capacity, nodes
    that come alive after a loss joining, and the node statistics for `results.json`. Create with
    `await RayBackend.connect(...)`."""

    def __init__(self, config: EnvironmentConfig, job: JobIdentity, nodes: list[Node], *, owns_connection: bool,
                 driver_address: str, run_id: str) -> None:
        self.config = config
        self.job = job
        self.nodes = nodes
        self.driver_address = driver_address
        """The address of the node this driver runs on (what reaches the driver's loopback)."""
        self._reserved: dict[Path, _Reservation] = {}
        """Model routes opened on a node, by mount source: the try's container goes to that node."""
        self.owns_connection = owns_connection
        """Whether evalkit called `ray.init` (and so calls `ray.shutdown`); never for the caller's connection."""
        self.run_id = run_id
        """This run of the job: names the actors' scratch directories."""
        self._changed = asyncio.Event()
        """Set when a node frees a slot, is lost or joins: placements waiting for capacity look again."""
        self.health = BackendHealth()
        """Round trips of the calls to the nodes' actors (what `n_concurrent: auto` steers by)."""
        self.image_summary = ImageSummary()
        """The nodes' image work, summed as they report it."""
        self.internet_network: NetworkMode | None = None
        """The nodes' network for tasks that need the internet, when every node offers the same one."""
        self.outages = 0
        """Times every node of the job was lost at once: new tries wait (`available`) for a node to come alive.
        One node lost while others live is no outage: its tries fail with RayNodeError and go elsewhere."""
        self._holders: dict[str, list[Node]] = {}
        """Per task image key: the node of each `prepare` not yet released (released there)."""
        self._joining: asyncio.Task[None] | None = None
        """From the first loss until close: looks for selected nodes that came alive."""
        self._refused: set[str] = set()
        """Nodes that came alive but could not join (their engine did not answer): not tried again."""
        self.join_checks: list[Callable[[str, str], None]] = []
        """Checks of a node that comes alive mid-job (its label, its address): one that raises refuses it."""
        self._failed: dict[str, EnvironmentBuildError] = {}
        """Per image key: the task's own build failure on the node that prepared it. Its tries fail with it at
        once, wherever they would have gone (as a local run's image store does), instead of building again."""

    @classmethod
    async def connect(cls, config: EnvironmentConfig, job: JobIdentity) -> RayBackend:
        owns = await asyncio.to_thread(_ensure_connection, config.ray)
        run_id = uuid.uuid4().hex[:8]
        nodes: list[Node] = []
        try:
            driver_address = await asyncio.to_thread(_driver_address)
            for info in await asyncio.to_thread(_select_nodes, config.ray):
                nodes.append(_start_node(info, config, job, run_id))
            backend = cls(config, job, nodes, owns_connection=owns, driver_address=driver_address, run_id=run_id)
            networks = [network for _, network in await backend._all(
                "connect", "starting evalkit on node {} and reaching its Docker engine", timeout=_CONNECT_TIMEOUT_SEC)]
            backend.internet_network = networks[0] if len(set(networks)) == 1 else None
            return backend
        except BaseException:
            await uncancellable(_dismiss(nodes))
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
        """The task's images on the node its tries will most likely go to (`place`): one that has them or is
        making them, else the live node holding the fewest; held there until `release`. The node's build log
        comes back to `log_path`. Raises the node's typed error."""
        live = [n for n in self.nodes if not n.lost]
        if not live:
            return  # the try meets RayNodeError when it is placed
        key = _image_key(task)
        node = min(live, key=lambda n: (key not in n.image_keys, n.held))
        node.held += 1
        self._holders.setdefault(key, []).append(node)
        node.image_keys.update(_image_key(view) for _, view in await asyncio.to_thread(image_views, task))
        outcome = await _ask(node.actor.prepare.remote(task, timeout_sec, log_path and log_path.name))
        if outcome is None:
            self.lose(node)  # its tries are placed elsewhere and make the images there
            return
        ok, value, logs = outcome
        if logs is not None and log_path is not None:
            await _unpack(logs, log_path.parent, max_bytes=_BUILD_LOGS_MAX_BYTES, max_files=100)
        if not ok:
            error = _rebuilt(value)
            if isinstance(error, EnvironmentBuildError):
                self._failed[key] = error
            raise error
        self.report_images(node, value)

    async def release(self, task: Task) -> None:
        """Release one `prepare` of the task, on the node it was made on."""
        holders = self._holders.get(_image_key(task))
        if not holders:
            return
        node = holders.pop()
        node.held -= 1
        if not node.lost:
            await _ask(node.actor.release.remote(task))

    def report_images(self, node: Node, images: ImageSummary) -> None:
        """A node's image work as it reports it; the job's summary is their sum."""
        node.images = images
        for name in ImageSummary.model_fields:
            setattr(self.image_summary, name, sum(getattr(n.images, name) for n in self.nodes))

    @property
    def up(self) -> bool:
        return any(not n.lost for n in self.nodes)

    async def available(self) -> None:
        """Return once a node of the job is live (at once, unless every one was lost); InfrastructureError when
        none has come alive and joined within `outage_timeout_sec`."""
        try:
            async with asyncio.timeout(self.config.outage_timeout_sec):
                while not self.up:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise InfrastructureError(
                f"every Ray node of this job was lost and none came alive within {self.config.outage_timeout_sec:g} s "
                "(environment.outage_timeout_sec); finished tries are kept, run the job again to resume it"
            ) from None

    async def answers(self) -> bool:
        return self.up

    async def sweep(self, *, stopped_only: bool = False) -> int:
        return sum(n for _, n in await self._all("sweep", "removing the job's leftovers on node {}", stopped_only))

    async def close(self) -> None:
        """Stop looking for nodes, have the surviving nodes remove what lost nodes left on an engine or disk
        they share, close every node's Docker connection (each actor removes its scratch directory), stop
        the actors; shut Ray down only if evalkit connected it."""
        try:
            if self._joining is not None:
                self._joining.cancel()
                await uncancellable(asyncio.wait([self._joining]))
            lost = [n.node_id for n in self.nodes if n.lost]
            if lost:
                await self._all("forget", "removing what lost nodes left, from node {}", lost, strict=False)
                if not self.config.keep_containers:
                    await self._all("sweep", "removing what lost nodes left, from node {}", strict=False)
            for node, images in await self._all("close", "closing node {}", strict=False):
                if images is not None:
                    self.report_images(node, images)
        finally:
            for node in self.nodes:
                ray.kill(node.actor)
            if self.owns_connection:
                await uncancellable(asyncio.to_thread(ray.shutdown))

    def node_stats(self) -> dict[str, NodeStats]:
        """Per node: environments in flight, tries placed, whether it was lost, its images (for `results.json`)."""
        return {n.label: NodeStats(address=n.address, in_flight=n.in_flight, tries=n.tries, lost=n.lost, failures=n.failures,
                                      images=n.images)
                for n in self.nodes}

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
            node.failures += 1
            self.lose(node)
            raise RayNodeError(f"Ray node {node.label} ({node.address}) was lost while {doing}") from None
        except RayError as exc:
            self.health.failures += 1
            node.failures += 1
            raise RayNodeError(f"Ray node {node.label} ({node.address}) failed while {doing}: {type(exc).__name__}") from None
        self.health.record(time.monotonic() - started)
        if not outcome[0] and kind_of(outcome[1][0]) == "infrastructure":
            node.failures += 1  # its engine failed (a task's or an agent's failure is not the node's)
        return outcome

    async def _all(self, method: str, doing: str, *args: Any, strict: bool = True,
                   timeout: float | None = None) -> list[tuple[Node, Any]]:
        """Call `method` on every live node's actor at once; (node, value) of those that answered. `strict`:
        the first failure is raised as an InfrastructureError naming the node; otherwise failed nodes are skipped."""
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
                values.append((node, value))
            elif strict:
                raise InfrastructureError(f"Ray backend: {doing.format(node.label)} ({node.address}) failed: {value}")
        return values

    async def place(self, task: Task | None) -> Node:
        """A live node with a free slot: one that has the task's images first, then the most free slots
        (fewest tries placed, on a tie); waits while all are full. A node without the images makes them
        when the try starts there (and then has them). `task` None (a model route placed ahead of its
        environment when the task is unknown): capacity only."""
        limit = self.config.ray.max_trials_per_node
        key = _image_key(task) if task is not None else None
        while True:
            live = [n for n in self.nodes if not n.lost]
            if not live:
                raise RayNodeError("every Ray node of this job was lost")
            free = [n for n in live if n.in_flight < limit]
            if free:
                node = min(free, key=lambda n: (key not in n.image_keys, n.in_flight, n.tries))
                node.in_flight += 1
                node.tries += 1
                if key is not None:
                    node.image_keys.add(key)
                return node
            self._changed.clear()
            await self._changed.wait()

    def build_failure(self, task: Task) -> EnvironmentBuildError | None:
        """The task's own build failure where it was prepared: its tries fail with it at once."""
        return self._failed.get(_image_key(task))

    def free(self, node: Node) -> None:
        """A slot of `node` is free again."""
        node.in_flight -= 1
        self._changed.set()

    def lose(self, node: Node) -> None:
        """The node is gone for this run; from now on, nodes that come alive are looked for."""
        node.lost = True
        self._changed.set()
        if not self.up:
            self.outages += 1
            log.warning("every Ray node of this job was lost; new tries wait up to %g s for a node to come alive",
                        self.config.outage_timeout_sec)
        if self._joining is None:
            self._joining = asyncio.ensure_future(self._join_nodes())

    async def _join_nodes(self) -> None:
        """Every REJOIN_POLL_SEC: each selected node that is alive and new to the job joins it."""
        while True:
            await asyncio.sleep(REJOIN_POLL_SEC)
            try:
                alive = await asyncio.to_thread(_selected_nodes, self.config.ray)
            except (RayError, ConnectionError, RuntimeError) as exc:
                log.warning("Ray backend: cannot list the cluster's nodes: %s", exc)
                continue
            known = {n.node_id for n in self.nodes} | self._refused
            for info in alive:
                if info["NodeID"] not in known:
                    await self._join(info)

    async def _join(self, info: dict[str, Any]) -> None:
        """Start an actor on a node that came alive; it removes what the lost nodes left where it reaches,
        then the node takes tries. A node whose engine does not answer, or offers another network, is refused."""
        node = _start_node(info, self.config, self.job, self.run_id)
        lost = [n.node_id for n in self.nodes if n.lost]
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_SEC):
                network = _value(*await node.actor.connect.remote())
                removed = _value(*await node.actor.forget.remote(lost))
            if self.internet_network not in (None, network):
                raise InfrastructureError(f"it offers network {network!r} to tasks that need the internet, the job's other nodes {self.internet_network!r}")
            for check in self.join_checks:
                check(node.label, node.address)
        except Exception as exc:
            await uncancellable(_dismiss([node]))
            self._refused.add(node.node_id)
            log.warning("Ray node %s (%s) came alive but cannot join the job: %s: %s", node.label, node.address, type(exc).__name__, exc)
            return
        except BaseException:
            await uncancellable(_dismiss([node]))
            raise
        self.nodes.append(node)
        self._changed.set()
        log.info("Ray node %s (%s) joined the job; it removed %d container(s) that lost nodes left", node.label, node.address, removed)


async def _dismiss(nodes: list[Node]) -> None:
    """Stop actors that never joined the job: each closes first (its scratch directory goes), briefly, then is killed."""
    refs = [node.actor.close.remote() for node in nodes]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*refs, return_exceptions=True), _DISMISS_TIMEOUT_SEC)
    for node in nodes:
        ray.kill(node.actor)


def _start_node(info: dict[str, Any], config: EnvironmentConfig, job: JobIdentity, run_id: str) -> Node:
    """A NodeAgent pinned to the node (dies with it: no restarts), not yet connected."""
    pinned = NodeAffinitySchedulingStrategy(info["NodeID"], soft=False)
    actor = _ACTOR.options(num_cpus=0, max_restarts=0, scheduling_strategy=pinned).remote(config, job, run_id)
    return Node(info["NodeID"], info["NodeManagerAddress"], actor)


def _image_key(task: Task) -> str:
    """What a task's image is made from (as the node's image store keys it): tasks that share it share the image."""
    return task.config.environment.docker_image or str(task.environment_dir)


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


def _offering(config: RayConfig) -> list[dict[str, Any]]:
    """The live nodes that offer `environment.ray.resources`."""
    return [n for n in ray.nodes() if n.get("Alive") and all(n["Resources"].get(k, 0) >= v for k, v in config.resources.items())]


def _labelled(nodes: list[dict[str, Any]], config: RayConfig) -> list[dict[str, Any]]:
    """Those of `nodes` that carry `environment.ray.labels`."""
    return [n for n in nodes if all(n.get("Labels", {}).get(k) == v for k, v in config.labels.items())]


def _selected_nodes(config: RayConfig) -> list[dict[str, Any]]:
    """The live nodes the job may use."""
    return _labelled(_offering(config), config)


def _select_nodes(config: RayConfig) -> list[dict[str, Any]]:
    """The job's nodes at its start; none is a config error naming the field that rules them all out."""
    offering = _offering(config)
    if not offering:
        wanted = ", ".join(f"{k}>={v:g}" for k, v in config.resources.items())
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        raise ConfigError(f"environment.ray.resources: no live Ray node offers {wanted} ({alive} node(s) alive)")
    selected = _labelled(offering, config)
    if not selected:
        wanted = ", ".join(f"{k}={v}" for k, v in config.labels.items())
        raise ConfigError(f"environment.ray.labels: no live Ray node carries {wanted} ({len(offering)} node(s) offer "
                          "the resources)")
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
        if (failed := self.backend.build_failure(self.task)) is not None:
            raise failed
        self.node = self.backend.take(self.spec.mounts) or await self.backend.place(self.task)
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
                self.backend.report_images(node, await self._call_on(node, "stop", "removing the environment"))
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
