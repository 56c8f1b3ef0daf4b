"""Which upstream deployment serves a call: sticky per trial, spread evenly, failing ones cooled down, retried.

Every path (pass-through, in-house translation, LiteLLM) goes through `DeploymentPool.call`, so health, homes,
cooldowns and in-flight caps live in this one place. Each trial has a home replica (for prefix-cache reuse),
chosen where the fewest trials live; while its home cools down it is served by one other replica, and it goes
home when the home recovers, so a replica's outage never leaves the trials piled onto another. Only failures of
the replica itself (connection refused or reset, connect timeout, 503) cool it down: a request that fails on its
own content (500, 408) is retried, but cools nothing. LiteLLM's own session affinity places sessions at random,
which is why the gateway does this itself.
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
import orjson

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
    """One upstream and what this gateway process knows about it right now."""

    def __init__(
        self, index: int, config: DeploymentConfig, api_key: str | None, price: Price | None, shares: int = 1
    ) -> None:
        self.index, self.config, self.api_key, self.price = index, config, api_key, price
        self.label = config.label
        self.native = config.native
        self.api_root = config.api_root
        self.upstream_model_json = orjson.dumps(config.upstream_model)
        """The `model` value pass-through bodies carry to this deployment."""
        self.fields = {
            protocol: passed_fields(protocol, config.provider, translated=protocol not in config.native)
            for protocol in DOCUMENTED
        }
        """The request fields each protocol's calls may pass on to this deployment."""
        self.in_flight = 0
        self.homes = 0
        """Trials whose home this is: new trials get the deployment with the fewest."""
        self.serving = 0
        """Trials whose calls go here now (their home, or here while their home cools down)."""
        self.fails = 0
        """Consecutive replica-level failures."""
        self.cooldown_until = 0.0
        self.slots = asyncio.Semaphore(slot_share(config.max_in_flight, shares)) if config.max_in_flight else None
        """This process's share of `max_in_flight` (see `slot_share`)."""

    def healthy(self, now: float | None = None) -> bool:
        return self.cooldown_until <= (time.monotonic() if now is None else now)

    def has_slot(self) -> bool:
        return self.slots is None or not self.slots.locked()

    def status(self, detailed: bool) -> dict[str, Any]:
        """For `/health`: names (with upstream addresses) and counts only in the detailed view."""
        health = {"healthy": self.healthy(), "cooldown_sec": round(max(0.0, self.cooldown_until - time.monotonic()), 3)}
        if detailed:
            health.update(name=self.label, in_flight=self.in_flight, pinned_trials=self.serving, home_trials=self.homes)
        return health


def slot_share(max_in_flight: int, shares: int) -> int:
    """Each gateway process's part of a deployment's cap, `shares` being how many processes hold a part (the
    job's gateway processes, on every node of a cluster): the cap split evenly, rounded up, so the deployment
    may see up to `shares - 1` calls more than `max_in_flight` at once (the stated tolerance), and never fewer
    than one slot per process. Trials are spread evenly over the processes, so their shares fill alike."""
    return max(1, -(-max_in_flight // shares))


@dataclass(slots=True)
class Placement:
    home: Deployment
    """Where the trial goes whenever that deployment is healthy (its prefix cache is there)."""
    current: Deployment | None = None
    """Where its calls go now."""


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
    abort: Callable[[], None] | None = None
    """Drops the upstream connection at once (a stream silent for the idle limit); None: `read` applies the idle
    limit itself."""


class UpstreamUnavailable(Exception):
    """Every attempt failed without an HTTP answer (connection refused or reset, timeout)."""

    def __init__(self, message: str, timed_out: bool, retry_after: float) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.retry_after = retry_after
        """Seconds until a deployment is expected back: the agent's `Retry-After`."""


class NoSlot(Exception):
    """No deployment had an in-flight slot within `slot_wait_sec`."""


Attempt = Callable[[Deployment], Awaitable[Reply]]


def is_retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def is_replica_failure(status: int | None, error: BaseException | None) -> bool:
    """A failure that says the deployment itself is in trouble: it refused or dropped the connection, could not
    be reached in time, or said it is unavailable (503). One request's 500, 408 or 429, or a slow answer to
    one request, says nothing about the others and never counts."""
    if status is not None:
        return status == 503
    return isinstance(
        error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | aiohttp.ServerDisconnectedError
    ) or (isinstance(error, aiohttp.ClientOSError | ConnectionError) and not isinstance(error, TimeoutError))


def may_be_stale_connection(error: BaseException | None) -> bool:
    """The server closed a pooled connection as the request went out (its keep-alive ran out): resent once on a
    fresh connection, counted against nobody."""
    return isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError) and not isinstance(
        error, aiohttp.ClientConnectorError
    )


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
    """Placement, health and retries for the deployments, in one gateway process (each process has its own)."""

    def __init__(self, deployments: list[Deployment], config: LLMApiConfig) -> None:
        self.deployments = deployments
        self._config = config
        self._placements: dict[str, Placement] = {}

    def pick(self, trial_key: str) -> Deployment:
        """Where the trial's next call goes: its home when healthy; else, while the home cools down, one healthy
        deployment it sticks to (the one serving the fewest trials); with nothing healthy, the one that
        recovers first. A trial goes back home as soon as its home is healthy again."""
        now = time.monotonic()
        placement = self._placements.get(trial_key)
        if placement is None:
            healthy = [d for d in self.deployments if d.healthy(now)]
            home = min(healthy or self.deployments, key=lambda d: (d.homes, d.index))
            home.homes += 1
            placement = self._placements[trial_key] = Placement(home)
        current = placement.current
        if placement.home.healthy(now):
            chosen = placement.home
        elif current is not None and current.healthy(now):
            chosen = current
        elif healthy := [d for d in self.deployments if d.healthy(now)]:
            chosen = min(healthy, key=lambda d: (d.serving, d.index))
        else:
            chosen = min(self.deployments, key=lambda d: d.cooldown_until)
        if chosen is not current:
            if current is not None:
                current.serving -= 1
            chosen.serving += 1
            placement.current = chosen
        return chosen

    def pin(self, trial_key: str, home: int) -> None:
        """Make deployment `home` the trial's home (chosen by whoever sees every trial: on a cluster, the driver)."""
        deployment = self.deployments[home]
        deployment.homes += 1
        self._placements[trial_key] = Placement(deployment)

    def unpin(self, trial_key: str) -> None:
        if (placement := self._placements.pop(trial_key, None)) is not None:
            placement.home.homes -= 1
            if placement.current is not None:
                placement.current.serving -= 1

    def release(self, deployment: Deployment) -> None:
        """End of a call's hold on a deployment (after the last byte was relayed)."""
        deployment.in_flight -= 1
        if deployment.slots is not None:
            deployment.slots.release()

    async def _acquire(self, trial_key: str) -> Deployment:
        """A slot on the trial's deployment; after `spill_after_sec` on any healthy one with a slot free (the
        least busy); `NoSlot` after `slot_wait_sec`."""
        target = self.pick(trial_key)
        if target.slots is None:
            return target
        if not target.slots.locked():
            await target.slots.acquire()  # free: returns at once
            return target
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.slot_wait_sec
        wait = min(self._config.spill_after_sec, self._config.slot_wait_sec)
        while True:
            try:
                async with asyncio.timeout(wait):
                    await target.slots.acquire()
                return target
            except TimeoutError:
                pass
            now = time.monotonic()
            free = [d for d in self.deployments if d is not target and d.healthy(now) and d.has_slot()]
            if free:
                spill = min(free, key=lambda d: (d.in_flight, d.index))
                if spill.slots is not None:
                    await spill.slots.acquire()
                return spill
            if (left := deadline - loop.time()) <= 0:
                raise NoSlot(f"no deployment had a free slot within {self._config.slot_wait_sec:g} s")
            wait = min(0.05, left)

    async def call(self, trial_key: str, attempt: Attempt, attempts: list[dict[str, Any]]) -> Reply:
        """Run `attempt` on the trial's deployment, retrying elsewhere or later; the caller must `release`."""
        cfg = self._config
        n = 0
        resent = False
        while True:
            deployment = await self._acquire(trial_key)
            deployment.in_flight += 1
            started = time.time()
            reply: Reply | None = None
            error: BaseException | None = None
            try:
                async with asyncio.timeout(cfg.timeout_sec):
                    reply = await attempt(deployment)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                error = exc
            except BaseException as exc:  # cancelled (agent gone, trial closed) or a bug: keep the record
                why = "cancelled" if isinstance(exc, asyncio.CancelledError) else _describe(exc)
                attempts.append(_attempt(deployment, None, why, started))
                self.release(deployment)
                raise
            status = reply.status if reply is not None else None
            attempts.append(_attempt(deployment, status, error and _describe(error), started))
            if reply is not None:
                reply.deployment = deployment
                if not is_retryable(reply.status):
                    deployment.fails = 0
                    deployment.cooldown_until = 0.0  # it answered: whatever cooled it is over
                    return reply
            if not resent and may_be_stale_connection(error):
                resent = True  # once per call, at once, on a fresh connection, counted against nobody
                self.release(deployment)
                continue
            if reply is not None and reply.retry_after is not None and reply.status in (429, 503):
                self._rest(deployment, reply.retry_after)  # it said when it can take calls again
            elif is_replica_failure(status, error):
                self._failed(deployment)
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
        """Seconds until the first deployment leaves its cooldown (at least 1): for the gateway's own 502/503/504."""
        now = time.monotonic()
        wait = min(d.cooldown_until for d in self.deployments) - now
        return min(self._config.max_retry_wait_sec, max(1.0, wait))

    def _failed(self, deployment: Deployment) -> None:
        deployment.fails += 1
        if deployment.fails > self._config.allowed_fails:
            deployment.fails = 0
            self._rest(deployment, self._config.cooldown_sec)

    def _rest(self, deployment: Deployment, seconds: float) -> None:
        until = time.monotonic() + min(seconds, max(self._config.max_retry_wait_sec, self._config.cooldown_sec))
        deployment.cooldown_until = max(deployment.cooldown_until, until)


def _attempt(deployment: Deployment, status: int | None, error: str | None, started: float) -> dict[str, Any]:
    return {"deployment": deployment.label, "status": status, "error": error, "start": started, "end": time.time()}


def _describe(error: BaseException | None) -> str:
    if isinstance(error, TimeoutError):
        return "upstream timed out"
    return f"{type(error).__name__}: {error}".rstrip(": ")
