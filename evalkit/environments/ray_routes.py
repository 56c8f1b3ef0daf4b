"""The model route of a job on Ray: a gateway on each node that runs agents in containers.

An agent in a container reaches its model through a Unix socket mounted from the machine its container runs
on, so on a cluster the route lives on the try's node. Each node's actor runs a gateway of its own (the same
`Gateway` as a local job's, started on the node's first such try) that forwards to the job's upstreams with
the keys the driver read from its environment, and writes each try's trajectory into the node's scratch
directory. `NodeRoutes` stands on the driver where the job's `Gateway` stands (`open_trial` / `close_trial` /
`release_route`): it places the try on a node (its container then starts there, where its route is), gives
the trial its home deployment, and brings the trajectory back, in bounded chunks, into the try's `agent/`
directory through the same safe writer a local gateway uses, so the job directory is a local run's: whole
lines every `LIVE_COPY_SEC` while the agent runs (the dashboard follows a running try), the rest at close.

Sticky routing across nodes: the driver, which sees every try, chooses each trial's home (the deployment with
the fewest live trials, cluster-wide) and a retry keeps its trial's home wherever it runs; a try keeps its
deployment for its whole life because all its calls go through one node's gateway. `max_in_flight` is split
over every gateway process on every node (`routing.slot_share`): cluster-wide a deployment may see up to
(nodes × `llm_api.processes` − 1) calls over its cap at once, the same tolerance as a local job's processes.

A host-side agent (the built-in `evalkit` agent) runs on the driver and uses the driver's own gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import shutil
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from evalkit.cleanup import uncancellable
from evalkit.errors import ConfigError, GatewayLostError, InfrastructureError, RayNodeError
from evalkit.gateway.config import LLMApiConfig, without_credentials
from evalkit.gateway.gateway import Gateway, api_keys
from evalkit.gateway.logfile import LogFile, open_log
from evalkit.gateway.trials import TrialAccess
from evalkit.results import ModelUsage, trial_of

if TYPE_CHECKING:
    from evalkit.environments.ray_cluster import Node, RayBackend
    from evalkit.tasks import Task

CHUNK_BYTES = 4 * 1024 * 1024
"""A trajectory comes back to the driver at most this much per actor call (the driver holds one at a time)."""
LIVE_COPY_SEC = 2.0
"""While a trial is open, its trajectory's new whole lines are copied to the driver this often."""
log = logging.getLogger("evalkit.ray")
_TRAJECTORY = "trajectory.jsonl"


# ----------------------------------------------------------------------------------------- on each node


@dataclass(frozen=True)
class RouteSetup:
    """What a node needs to run the job's gateway: the job's `llm_api` (model servers already started), the
    upstream keys (in memory only: never written on the node), and how many nodes share each cap."""

    llm_api: LLMApiConfig
    keys: list[str | None]
    job_name: str
    nodes: int


class NodeGateway:
    """Inside a node's actor: the node's gateway (started by `start`, stopped by `stop`) and the trajectories
    of its open trials, kept in the node's scratch directory until the driver has read them."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch / "model-route"
        self._stack = AsyncExitStack()
        self._gateway: Gateway | None = None
        self._trajectories: dict[str, Path] = {}

    async def start(self, setup: RouteSetup) -> None:
        if self._gateway is None:
            self._gateway = await self._stack.enter_async_context(Gateway.serve(
                setup.llm_api, job_name=setup.job_name, artifacts_dir=self.scratch, keys=setup.keys, nodes=setup.nodes,
            ))  # fmt: skip

    @property
    def gateway(self) -> Gateway:
        if self._gateway is None:
            raise InfrastructureError("this node's gateway is not running")
        return self._gateway

    async def open(self, trial_id: str, home: int | None) -> TrialAccess:
        trajectory = self.scratch / "trials" / uuid.uuid4().hex / _TRAJECTORY
        access = await self.gateway.open_trial(trial_id, trajectory, home=home)
        self._trajectories[access.api_key] = trajectory
        return access

    async def close(self, api_key: str) -> ModelUsage:
        return await self.gateway.close_trial(api_key)

    async def read(self, api_key: str, offset: int, size: int, whole_lines: bool) -> bytes:
        """Up to `size` bytes of a trial's trajectory from `offset` (empty at its end). `whole_lines` (the
        trial still open, its last line possibly half written): a chunk that reaches the file's end stops at
        its last line end (a full chunk is sent whole: the next one follows at once)."""
        data = await asyncio.to_thread(_read_chunk, self._trajectories[api_key], offset, size)
        return data[: data.rfind(b"\n") + 1] if whole_lines and len(data) < size else data

    async def release(self, access: TrialAccess) -> None:
        await self.gateway.release_route(access)
        if (trajectory := self._trajectories.pop(access.api_key, None)) is not None:
            await asyncio.to_thread(shutil.rmtree, trajectory.parent, True)

    async def stop(self) -> str | None:
        """Stop the gateway (closing what is still open); returns its requests no trial owned, if any."""
        if self._gateway is None:
            return None
        self._gateway = None
        await self._stack.aclose()
        rejected = next(self.scratch.glob("litellm/*/rejected.jsonl"), None)
        text = await asyncio.to_thread(_read_text, rejected) if rejected is not None else None
        await asyncio.to_thread(shutil.rmtree, self.scratch, True)
        return text or None


def _read_chunk(path: Path, offset: int, size: int) -> bytes:
    """Files the node's gateway wrote itself; opened without following a link all the same."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _read_text(path: Path) -> str | None:
    """The file's first `CHUNK_BYTES`."""
    try:
        return _read_chunk(path, 0, CHUNK_BYTES).decode(errors="replace")
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise


# ----------------------------------------------------------------------------------------- on the driver


@dataclass
class _OpenTrial:
    node: Node
    trajectory: LogFile
    trial: str
    copied: int = 0
    """Bytes of the node's trajectory already in the driver's."""
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    follower: asyncio.Task[None] | None = None


@dataclass
class _Homes:
    """Each trial's home deployment, decided here for the whole cluster."""

    live: list[int]
    """Per deployment, the tries open now whose home it is."""
    of_trial: dict[str, int] = field(default_factory=dict)

    def take(self, trial: str) -> int:
        home = self.of_trial.get(trial)
        if home is None:
            home = self.of_trial[trial] = min(range(len(self.live)), key=lambda i: (self.live[i], i))
        self.live[home] += 1
        return home

    def give_back(self, trial: str) -> None:
        self.live[self.of_trial[trial]] -= 1


class NodeRoutes:
    """The driver's side of the node gateways. Create with `NodeRoutes.serve(...)`."""

    def __init__(self, backend: RayBackend, setup: RouteSetup, tasks: Mapping[str, Task], artifacts_dir: Path) -> None:
        self.backend = backend
        self.setup = setup
        self.tasks = tasks
        self.artifacts_dir = artifacts_dir
        self.homes = _Homes([0] * len(setup.llm_api.deployments))
        self._started: dict[str, asyncio.Future[None]] = {}
        """Per node id: its gateway's start (once)."""
        self._open: dict[str, _OpenTrial] = {}

    @classmethod
    @asynccontextmanager
    async def serve(cls, backend: RayBackend, llm_api: LLMApiConfig, *, job_name: str, artifacts_dir: Path,
                    tasks: Mapping[str, Task]) -> AsyncIterator[NodeRoutes]:
        """Node gateways start on demand; on exit (cancellation included) every one that started is stopped,
        and what each rejected lands in `artifacts/litellm/<job>/nodes/<node>-rejected.jsonl`."""
        check_reachable(llm_api, backend.driver_address, {n.label: n.address for n in backend.nodes})
        backend.join_checks.append(lambda label, address: check_reachable(llm_api, backend.driver_address, {label: address}))
        setup = RouteSetup(llm_api, api_keys(llm_api), job_name, nodes=len(backend.nodes))
        routes = cls(backend, setup, tasks, Path(artifacts_dir) / "litellm" / job_name / "nodes")
        try:
            yield routes
        finally:
            await uncancellable(routes._stop())

    async def open_trial(self, trial_id: str, trajectory_path: Path) -> TrialAccess:
        """Place the try on a node (holding a slot there for its container), open its route on that node's
        gateway, and create its trajectory file here (`open_log`: nothing planted is followed)."""
        trajectory = await asyncio.to_thread(open_log, trajectory_path)
        trial = trial_of(trial_id)
        node: Node | None = None
        try:
            node = await self.backend.place(self.tasks.get(trial))  # where the try's images are
            access: TrialAccess = await self._open_on(node, trial_id, trial)
        except BaseException:
            if node is not None:
                self.backend.free(node)
            await uncancellable(asyncio.to_thread(trajectory.discard))
            raise
        opened = self._open[access.api_key] = _OpenTrial(node, trajectory, trial)
        opened.follower = asyncio.ensure_future(self._follow(access.api_key, opened))
        self.backend.reserve(access.socket_path.parent, node)
        return access

    async def _open_on(self, node: Node, trial_id: str, trial: str) -> TrialAccess:
        home = self.homes.take(trial)
        try:
            await self._gateway_on(node)
            access: TrialAccess = await self.backend.call(node, "open_route", "opening a model route", trial_id, home)
        except BaseException:
            self.homes.give_back(trial)
            raise
        return access

    async def _gateway_on(self, node: Node) -> None:
        if (started := self._started.get(node.node_id)) is None:
            started = self._started[node.node_id] = asyncio.ensure_future(
                self.backend.call(node, "start_gateway", "starting the node's gateway", self.setup))
        try:
            await asyncio.shield(started)
        except Exception:
            if self._started.get(node.node_id) is started:
                del self._started[node.node_id]  # the next try on this node starts it afresh
            raise

    async def close_trial(self, api_key: str) -> ModelUsage:
        """Close the trial on its node, then copy its trajectory here chunk by chunk. A node lost meanwhile is
        the same infrastructure error as a local gateway process that died (`GatewayLostError`)."""
        opened = self._open.pop(api_key)
        self.homes.give_back(opened.trial)
        opened.closing.set()
        if opened.follower is not None:
            await opened.follower  # ends at once; never two writers of one file
        trajectory = opened.trajectory
        try:
            usage: ModelUsage = await self.backend.call(opened.node, "close_route", "closing a model route", api_key)
            await self._copy(api_key, opened, whole_lines=False)
        except RayNodeError as exc:
            raise GatewayLostError(f"{exc}: the trial's model calls are missing from its trajectory and usage") from None
        finally:
            await uncancellable(asyncio.to_thread(trajectory.close))
        if trajectory.error is not None and usage.trajectory_error is None:
            usage.trajectory_error = trajectory.error
        return usage

    async def _copy(self, api_key: str, opened: _OpenTrial, *, whole_lines: bool) -> None:
        """Append what the node's trajectory has beyond what the driver's has, chunk by chunk."""
        while chunk := await self.backend.call(opened.node, "read_trajectory", "copying a trajectory", api_key,
                                               opened.copied, CHUNK_BYTES, whole_lines):
            await asyncio.to_thread(opened.trajectory.write, chunk)
            opened.copied += len(chunk)

    async def _follow(self, api_key: str, opened: _OpenTrial) -> None:
        """While the trial is open: its new whole lines every `LIVE_COPY_SEC`. A failure only ends the
        following (the copy at close says what went wrong)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LIVE_COPY_SEC):
                    await opened.closing.wait()
            if opened.closing.is_set():
                return
            try:
                await self._copy(api_key, opened, whole_lines=True)
            except Exception as exc:  # a live view is a convenience: close_trial copies the rest
                log.debug("following the trajectory of %s on node %s: %s", opened.trial, opened.node.label, exc)
                return

    async def release_route(self, access: TrialAccess) -> None:
        """After the try's container is gone: its slot (if no container took it) and its route on the node."""
        node = self.backend.unreserve(access.socket_path.parent)
        if node is not None and not node.lost:
            try:
                await self.backend.call(node, "release_route", "removing a model route", access)
            except RayNodeError:
                pass  # the node's scratch goes with it

    async def _stop(self) -> None:
        for opened in self._open.values():  # trials never closed (their trial function did not get that far)
            if opened.follower is not None:
                opened.follower.cancel()
        started = [n for n in self.backend.nodes if n.node_id in self._started and not n.lost]
        for node, rejected in zip(started, await asyncio.gather(
            *(self.backend.call(n, "stop_gateway", "stopping the node's gateway") for n in started), return_exceptions=True,
        )):  # fmt: skip
            if isinstance(rejected, str):
                await asyncio.to_thread(_write_rejected, self.artifacts_dir / f"{node.label}-rejected.jsonl", rejected)


def _write_rejected(path: Path, text: str) -> None:
    log = open_log(path, exclusive=False)  # a resumed job appends
    try:
        log.write(text.encode())
    finally:
        log.close()


def check_reachable(llm_api: LLMApiConfig, driver_address: str, nodes: Mapping[str, str]) -> None:
    """A deployment on a loopback address (a model server evalkit started, `localhost:8000`) is reachable from
    the driver's machine only: refuse a job that has nodes elsewhere, naming the field, rather than fail
    every try on those nodes."""
    elsewhere = {label: address for label, address in nodes.items() if address != driver_address}
    for i, deployment in enumerate(llm_api.deployments):
        host = urllib.parse.urlsplit(deployment.api_base or "").hostname
        if host is not None and _is_loopback(host) and elsewhere:
            label, address = next(iter(elsewhere.items()))
            raise ConfigError(
                f"llm_api.deployments[{i}].api_base: {without_credentials(deployment.api_base or '')} is a loopback "
                f"address, reachable only from the driver's machine ({driver_address}), but Ray node {label} is at "
                f"{address}; serve the model on an address every node reaches, or select only nodes on this machine"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

