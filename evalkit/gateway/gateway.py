"""`Gateway`: one per job, from `serve()` to the end of its `async with` block, in processes of its own.

The job's process (and event loop, possibly a host application's) runs none of the gateway's request handling:
`serve()` starts `llm_api.processes` gateway processes (`process.py`), each with its own TCP port, and spreads
the trials over them (each trial's TCP URL and Unix socket belong to the process that owns it, which writes its
trajectory). This object is the job's side: it opens and closes trials over each process's control channel,
notices a process that died (its trials' `close_trial` raises `GatewayLostError`, a typed infrastructure error,
and the next trial to open gets a fresh process), and stops every process by its PID when the block ends,
cancellation included (SIGKILL after a grace period). A gateway process also stops by itself when the job's
process is gone (its control channel closes), so none outlives its job.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import yaml

import evalkit
from evalkit.cleanup import uncancellable
from evalkit.errors import ConfigError, GatewayLostError, InfrastructureError
from evalkit.gateway.config import LLMApiConfig, without_credentials
from evalkit.gateway.control import Channel
from evalkit.gateway.routes import RouteDirs, release, sweep_stale
from evalkit.gateway.translate import price_of
from evalkit.gateway.trials import TrialAccess, new_key
from evalkit.results import ModelUsage

START_TIMEOUT_SEC = 60.0
"""How long a gateway process may take to import and listen (a busy machine, a cold disk cache)."""

STOP_GRACE_SEC = 15.0
"""How long a stopping gateway process may take to close its trials and flush their files before SIGKILL."""

MAX_RESTARTS = 3
"""Gateway processes started to replace dead ones, per job; past that, opening a trial is an infrastructure
error."""

log = logging.getLogger("evalkit.gateway")


def api_keys(config: LLMApiConfig) -> list[str | None]:
    keys = []
    for i, deployment in enumerate(config.deployments):
        if deployment.api_key_env is None:
            keys.append(None)
        elif not (key := os.environ.get(deployment.api_key_env)):
            raise ConfigError(
                f"llm_api.deployments[{i}].api_key_env: environment variable {deployment.api_key_env} is not set"
            )
        else:
            keys.append(key)
    return keys


def router_config(config: LLMApiConfig, job_name: str, url: str) -> dict[str, Any]:
    """The job's deployments in LiteLLM's proxy-config shape, keys as `os.environ/NAME` references only."""
    model_list = []
    for deployment in config.deployments:
        params: dict[str, Any] = {"model": deployment.model, "timeout": config.timeout_sec, **deployment.litellm_params}
        if deployment.api_base:
            params["api_base"] = without_credentials(deployment.api_base)
        if deployment.api_key_env:
            params["api_key"] = f"os.environ/{deployment.api_key_env}"
        if deployment.max_in_flight:
            params["max_parallel_requests"] = deployment.max_in_flight
        model_list.append(
            {"model_name": config.model, "litellm_params": params, "model_info": {"id": deployment.label}}
        )
    llm_api = config.model_dump(mode="json")
    for deployment in llm_api["deployments"]:
        deployment["api_base"] = deployment["api_base"] and without_credentials(deployment["api_base"])
    return {
        "model_list": model_list,
        "router_settings": {
            "num_retries": config.max_retries,
            "cooldown_time": config.cooldown_sec,
            "allowed_fails": config.allowed_fails,
            "timeout": config.timeout_sec,
        },
        "evalkit": {
            "job": job_name,
            "url": url,
            "routing": "sticky per trial, least-loaded placement",
            "llm_api": llm_api,
        },
    }


class _Process:
    """One gateway process as the job's side sees it: its PID, its control channel, its trials."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.trials: set[str] = set()
        self.lost: str | None = None
        """Why the process is gone, once it died unasked."""
        self.stopping = False
        self._channel: Channel | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()

    @property
    def live(self) -> bool:
        return self.lost is None and not self.stopping and self._reader is not None

    async def start(self, init: dict[str, Any]) -> None:
        ours, theirs = socket.socketpair()
        root = str(Path(evalkit.__file__).resolve().parents[1])  # importable however this process found evalkit
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "evalkit.gateway.process", str(theirs.fileno())]
        try:
            self.proc = await asyncio.to_thread(
                subprocess.Popen, command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._channel = await Channel.over(ours)
        self._channel.send(init)
        try:
            ready = await asyncio.wait_for(self._channel.receive(), START_TIMEOUT_SEC)
        except TimeoutError:
            raise InfrastructureError(f"the gateway process did not start within {START_TIMEOUT_SEC:g} s") from None
        if ready is None:
            raise InfrastructureError(f"the gateway process exited while starting ({await self._exit()})")
        if "failed" in ready:
            failed = ready["failed"]
            raise (ConfigError if failed["type"] == "ConfigError" else InfrastructureError)(failed["message"])
        self.url = ready["ready"]["url"]
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._channel is not None
        while (message := await self._channel.receive()) is not None:
            if (future := self._pending.pop(message.get("id", -1), None)) is not None:
                if not future.done():
                    if "error" in message:
                        future.set_exception(_raised(message["error"]))
                    else:
                        future.set_result(message.get("result"))
            elif "log" in message:
                log.log(message["log"].get("level", logging.WARNING), "%s", message["log"].get("message"))
        if not self.stopping:
            self.lost = f"the gateway process (pid {self.proc.pid if self.proc else '?'}) died: {await self._exit()}"
            log.error("%s; %d trial(s) it served get an infrastructure error", self.lost, len(self.trials))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(GatewayLostError(self.lost or "the gateway is stopping"))
        self._pending.clear()

    async def _exit(self) -> str:
        assert self.proc is not None
        try:
            code = await asyncio.to_thread(self.proc.wait, 5)
        except subprocess.TimeoutExpired:
            return "it closed its control channel"
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"

    async def request(self, op: str, **args: Any) -> Any:
        if self.lost is not None:
            raise GatewayLostError(self.lost)
        if self._channel is None or self._reader is None or self._reader.done():
            raise GatewayLostError("the gateway has stopped")
        ident = next(self._ids)
        future = self._pending[ident] = asyncio.get_running_loop().create_future()
        self._channel.send({"id": ident, "op": op, "args": args})
        return await future

    async def stop(self) -> None:
        """Stop it (closing its trials and files), by its PID with SIGKILL if it outlives the grace period."""
        self.stopping = True
        if self._channel is not None:
            self._channel.send({"op": "stop"})
        if self.proc is not None:
            try:
                await asyncio.to_thread(self.proc.wait, STOP_GRACE_SEC)
            except subprocess.TimeoutExpired:
                log.warning("the gateway process (pid %d) did not stop in %g s: killed", self.proc.pid, STOP_GRACE_SEC)
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        if self._channel is not None:
            await self._channel.close()
        if self._reader is not None:
            await self._reader


def _raised(error: dict[str, Any]) -> Exception:
    kinds: dict[str, type[Exception]] = {"InfrastructureError": InfrastructureError, "ValueError": ValueError}
    kind = kinds.get(error.get("type", ""), InfrastructureError)
    message = error.get("message", "")
    return kind(message if kind is not InfrastructureError or error.get("type") == "InfrastructureError"
                else f"gateway: {error.get('type')}: {message}")  # fmt: skip


class Gateway:
    """The per-job model endpoint. Create it with `Gateway.serve(...)`; open a trial per agent run."""

    def __init__(self, config: LLMApiConfig, job_dir: Path, routes: RouteDirs, init: dict[str, Any]) -> None:
        self.config = config
        self.job_dir = job_dir
        """`artifacts/litellm/<job>/`: router config and requests no trial owns."""
        self.url = ""
        """The first gateway process's TCP root (each trial gets its own process's URL in `TrialAccess`)."""
        self.admin_key = init["admin_key"]
        """Shows the detailed `/health` (upstream names, counts); kept in memory, never given to a trial."""
        self.routes_dir = routes.root
        """This gateway's directory of per-trial route directories (removed when it stops)."""
        self._routes = routes
        self._init = init
        self._processes = [_Process(i) for i in range(config.processes)]
        self._restarts = 0
        self._restarting = asyncio.Lock()
        self._owner: dict[str, _Process] = {}
        self._closing: dict[str, asyncio.Future[ModelUsage]] = {}
        self._closed: dict[str, ModelUsage | GatewayLostError] = {}
        self._stopping = False

    @property
    def pids(self) -> list[int]:
        """The gateway processes' PIDs (those running now)."""
        return [p.proc.pid for p in self._processes if p.proc is not None and p.proc.poll() is None]

    @classmethod
    @asynccontextmanager
    async def serve(cls, config: LLMApiConfig, *, job_name: str, artifacts_dir: Path, keys: list[str | None] | None = None,
                    nodes: int = 1) -> AsyncIterator[Gateway]:
        """Start the gateway processes; on exit (cancellation included) close every trial and stop them.

        On a cluster each node runs a gateway of its own (`environments/ray_routes.py`): `keys` are the
        upstream keys the driver read from its environment (else they are read here, by `api_key_env`), and
        `nodes` how many node gateways share each deployment's `max_in_flight`."""
        keys = api_keys(config) if keys is None else keys
        prices = [await asyncio.to_thread(price_of, d) for d in config.deployments]  # LiteLLM only for remote APIs
        job_dir = Path(artifacts_dir) / "litellm" / job_name
        await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(sweep_stale)  # route directories of gateways killed with SIGKILL
        routes = await asyncio.to_thread(RouteDirs.create)
        # Texts that must not reach agents or files: upstream keys, and upstream addresses (no map for a bypass).
        secrets = [k for k in keys if k] + [a for d in config.deployments for a in _addresses(d.api_base)]
        secrets.sort(key=len, reverse=True)  # a longer text first, before a part of it is replaced
        init = {
            "config": config.model_dump(mode="json"),
            "keys": keys,
            "prices": [p and [p.input, p.output, p.cache_read] for p in prices],
            "secrets": secrets,
            "admin_key": "eka-" + token_urlsafe(24),
            "routes": str(routes.root),
            "rejected": str(job_dir / "rejected.jsonl"),
            "shares": config.processes * nodes,
            "host": config.host,
        }
        gateway = cls(config, job_dir, routes, init)
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    for process in gateway._processes:
                        group.create_task(gateway._start(process))
            except ExceptionGroup as group_error:
                raise group_error.exceptions[0] from None
            gateway.url = gateway._processes[0].url
            text = yaml.safe_dump(router_config(config, job_name, gateway.url), sort_keys=False)
            await asyncio.to_thread((job_dir / "router.yaml").write_text, text)
            yield gateway
        finally:
            await uncancellable(gateway._shutdown())

    async def _start(self, process: _Process) -> None:
        port = self.config.port and self.config.port + process.index
        await process.start(self._init | {"port": port})

    async def _shutdown(self) -> None:
        self._stopping = True
        live = [p for p in self._processes if p.live]
        await asyncio.gather(*(p.request("stopping") for p in live), return_exceptions=True)
        closing = [self.close_trial(key) for key in list(self._owner)] + list(self._closing.values())
        await asyncio.gather(*closing, return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in self._processes))
        await asyncio.to_thread(self._routes.remove)

    async def _process_for_new_trial(self) -> _Process:
        """The live gateway process with the fewest trials, after replacing dead ones (up to `MAX_RESTARTS`)."""
        if any(p.lost for p in self._processes):
            async with self._restarting:
                for i, process in enumerate(self._processes):
                    if process.lost and self._restarts < MAX_RESTARTS and not self._stopping:
                        self._restarts += 1
                        fresh = self._processes[i] = _Process(i)
                        log.warning("starting a gateway process to replace pid %s", process.proc and process.proc.pid)
                        try:
                            await self._start(fresh)
                        except BaseException:
                            await uncancellable(fresh.stop())
                            fresh.lost = "it could not be restarted"
                            raise
        live = [p for p in self._processes if p.live]
        if not live:
            raise InfrastructureError("no gateway process is running (each one died, and restarts ran out)")
        return min(live, key=lambda p: (len(p.trials), p.index))

    async def open_trial(self, trial_id: str, trajectory_path: Path, *, api_key: str | None = None,
                         home: int | None = None) -> TrialAccess:
        """Issue a fresh key and Unix-socket route whose calls are appended to `trajectory_path`.

        The trajectory's directory must not be a symlink and the file must not exist (`logfile.open_log`);
        `api_key` is only for ad-hoc use (`evalkit gateway --key`); `home` is the index of the deployment the
        trial sticks to (decided by the caller, as a cluster's driver does), else the least-loaded one's.
        """
        key = api_key or new_key()
        if key in self._owner or key in self._closed or key in self._closing or key == self.admin_key:
            raise ValueError("that key was already issued by this gateway")
        if self._stopping:
            raise InfrastructureError("the gateway is stopping: no new trials")
        process = await self._process_for_new_trial()
        self._owner[key] = process
        opening = asyncio.ensure_future(
            process.request("open", trial_id=trial_id, trajectory=str(trajectory_path), api_key=key, home=home)
        )
        try:
            opened = await asyncio.shield(opening)
        except asyncio.CancelledError:
            await uncancellable(self._abandon(key, opening))
            raise
        except BaseException:
            del self._owner[key]
            raise
        process.trials.add(key)
        return TrialAccess(
            trial_id=trial_id,
            api_key=key,
            base_url=process.url + "/v1",
            anthropic_base_url=process.url,
            model=self.config.model,
            socket_path=Path(opened["socket_path"]),
        )

    async def _abandon(self, key: str, opening: asyncio.Future[Any]) -> None:
        """A trial whose opener was cancelled: close it again once it is open."""
        process = self._owner.pop(key)
        await asyncio.wait([opening])
        if not opening.cancelled() and opening.exception() is None:
            try:
                await process.request("close", api_key=key)
            except (GatewayLostError, InfrastructureError):
                pass

    async def close_trial(self, api_key: str) -> ModelUsage:
        """Revoke the key and the route (401 / connection refused from now on), cancel the trial's calls in
        flight, finish and close its trajectory, and sum its usage. Safe to call twice, or concurrently.

        Raises `GatewayLostError` (every time) when the process that served the trial died meanwhile."""
        if api_key not in self._closed:
            if (closing := self._closing.get(api_key)) is None:
                closing = self._closing[api_key] = asyncio.ensure_future(self._close(api_key))
            await asyncio.shield(closing)
        outcome = self._closed[api_key]
        if isinstance(outcome, GatewayLostError):
            raise GatewayLostError(str(outcome))
        return outcome.model_copy()

    async def _close(self, api_key: str) -> None:
        process = self._owner.pop(api_key)
        try:
            usage = await process.request("close", api_key=api_key)
            self._closed[api_key] = ModelUsage(**usage)
        except GatewayLostError as exc:
            self._closed[api_key] = GatewayLostError(
                f"{exc}, while this trial ran: its calls since are missing from its trajectory and usage"
            )
        except BaseException:
            self._closed[api_key] = GatewayLostError("the gateway could not close this trial")
            raise
        finally:
            process.trials.discard(api_key)
            del self._closing[api_key]

    async def release_route(self, access: TrialAccess) -> None:
        """Remove a closed trial's route directory; call it once no container mounts it any more."""
        await asyncio.to_thread(_release, self.routes_dir, access.socket_path)


def _release(routes_dir: Path, socket_path: Path) -> None:
    if socket_path.parent.parent == routes_dir:  # only a route directory of this gateway
        release(socket_path)


def _addresses(api_base: str | None) -> list[str]:
    """How error texts may quote a configured upstream: `user:password@host:port`, `host:port`, the host, the
    password."""
    if not api_base:
        return []
    raw, clean = urllib.parse.urlsplit(api_base), urllib.parse.urlsplit(without_credentials(api_base))
    return [text for text in (raw.netloc, clean.netloc, clean.hostname, raw.password) if text]
