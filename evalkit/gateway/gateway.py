"""`Gateway`: one per job, on 127.0.0.1 and one Unix socket per open trial, from `serve()` to the end of its
`async with` block.

Everything a gateway owns (servers, connection pool, deployment state, trials, files, its writer thread)
hangs off the instance, so several gateways can share a process and an event loop, including a host
application's. Nothing but the trial's key and route ties a request to a trial, so the front could later
run in processes of its own, sharded by trial.
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from evalkit.cleanup import uncancellable
from evalkit.errors import ConfigError, InfrastructureError
from evalkit.gateway.config import LLMApiConfig, without_credentials
from evalkit.gateway.routes import RouteDirs, TrialRoute
from evalkit.gateway.routing import Deployment, DeploymentPool
from evalkit.gateway.server import Front
from evalkit.gateway.trajectory import LineWriter, open_log
from evalkit.gateway.translate import load_litellm, price_of
from evalkit.gateway.trials import ModelUsage, Trial, TrialAccess, new_key

LISTEN_BACKLOG = 1024
"""Hundreds of agents may connect at once; a short accept queue turns that into 1 s SYN retransmits."""

SHUTDOWN_GRACE_SEC = 1.0
"""How long the server waits for requests that no trial owns (health checks, 401s) when stopping."""


def _api_keys(config: LLMApiConfig) -> list[str | None]:
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


class Gateway:
    """The per-job model endpoint. Create it with `Gateway.serve(...)`; open a trial per agent run."""

    def __init__(
        self,
        config: LLMApiConfig,
        job_dir: Path,
        pool: DeploymentPool,
        session: aiohttp.ClientSession,
        secrets: list[str],
        routes: RouteDirs,
    ) -> None:
        self.config = config
        self.job_dir = job_dir
        """`artifacts/litellm/<job>/`: router config and requests no trial owns."""
        self.url = ""
        self.admin_key = "eka-" + token_urlsafe(24)
        """Shows the detailed `/health` (upstream names, counts); kept in memory, never given to a trial."""
        self.routes_dir = routes.root
        """This gateway's directory of per-trial route directories (removed when it stops)."""
        self._pool, self._session, self._routes = pool, session, routes
        self._trials: dict[str, Trial] = {}
        self._closing: dict[str, asyncio.Future[ModelUsage]] = {}
        self._closed: dict[str, ModelUsage] = {}
        self._writer = LineWriter()
        self._front = Front(config, pool, session, self._trials, self._closed, self._writer, secrets, self.admin_key)

    @classmethod
    @asynccontextmanager
    async def serve(cls, config: LLMApiConfig, *, job_name: str, artifacts_dir: Path) -> AsyncIterator[Gateway]:
        """Start the server; on exit (cancellation included) stop it, close every trial and remove its routes."""
        keys = _api_keys(config)
        await asyncio.to_thread(load_litellm)  # seconds of imports, kept off the event loop
        prices = [await asyncio.to_thread(price_of, d) for d in config.deployments]
        deployments = [Deployment(i, d, keys[i], prices[i]) for i, d in enumerate(config.deployments)]
        job_dir = Path(artifacts_dir) / "litellm" / job_name
        await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
        routes = await asyncio.to_thread(RouteDirs.create)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None),  # deadlines are enforced per attempt by the pool
            auto_decompress=False,
        )
        # Texts that must not reach agents or files: upstream keys, and upstream addresses (no map for a bypass).
        secrets = [k for k in keys if k] + [a for d in config.deployments for a in _addresses(d.api_base)]
        secrets.sort(key=len, reverse=True)  # a longer text first, before a part of it is replaced
        gateway = cls(config, job_dir, DeploymentPool(deployments, config), session, secrets, routes)
        runner = web.ServerRunner(
            web.Server(gateway._front.handle, handler_cancellation=True, access_log=None),
            shutdown_timeout=SHUTDOWN_GRACE_SEC,
        )
        try:
            gateway._front.rejected = await asyncio.to_thread(
                open_log, job_dir / "rejected.jsonl", exclusive=False
            )
            await runner.setup()
            site = web.TCPSite(runner, config.host, config.port, backlog=LISTEN_BACKLOG)
            try:
                await site.start()
            except OSError as exc:
                raise InfrastructureError(
                    f"the gateway cannot listen on {config.host}:{config.port}: {exc.strerror}"
                ) from None
            # A wildcard listen address is not one a client can dial: hand out loopback instead.
            reachable = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(config.host, config.host)
            host = f"[{reachable}]" if ":" in reachable else reachable  # an IPv6 literal
            gateway.url = f"http://{host}:{runner.addresses[0][1]}"
            text = yaml.safe_dump(router_config(config, job_name, gateway.url), sort_keys=False)
            await asyncio.to_thread((job_dir / "router.yaml").write_text, text)
            yield gateway
        finally:
            await uncancellable(gateway._shutdown(runner))

    async def _shutdown(self, runner: web.BaseRunner) -> None:
        self._front.stopping = True
        closing = [self.close_trial(key) for key in list(self._trials)] + list(self._closing.values())
        await asyncio.gather(*closing, return_exceptions=True)
        await runner.cleanup()
        await self._session.close()
        if self._front.rejected is not None:
            await self._writer.close(self._front.rejected)
        await self._writer.stop()
        await asyncio.to_thread(self._routes.remove)

    async def open_trial(self, trial_id: str, trajectory_path: Path, *, api_key: str | None = None) -> TrialAccess:
        """Issue a fresh key and Unix-socket route whose calls are appended to `trajectory_path`.

        The trajectory's directory must not be a symlink and the file must not exist (`trajectory.open_log`);
        `api_key` is only for ad-hoc use (`evalkit gateway --key`).
        """
        key = api_key or new_key()
        if key in self._trials or key in self._closed or key in self._closing or key == self.admin_key:
            raise ValueError("that key was already issued by this gateway")
        if self._front.stopping:
            raise InfrastructureError("the gateway is stopping: no new trials")
        log = await asyncio.to_thread(open_log, trajectory_path)
        trial = Trial(trial_id, key, log, self._writer)
        try:
            trial.route = await TrialRoute.open(self._routes, partial(self._front.handle, bound=trial))
        except BaseException:
            await uncancellable(asyncio.to_thread(log.discard))
            raise
        if self._front.stopping:  # the gateway began to stop while this trial was opening
            await uncancellable(trial.route.close())
            await uncancellable(asyncio.to_thread(log.discard))
            raise InfrastructureError("the gateway is stopping: no new trials")
        self._trials[key] = trial
        return TrialAccess(
            trial_id=trial_id,
            api_key=key,
            base_url=self.url + "/v1",
            anthropic_base_url=self.url,
            model=self.config.model,
            socket_path=trial.route.socket_path,
        )

    async def close_trial(self, api_key: str) -> ModelUsage:
        """Revoke the key and the route (401 / connection refused from now on), cancel the trial's calls in
        flight, finish and close its trajectory, and sum its usage. Safe to call twice, or concurrently."""
        if api_key in self._closed:
            return self._closed[api_key].model_copy()
        if (closing := self._closing.get(api_key)) is None:
            closing = self._closing[api_key] = asyncio.ensure_future(self._close(api_key))
        return (await asyncio.shield(closing)).model_copy()

    async def _close(self, api_key: str) -> ModelUsage:
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
        self._closed[api_key] = usage = trial.usage()
        del self._closing[api_key]
        return usage


def _addresses(api_base: str | None) -> list[str]:
    """How error texts may quote a configured upstream: `user:password@host:port`, `host:port`, the host, the
    password."""
    if not api_base:
        return []
    raw, clean = urllib.parse.urlsplit(api_base), urllib.parse.urlsplit(without_credentials(api_base))
    return [text for text in (raw.netloc, clean.netloc, clean.hostname, raw.password) if text]
