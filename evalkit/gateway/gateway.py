"""`Gateway`: one per job, on 127.0.0.1, from `serve()` to the end of its `async with` block.

Everything a gateway owns (server, connection pool, deployment state, trials, files) hangs off the instance,
so several gateways can share a process and an event loop, including a host application's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from evalkit.errors import ConfigError, InfrastructureError
from evalkit.gateway.config import LLMApiConfig, without_credentials
from evalkit.gateway.routing import Deployment, DeploymentPool
from evalkit.gateway.server import Front
from evalkit.gateway.trajectory import JsonlWriter
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
    ) -> None:
        self.config = config
        self.job_dir = job_dir
        """`artifacts/litellm/<job>/`: router config and requests no trial owns."""
        self.url = ""
        self._pool, self._session = pool, session
        self._trials: dict[str, Trial] = {}
        self._closed: dict[str, ModelUsage] = {}
        self._rejected = JsonlWriter(job_dir / "rejected.jsonl")
        self._front = Front(config, pool, session, self._trials, self._closed, self._rejected, secrets)

    @classmethod
    @asynccontextmanager
    async def serve(cls, config: LLMApiConfig, *, job_name: str, artifacts_dir: Path) -> AsyncIterator[Gateway]:
        """Start the server; on exit (cancellation included) stop it and close every trial's trajectory."""
        keys = _api_keys(config)
        await asyncio.to_thread(load_litellm)  # seconds of imports, kept off the event loop
        prices = [await asyncio.to_thread(price_of, d) for d in config.deployments]
        deployments = [Deployment(i, d, keys[i], prices[i]) for i, d in enumerate(config.deployments)]
        job_dir = Path(artifacts_dir) / "litellm" / job_name
        await asyncio.to_thread(job_dir.mkdir, parents=True, exist_ok=True)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None),  # deadlines are enforced per attempt by the pool
            auto_decompress=False,
        )
        gateway = cls(config, job_dir, DeploymentPool(deployments, config), session, [k for k in keys if k])
        runner = web.ServerRunner(
            web.Server(gateway._front.handle, handler_cancellation=True, access_log=None),
            shutdown_timeout=SHUTDOWN_GRACE_SEC,
        )
        try:
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
            gateway._front.stopping = True
            await asyncio.gather(*(gateway.close_trial(key) for key in list(gateway._trials)))
            await runner.cleanup()
            await session.close()
            gateway._rejected.close()

    def open_trial(self, trial_id: str, trajectory_path: Path, *, api_key: str | None = None) -> TrialAccess:
        """Issue a fresh key whose calls are appended to `trajectory_path` (`api_key` only for ad-hoc use)."""
        key = api_key or new_key()
        if key in self._trials or key in self._closed:
            raise ValueError("that key was already issued by this gateway")
        trajectory_path.parent.mkdir(parents=True, exist_ok=True)
        self._trials[key] = Trial(trial_id, key, trajectory_path)
        return TrialAccess(
            trial_id=trial_id,
            api_key=key,
            base_url=self.url + "/v1",
            anthropic_base_url=self.url,
            model=self.config.model,
        )

    async def close_trial(self, api_key: str) -> ModelUsage:
        """Revoke the key (401 from now on), cancel the trial's calls in flight, close its file, sum its usage."""
        if api_key in self._closed:
            return self._closed[api_key].model_copy()
        trial = self._trials.pop(api_key)
        trial.closed = True
        if trial.calls:
            calls = list(trial.calls)
            for task in calls:
                task.cancel()
            await asyncio.wait(calls)
        self._pool.unpin(api_key)
        trial.close_log()
        self._closed[api_key] = usage = trial.usage()
        return usage.model_copy()
