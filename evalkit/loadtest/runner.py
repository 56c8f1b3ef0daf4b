"""Running a load test: the sweep, one bounded step per load level, each step's measurements into the report.

A step sends until `max_requests` have gone out or `duration_sec` has passed, whichever comes first; requests
in flight then finish (each bounded by `request_timeout_sec`). Everything runs in one task group per step, so
a cancellation (Ctrl-C) ends every request, the gateway's processes are stopped by PID (`Gateway.serve`), and the
steps finished so far are still written.

Through a gateway, the public `Gateway.serve` runs it in processes of its own: the load generator and the gateway
do not share an event loop, and the gateway's CPU and memory are read from its PIDs (`Gateway.pids`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import resource
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from evalkit.analysis.reader import TRAJECTORY
from evalkit.cleanup import uncancellable
from evalkit.errors import ConfigError, InfrastructureError
from evalkit.gateway import Gateway
from evalkit.gateway.trajectory import read_trajectory
from evalkit.loadtest import prefix_cache
from evalkit.loadtest.client import Outcome, send
from evalkit.loadtest.config import LoadTestConfig
from evalkit.loadtest.procstat import tree_usage
from evalkit.loadtest.report import LoadTestReport, ProcessUsage, ReplayInfo, saturation, step_report
from evalkit.loadtest.workload import Call, ReplaySet, SyntheticRequests, TrialPlan, load_replay
from evalkit.results import utcnow, write_json_atomic

REPORT_NAME = "loadtest.json"
PLOT_NAME = "loadtest.png"
CONNECT_CHECK_SEC = 5.0

OnOutcome = Callable[[int, Outcome], None]
"""Called with (step index, outcome) as each request ends (the progress bar)."""


def root_of(base_url: str) -> str:
    """`http://h:p/v1` → `http://h:p`: recorded endpoints (`/v1/...`) are appended whole."""
    return base_url[:-3] if base_url.endswith("/v1") else base_url


class Budget:
    """The step's bounds: requests left to send, and the time after which none is sent."""

    def __init__(self, max_requests: int, duration_sec: float) -> None:
        self.total = self.left = max_requests
        self.deadline = time.monotonic() + duration_sec

    @property
    def open(self) -> bool:
        return self.left > 0 and time.monotonic() < self.deadline

    def take(self) -> bool:
        if not self.open:
            return False
        self.left -= 1
        return True

    def reserve(self, calls: int) -> int:
        """Room for a whole replayed trial (so `max_requests` never cuts one short), or 0. A trial longer than
        the whole budget gets all of it, when nothing else has been sent."""
        if not self.open or (calls > self.left and self.left < self.total):
            return 0
        granted = min(calls, self.left)
        self.left -= granted
        return granted


@dataclass
class Route:
    """Where one trial's (or synthetic request's) calls go."""

    root: str
    api_key: str | None
    replica: int | None
    trial_id: str


class Target:
    """Direct: each route to the least busy replica. Through a gateway: each route is a gateway trial."""

    def __init__(self, config: LoadTestConfig, api_key: str | None, gateway: Gateway | None) -> None:
        self.gateway = gateway
        self.api_key = api_key
        self.trajectories = gateway_dir(config) / "trials"
        self.roots = [] if gateway else [root_of(url) for url in config.endpoints]
        self._active = [0] * len(self.roots)
        self._assigned = [0] * len(self.roots)

    async def open(self, trial_id: str) -> Route:
        if self.gateway is not None:
            access = await self.gateway.open_trial(trial_id, self.trajectories / trial_id / TRAJECTORY)
            return Route(access.anthropic_base_url, access.api_key, None, trial_id)  # its gateway process's root
        replica = min(range(len(self.roots)), key=lambda i: (self._active[i], self._assigned[i]))
        self._active[replica] += 1
        self._assigned[replica] += 1
        return Route(self.roots[replica], self.api_key, replica, trial_id)

    async def close(self, route: Route) -> None:
        if self.gateway is not None and route.api_key is not None:
            await self.gateway.close_trial(route.api_key)
        elif route.replica is not None:
            self._active[route.replica] -= 1


class Step:
    """One load level: its requests, bounded by the budget, each outcome kept."""

    def __init__(self, config: LoadTestConfig, index: int, load: float, target: Target,
                 session: aiohttp.ClientSession, on_outcome: OnOutcome | None) -> None:
        self.config, self.index, self.load, self.target, self.session = config, index, load, target, session
        self.budget = Budget(config.max_requests, config.duration_sec)
        self.outcomes: list[Outcome] = []
        self.trial_ids: list[str] = []
        self._on_outcome = on_outcome
        self._ids = itertools.count()

    async def _send(self, call: Call, route: Route, trial: int | None = None) -> None:
        outcome = await send(
            self.session, route.root + call.path, call.body, protocol=call.protocol, stream=call.stream,
            api_key=route.api_key, timeout_sec=self.config.request_timeout_sec, replica=route.replica, trial=trial,
        )
        self.outcomes.append(outcome)
        if self._on_outcome is not None:
            self._on_outcome(self.index, outcome)

    async def _open(self, i: int) -> Route:
        trial_id = f"step{self.index}-{i:06d}"
        self.trial_ids.append(trial_id)
        return await self.target.open(trial_id)

    async def _one(self, call: Call) -> None:
        route = await self._open(next(self._ids))
        try:
            await self._send(call, route)
        finally:
            await uncancellable(self.target.close(route))

    # ------------------------------------------------------------------------------------------ synthetic

    async def synthetic(self, requests: SyntheticRequests) -> None:
        async with asyncio.TaskGroup() as group:
            if self.config.arrival == "concurrency":

                async def worker() -> None:
                    while self.budget.take():
                        await self._one(requests.next_call())

                for _ in range(int(self.load)):
                    group.create_task(worker())
                return
            rng = random.Random(requests.workload.seed + self.index)
            loop = asyncio.get_running_loop()
            start, offset = loop.time(), 0.0
            while True:
                await asyncio.sleep(max(0.0, start + offset - loop.time()))
                if not self.budget.take():
                    break
                group.create_task(self._one(requests.next_call()))
                offset += 1 / self.load if self.config.arrival == "rate" else rng.expovariate(self.load)

    # --------------------------------------------------------------------------------------------- replay

    async def replay(self, replays: ReplaySet) -> None:
        instances = itertools.count()

        async def slot() -> None:
            while True:
                i = next(instances)
                plan = replays.trials[i % len(replays.trials)]
                if not (granted := self.budget.reserve(len(plan.calls))):
                    return
                route = await self._open(i)
                try:
                    await self._replay_trial(plan, route, i, granted)
                finally:
                    await uncancellable(self.target.close(route))

        async with asyncio.TaskGroup() as group:
            for _ in range(int(self.load)):
                group.create_task(slot())

    async def _replay_trial(self, plan: TrialPlan, route: Route, instance: int, calls: int) -> None:
        """Each call waits for the call it followed when recorded, then for its think-time, then is sent; the
        first `calls` calls only, and none after the step's duration."""
        answered = [asyncio.Event() for _ in plan.calls]

        async def call_task(k: int, call: Call) -> None:
            try:
                if call.after is not None:
                    await answered[call.after].wait()
                if call.think_sec:
                    await asyncio.sleep(call.think_sec)
                if time.monotonic() < self.budget.deadline:
                    await self._send(call, route, instance)
            finally:
                answered[k].set()

        async with asyncio.TaskGroup() as group:
            for k, call in enumerate(plan.calls[:calls]):
                group.create_task(call_task(k, call))


# ------------------------------------------------------------------------------------------------ the test


def _api_key(config: LoadTestConfig) -> str | None:
    if config.api_key_env is None:
        return None
    if not (key := os.environ.get(config.api_key_env)):
        raise ConfigError(f"api_key_env: environment variable {config.api_key_env} is not set")
    return key


async def check_reachable(urls: list[str]) -> None:
    """Refuse to start when a given address does not accept connections: that is not a load-test result."""
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            async with asyncio.timeout(CONNECT_CHECK_SEC):
                _, writer = await asyncio.open_connection(parts.hostname, port, family=socket.AF_UNSPEC)
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "strerror", None) or "no answer"
            raise InfrastructureError(f"cannot connect to {url}: {reason}") from None
        writer.close()
        await writer.wait_closed()


def _routed(trials: Path, trial_ids: list[str], labels: list[str]) -> tuple[list[tuple[int, bool]], int]:
    """Through a gateway: (replica, failed) of every call the gateway routed, and how many trials it spread over
    more than one replica, from the trajectories it wrote (blocking: run in a thread)."""
    index = {label: i for i, label in enumerate(labels)}
    routed: list[tuple[int, bool]] = []
    spread = 0
    for trial_id in trial_ids:
        seen = set()
        for call in read_trajectory(trials / trial_id / TRAJECTORY):
            replica = index.get(str(call.get("deployment")))
            if replica is None:
                continue
            seen.add(replica)
            routed.append((replica, call.get("status") != 200 or call.get("error") is not None))
        spread += len(seen) > 1
    return routed, spread


def _usage(cpu_sec: float, peak_rss_mib: float, requests: int, events: int) -> ProcessUsage:
    return ProcessUsage(
        cpu_sec=cpu_sec,
        cpu_ms_per_request=cpu_sec * 1000 / requests if requests else None,
        cpu_ms_per_event=cpu_sec * 1000 / events if events else None,
        peak_rss_mib=peak_rss_mib,
    )


async def run_loadtest(
    config: LoadTestConfig, *, on_outcome: OnOutcome | None = None, on_step: Callable[[int, float], None] | None = None
) -> LoadTestReport:
    """Run every step of the sweep and write `loadtest.json` and `loadtest.png` into `config.output_dir`."""
    api_key = _api_key(config)
    replays = await asyncio.to_thread(load_replay, config.replay, config.model) if config.replay else None
    synthetic = SyntheticRequests(config.synthetic, config.model) if config.synthetic else None
    await check_reachable(config.upstreams)
    out_dir = config.output_dir
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    report = LoadTestReport(
        started_at=utcnow().isoformat(),
        target="gateway" if config.llm_api else "direct",
        addresses=config.upstreams,
        workload="replay" if replays else "synthetic",
        arrival=config.arrival,
        config=config.model_dump(mode="json"),
        replay=replays and ReplayInfo(
            trials=len(replays.trials), calls=sum(len(t.calls) for t in replays.trials),
            skipped=replays.skipped, problems=list(replays.problems),
        ),
        steps=[],
        saturation=saturation([], config.arrival),
        plot=None,
    )
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    try:
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False, trust_env=False) as session:
            if config.llm_api is not None:
                async with Gateway.serve(config.llm_api, job_name="loadtest", artifacts_dir=gateway_dir(config)) as gateway:
                    await _sweep(config, report, Target(config, api_key, gateway), session, replays, synthetic,
                                 on_outcome, on_step)
            else:
                await _sweep(config, report, Target(config, api_key, None), session, replays, synthetic,
                             on_outcome, on_step)
    except asyncio.CancelledError:
        report.interrupted = True
        await uncancellable(asyncio.to_thread(_finish, report, out_dir, config.arrival))
        raise
    await asyncio.to_thread(_finish, report, out_dir, config.arrival)
    return report


def _finish(report: LoadTestReport, out_dir: Path, arrival: str) -> None:
    from evalkit.loadtest.plot import plot_report

    report.saturation = saturation(report.steps, arrival)
    if report.steps:
        plot_report(report, out_dir / PLOT_NAME)
        report.plot = PLOT_NAME
    write_json_atomic(out_dir / REPORT_NAME, report)


async def _sweep(
    config: LoadTestConfig, report: LoadTestReport, target: Target, session: aiohttp.ClientSession,
    replays: ReplaySet | None, synthetic: SyntheticRequests | None,
    on_outcome: OnOutcome | None, on_step: Callable[[int, float], None] | None,
) -> None:
    roots = [root_of(url) for url in config.upstreams]
    gateway = target.gateway
    for index, load in enumerate(config.loads):
        if on_step is not None:
            on_step(index, load)
        scrape = config.prefix_cache_metrics
        before = await asyncio.gather(*(prefix_cache.scrape(session, r) for r in roots)) if scrape else []
        client_cpu = time.process_time()
        gateway_before = await asyncio.to_thread(tree_usage, *gateway.pids) if gateway else None
        step = Step(config, index, load, target, session, on_outcome)
        if replays is not None:
            await step.replay(replays)
        else:
            assert synthetic is not None
            await step.synthetic(synthetic)
        client_cpu = time.process_time() - client_cpu
        events = sum(o.events for o in step.outcomes)
        n = len(step.outcomes)
        gateway_usage = None
        if gateway is not None and gateway_before is not None:
            after = await asyncio.to_thread(tree_usage, *gateway.pids)
            gateway_usage = _usage(after.cpu_sec - gateway_before.cpu_sec, after.peak_rss_mib, n, events)
        after_scrape = await asyncio.gather(*(prefix_cache.scrape(session, r) for r in roots)) if scrape else []
        routed, spread = None, None
        if gateway is not None:
            routed, spread = await asyncio.to_thread(_routed, target.trajectories, step.trial_ids, config.replica_names)
        elif replays is not None:
            by_trial: dict[int | None, set[int | None]] = {}
            for o in step.outcomes:
                by_trial.setdefault(o.trial, set()).add(o.replica)
            spread = sum(len(replicas) > 1 for replicas in by_trial.values())
        report.steps.append(step_report(
            load, step.outcomes, config.replica_names, routed=routed,
            trials=len(step.trial_ids) if replays is not None else None,
            trials_on_several_replicas=spread if replays is not None else None,
            prefix_cache_hit_rate=prefix_cache.hit_rate(list(zip(before, after_scrape, strict=True))),
            client=_usage(client_cpu, _own_peak_rss_mib(), n, events),
            gateway=gateway_usage,
        ))


def gateway_dir(config: LoadTestConfig) -> Path:
    """Where the gateway the test starts keeps its files: `trials/<id>/agent/…` (the trajectory of every route it
    served) and `litellm/loadtest/` (its router config, requests no trial owned)."""
    return config.output_dir / "gateway"


def _own_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
