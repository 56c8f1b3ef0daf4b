"""Which upstream deployment serves a call: sticky per trial, spread evenly, failing ones cooled down, retried.

Both paths (pass-through and LiteLLM-translated) go through `DeploymentPool.call`, so health, pins, cooldowns
and in-flight caps live in this one place. Pins keep a trial on one vLLM replica for prefix-cache reuse;
LiteLLM's own session affinity places sessions at random, which is why the gateway does this itself.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from evalkit.gateway.bodies import DOCUMENTED, passed_fields
from evalkit.gateway.config import DeploymentConfig, LLMApiConfig
from evalkit.gateway.protocols import Usage


@dataclass(slots=True, frozen=True)
class Price:
    """USD per token."""

    input: float
    output: float
    cache_read: float

    def cost(self, usage: Usage) -> float:
        uncached = usage.input_tokens - usage.cache_read_tokens
        return uncached * self.input + usage.cache_read_tokens * self.cache_read + usage.output_tokens * self.output


class Deployment:
    """One upstream and what the gateway knows about it right now."""

    def __init__(self, index: int, config: DeploymentConfig, api_key: str | None, price: Price | None) -> None:
        self.index, self.config, self.api_key, self.price = index, config, api_key, price
        self.label = config.label
        self.native = config.native
        self.api_root = config.api_root
        self.fields = {
            protocol: passed_fields(protocol, config.provider, translated=protocol not in config.native)
            for protocol in DOCUMENTED
        }
        """The request fields each protocol's calls may pass on to this deployment."""
        self.in_flight = 0
        self.pinned = 0
        """Trials currently pinned here; new trials go to the deployment with the fewest."""
        self.fails = 0
        """Consecutive failed attempts."""
        self.cooldown_until = 0.0
        self.slots = asyncio.Semaphore(config.max_in_flight) if config.max_in_flight else None

    def healthy(self) -> bool:
        return self.cooldown_until <= time.monotonic()

    def status(self, detailed: bool) -> dict[str, Any]:
        """For `/health`: names (with upstream addresses) and counts only in the detailed view."""
        health = {"healthy": self.healthy(), "cooldown_sec": round(max(0.0, self.cooldown_until - time.monotonic()), 3)}
        if detailed:
            health.update(name=self.label, in_flight=self.in_flight, pinned_trials=self.pinned)
        return health


@dataclass(slots=True)
class Reply:
    """An upstream answer, already in the client's protocol, before its first byte goes to the agent."""

    status: int
    body: bytes
    """The whole body, or the first bytes of a stream."""
    content_type: str = "application/json"
    read: Callable[[], Awaitable[bytes]] | None = None
    """For a streamed body, returns its next bytes (b"" at the end); a plain read per chunk, no iterator."""
    close: Callable[[], Awaitable[None]] | None = None
    """Releases the upstream side (a stream the agent stopped reading)."""
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Upstream response headers passed on to the agent (`protocols.forwarded_headers`)."""
    withhold_usage: bool = False
    """The gateway asked for a usage event the agent did not: do not forward it."""
    route: str = "passthrough"
    deployment: Deployment | None = None
    deadline: float = 0.0
    """Loop time by which the whole answer must have been relayed."""


class UpstreamUnavailable(Exception):
    """Every attempt failed without an HTTP answer (connection refused or reset, timeout)."""

    def __init__(self, message: str, timed_out: bool, retry_after: float) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.retry_after = retry_after
        """Seconds until a deployment is expected back: the agent's `Retry-After`."""


Attempt = Callable[[Deployment], Awaitable[Reply]]


def is_retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """How long the upstream asks us to wait: `retry-after-ms` (OpenAI, Anthropic) or `Retry-After`."""
    lower = {k.lower(): v for k, v in headers.items()}
    if (ms := lower.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_retry_after(lower.get("retry-after"))


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds, from either of its two forms (seconds, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class DeploymentPool:
    def __init__(self, deployments: list[Deployment], config: LLMApiConfig) -> None:
        self.deployments = deployments
        self._config = config
        self._pins: dict[str, Deployment] = {}

    def pick(self, trial_key: str) -> Deployment:
        """The trial's pinned deployment if it is healthy; else the healthy one with the fewest trials."""
        now = time.monotonic()
        pinned = self._pins.get(trial_key)
        if pinned is not None and pinned.cooldown_until <= now:
            return pinned
        healthy = [d for d in self.deployments if d.cooldown_until <= now]
        # Nothing healthy: the one that recovers first, rather than failing the call outright.
        candidates = healthy or [min(self.deployments, key=lambda d: d.cooldown_until)]
        chosen = min(candidates, key=lambda d: (d.pinned, d.index))
        if chosen is not pinned:
            if pinned is not None:
                pinned.pinned -= 1
            chosen.pinned += 1
            self._pins[trial_key] = chosen
        return chosen

    def unpin(self, trial_key: str) -> None:
        if (pinned := self._pins.pop(trial_key, None)) is not None:
            pinned.pinned -= 1

    def release(self, deployment: Deployment) -> None:
        """End of a call's hold on a deployment (after the last byte was relayed)."""
        deployment.in_flight -= 1
        if deployment.slots is not None:
            deployment.slots.release()

    async def call(self, trial_key: str, attempt: Attempt, attempts: list[dict[str, Any]]) -> Reply:
        """Run `attempt` on the trial's deployment, retrying elsewhere or later; the caller must `release`."""
        cfg = self._config
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            deployment = self.pick(trial_key)
            if deployment.slots is not None:
                await deployment.slots.acquire()
            deployment.in_flight += 1
            started = time.time()
            deadline = loop.time() + cfg.timeout_sec
            reply: Reply | None = None
            error: BaseException | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    reply = await attempt(deployment)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = exc
            except BaseException as exc:  # cancelled (agent gone, trial closed) or a bug: keep the record
                why = "cancelled" if isinstance(exc, asyncio.CancelledError) else _describe(exc)
                attempts.append(_attempt(deployment, None, why, started))
                self.release(deployment)
                raise
            attempts.append(_attempt(deployment, reply.status if reply else None, error and _describe(error), started))
            if reply is not None:
                reply.deployment, reply.deadline = deployment, deadline
                if not is_retryable(reply.status):
                    deployment.fails = 0
                    return reply
            self._failed(deployment, reply.retry_after if reply else None)
            if n == cfg.max_retries:
                if reply is not None:
                    return reply
                self.release(deployment)
                raise UpstreamUnavailable(_describe(error), isinstance(error, TimeoutError), self.retry_hint())
            if reply is not None and reply.close is not None:
                await reply.close()
            self.release(deployment)
            if self.pick(trial_key) is deployment:  # no other deployment to move to: wait before trying again
                backoff = cfg.retry_backoff_sec * 2**n * random.uniform(0.5, 1.0)
                retry_after = reply.retry_after if reply else None
                await asyncio.sleep(min(cfg.max_retry_wait_sec, retry_after if retry_after is not None else backoff))
            n += 1

    def retry_hint(self) -> float:
        """Seconds until the first deployment leaves its cooldown (at least 1): for the gateway's own 502/504."""
        now = time.monotonic()
        wait = min(d.cooldown_until for d in self.deployments) - now
        return min(self._config.max_retry_wait_sec, max(1.0, wait))

    def _failed(self, deployment: Deployment, retry_after: float | None) -> None:
        deployment.fails += 1
        if deployment.fails > self._config.allowed_fails:
            deployment.fails = 0
            pause = max(self._config.cooldown_sec, retry_after or 0.0)
            deployment.cooldown_until = time.monotonic() + pause


def _attempt(deployment: Deployment, status: int | None, error: str | None, started: float) -> dict[str, Any]:
    return {"deployment": deployment.label, "status": status, "error": error, "start": started, "end": time.time()}


def _describe(error: BaseException | None) -> str:
    if isinstance(error, TimeoutError):
        return "upstream timed out"
    return f"{type(error).__name__}: {error}".rstrip(": ")
