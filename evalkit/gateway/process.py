"""A gateway process: `python -m evalkit.gateway.process FD`, started by the job's `Gateway` (gateway.py).

It serves its share of the job's trials (their TCP requests on its own port, and their Unix sockets), holds the
connection pool, the deployments' health and the trials' trajectory files, and writes them in its writer
thread. Everything it is told arrives on the control channel (FD, one end of a socket pair); it never reads the
job's config or environment. It ignores SIGINT (a Ctrl-C reaches the whole process group: the job decides when
its gateway stops), stops cleanly on the channel's `stop` or on SIGTERM, and stops on its own when the channel
closes, i.e. when the job's process is gone, so it never outlives its job.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import sys
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
from aiohttp import web

from evalkit.cleanup import uncancellable
from evalkit.errors import InfrastructureError
from evalkit.gateway.config import LLMApiConfig
from evalkit.gateway.control import Channel
from evalkit.gateway.logfile import LineWriter, open_log
from evalkit.gateway.routes import RouteDirs, TrialRoute
from evalkit.gateway.routing import Deployment, DeploymentPool, Price
from evalkit.gateway.server import Front
from evalkit.gateway.translate import load_litellm
from evalkit.gateway.trials import Trial

LISTEN_BACKLOG = 1024
"""Hundreds of agents may connect at once; a short accept queue turns that into 1 s SYN retransmits."""

SHUTDOWN_GRACE_SEC = 1.0
"""How long the server waits for requests that no trial owns (health checks, 401s) when stopping."""

log = logging.getLogger("evalkit.gateway")


class GatewayProcess:
    """What one gateway process serves; all of it hangs off this instance."""

    def __init__(self, init: dict[str, Any]) -> None:
        self.config = config = LLMApiConfig.model_validate(init["config"])
        prices = [Price(*p) if p else None for p in init["prices"]]
        deployments = [
            Deployment(i, d, init["keys"][i], prices[i], init["shares"]) for i, d in enumerate(config.deployments)
        ]
        self._pool = DeploymentPool(deployments, config)
        self._routes = RouteDirs(Path(init["routes"]))
        self._rejected_path = Path(init["rejected"])
        self._port = init["port"]
        self._trials: dict[str, Trial] = {}
        self._closed: dict[str, object] = {}
        self._writer = LineWriter()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=config.upstream_keepalive_sec),
            # The pool applies the first-byte limit per attempt and the relay the idle one; connecting has its own.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_sec),
            auto_decompress=False,
        )
        self._litellm_task: asyncio.Future[ModuleType] | None = None
        self.front = Front(
            config, self._pool, self._session, self._trials, self._closed, self._writer, init["secrets"],
            init["admin_key"], self._litellm,
        )  # fmt: skip
        self._runner: web.ServerRunner | None = None

    async def _litellm(self) -> ModuleType:
        """LiteLLM, imported (seconds of CPU, in a thread) by the first call that needs it: most gateways never do."""
        if self._litellm_task is None:
            self._litellm_task = asyncio.ensure_future(asyncio.to_thread(load_litellm))
        return await asyncio.shield(self._litellm_task)

    async def start(self, host: str) -> str:
        """Listen on `host` and this process's port; returns the URL agents are given."""
        self.front.rejected = await asyncio.to_thread(open_log, self._rejected_path, exclusive=False)
        self._runner = web.ServerRunner(
            web.Server(self.front.handle, handler_cancellation=True, access_log=None), shutdown_timeout=SHUTDOWN_GRACE_SEC
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, self._port, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as exc:
            raise InfrastructureError(f"the gateway cannot listen on {host}:{self._port}: {exc.strerror}") from None
        # A wildcard listen address is not one a client can dial: hand out loopback instead.
        reachable = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        return f"http://{f'[{reachable}]' if ':' in reachable else reachable}:{self._runner.addresses[0][1]}"

    async def open_trial(self, trial_id: str, trajectory: str, api_key: str, home: int | None = None) -> dict[str, Any]:
        path = Path(trajectory)
        if self.front.stopping:
            raise InfrastructureError("the gateway is stopping: no new trials")
        log_file = await asyncio.to_thread(open_log, path)
        trial = Trial(trial_id, api_key, log_file, self._writer)
        try:
            trial.route = await TrialRoute.open(self._routes, partial(self.front.handle, bound=trial))
        except BaseException:
            await uncancellable(asyncio.to_thread(log_file.discard))
            raise
        if self.front.stopping:  # the gateway began to stop while this trial was opening
            await uncancellable(trial.route.close())
            await uncancellable(asyncio.to_thread(log_file.discard))
            raise InfrastructureError("the gateway is stopping: no new trials")
        self._trials[api_key] = trial
        if home is not None:
            self._pool.pin(api_key, home)
        return {"socket_path": str(trial.route.socket_path)}

    async def close_trial(self, api_key: str) -> dict[str, Any]:
        """Revoke the key and the route, cancel the trial's calls in flight, finish and close its trajectory."""
        trial = self._trials.pop(api_key)
        trial.closed = True
        assert trial.route is not None
        trial.route.stop_listening()
        if trial.calls:
            calls = list(trial.calls)
            for task in calls:
                task.cancel()
            await asyncio.wait(calls)
        self._pool.unpin(api_key)
        await self._writer.close(trial.log)  # after every line of its calls
        await trial.route.close()
        self._closed[api_key] = True
        return trial.usage()

    async def stop(self) -> None:
        self.front.stopping = True
        await asyncio.gather(*(self.close_trial(key) for key in list(self._trials)), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self._session.close()
        if self.front.rejected is not None:
            await self._writer.close(self.front.rejected)
        await self._writer.stop()
        if self._litellm_task is not None and not self._litellm_task.done():
            await asyncio.wait([self._litellm_task])  # a thread cannot be cancelled: let the import finish


class _ToChannel(logging.Handler):
    """Hands this process's warnings to the job's process, which logs them as its own (from any thread)."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self._channel, self._loop = channel, loop

    def emit(self, record: logging.LogRecord) -> None:
        message = {"log": {"level": record.levelno, "message": record.getMessage()}}
        try:
            self._loop.call_soon_threadsafe(self._channel.send, message)
        except RuntimeError:  # the loop is closed: the process is ending
            pass


async def serve(fd: int) -> None:
    channel = await Channel.over(socket.socket(fileno=fd))
    handler = _ToChannel(channel, asyncio.get_running_loop())
    log.addHandler(handler)
    log.propagate = False
    init = await channel.receive()
    if init is None:
        return
    gateway = None
    try:
        gateway = GatewayProcess(init)
        url = await gateway.start(init["host"])
    except Exception as exc:
        channel.send({"failed": {"type": type(exc).__name__, "message": str(exc)}})
        if gateway is not None:
            await gateway.stop()
        await channel.close()
        return
    channel.send({"ready": {"url": url}})
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with asyncio.TaskGroup() as group:
            reading = group.create_task(_commands(channel, gateway, group))
            stopping = group.create_task(stop.wait())
            await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
            reading.cancel()
            stopping.cancel()
    finally:
        await uncancellable(gateway.stop())
        channel.send({"stopped": True})
        await channel.close()


async def _commands(channel: Channel, gateway: GatewayProcess, group: asyncio.TaskGroup) -> None:
    """Run each command as it arrives (several trials open and close at once); return on `stop` or end-of-file."""
    calls: set[asyncio.Task[None]] = set()
    try:
        while (message := await channel.receive()) is not None and message.get("op") != "stop":
            task = group.create_task(_run(channel, gateway, message))
            calls.add(task)
            task.add_done_callback(calls.discard)
    finally:
        for task in calls:
            task.cancel()


async def _run(channel: Channel, gateway: GatewayProcess, message: dict[str, Any]) -> None:
    op, args = message["op"], message.get("args") or {}
    try:
        if op == "open":
            result: Any = await gateway.open_trial(**args)
        elif op == "stopping":  # the job is leaving: calls cut from now on end as "gateway stopped"
            gateway.front.stopping = True
            result = None
        elif op == "close":
            result = await uncancellable(gateway.close_trial(**args))  # half a close would lose lines
        else:
            raise ValueError(f"unknown gateway command {op!r}")
    except Exception as exc:  # handed to the job's process, which raises it for the trial
        channel.send({"id": message["id"], "error": {"type": type(exc).__name__, "message": str(exc)}})
        return
    channel.send({"id": message["id"], "result": result})


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # a thousand trials hold three descriptors each (socket, file, directory) plus connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    fd = int(sys.argv[1])
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(fd))


if __name__ == "__main__":
    main()
