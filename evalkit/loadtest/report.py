"""The load test's JSON document (schema version 1): one report per step of the sweep, and a verdict on saturation.

Everything here is computed from the client's measurements (`Outcome`s) and counters read from the processes
and servers; no figure is taken from the server's own claims except token counts and prefix-cache counters.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel

from evalkit.loadtest.client import Outcome

SCHEMA_VERSION = 1


class Percentiles(BaseModel):
    """A distribution in milliseconds."""

    n: int
    """How many values it was taken from."""
    mean: float
    p50: float
    p90: float
    p99: float


class ProcessUsage(BaseModel):
    """CPU and memory a process (and its descendants) spent during one step."""

    cpu_sec: float
    cpu_ms_per_request: float | None
    """CPU per request sent in the step."""
    cpu_ms_per_event: float | None
    """CPU per server-sent event the client read (streams only)."""
    peak_rss_mib: float
    """Peak resident memory so far (VmHWM, summed over the process tree)."""


class ReplicaShare(BaseModel):
    """What one replica received during a step."""

    requests: int
    errors: int
    share: float
    """Its fraction of the step's requests."""


class StepReport(BaseModel):
    """One load level of the sweep."""

    load: float
    """Requests in flight (synthetic, `concurrency`), trials in flight (replay), or requests/s offered."""
    requests: int
    """Requests sent."""
    completed: int
    """Requests answered completely (no error)."""
    errors: dict[str, int]
    """Failed requests by kind (see `evalkit.loadtest.client.Outcome.error`)."""
    error_rate: float
    duration_sec: float
    """From the first request sent to the last answer."""
    requests_per_sec: float
    """Completed requests per second."""
    sent_per_sec: float | None
    """The rate requests were sent at: (requests − 1) / (last send − first send)."""
    latency_growth: float | None
    """Median end-to-end latency of the last third of requests (by send time) over the first third's: about 1 on
    a server that keeps up; growing with the step's length when a queue builds."""
    output_tokens_per_sec: float
    """Output tokens of completed requests per second, over the whole step."""
    ttft_ms: Percentiles | None
    """Time to the first output event."""
    itl_ms: Percentiles | None
    """Inter-token latency: the gaps between successive output events, over all streams."""
    tpot_ms: Percentiles | None
    """Time per output token after the first, per request: (end − first output) / (output tokens − 1)."""
    e2e_ms: Percentiles | None
    """End-to-end latency of completed requests."""
    per_replica: dict[str, ReplicaShare]
    trials: int | None = None
    """Replayed trials started (replay only)."""
    trials_on_several_replicas: int | None = None
    """Replayed trials whose calls reached more than one replica (0 when stickiness held)."""
    prefix_cache_hit_rate: float | None
    """From the servers' `/metrics` (vLLM), over the step; None where no server exposes it."""
    events: int
    """Server-sent events read."""
    client: ProcessUsage
    """This load generator's own cost (the baseline a gateway's cost is compared with)."""
    gateway: ProcessUsage | None
    """The evalkit gateway's cost, when the test started one."""


class Saturation(BaseModel):
    detected: bool
    at_load: float | None
    """The first load level where a sign of over-saturation appeared."""
    reasons: list[str]


class ReplayInfo(BaseModel):
    trials: int
    """Distinct recorded trials (replayed round-robin)."""
    calls: int
    skipped: dict[str, int]
    """Recorded calls not replayed, by reason."""
    problems: list[str]
    """Damage the trajectory reader reported (torn lines)."""


class LoadTestReport(BaseModel):
    """`loadtest.json`."""

    version: int = SCHEMA_VERSION
    started_at: str
    """UTC, ISO 8601."""
    target: str
    """`direct` or `gateway`."""
    addresses: list[str]
    """Every address the test sent to (the gateway it started is on 127.0.0.1)."""
    workload: str
    """`synthetic` or `replay`."""
    arrival: str
    config: dict[str, Any]
    """The config that produced it (key variables by name only)."""
    replay: ReplayInfo | None
    steps: list[StepReport]
    saturation: Saturation
    plot: str | None
    """The plot file, next to this one."""
    interrupted: bool = False
    """True when Ctrl-C ended the test: the steps are those finished before it."""


# --------------------------------------------------------------------------------------------- statistics


def percentiles(values_sec: list[float]) -> Percentiles | None:
    """Linear-interpolated percentiles, in milliseconds."""
    if not values_sec:
        return None
    ordered = sorted(values_sec)

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return (ordered[low] + (ordered[high] - ordered[low]) * (pos - low)) * 1000

    return Percentiles(n=len(ordered), mean=sum(ordered) / len(ordered) * 1000, p50=at(0.5), p90=at(0.9), p99=at(0.99))


def step_report(
    load: float,
    outcomes: list[Outcome],
    replicas: list[str],
    *,
    routed: list[tuple[int, bool]] | None = None,
    **extra: Any,
) -> StepReport:
    """Aggregate one step. `routed` (through a gateway): (replica index, failed) per call, from its trajectories;
    without it each outcome's own replica is used."""
    ok = [o for o in outcomes if o.error is None]
    errors = Counter(o.error for o in outcomes if o.error is not None)
    window = (max(o.end for o in outcomes) - min(o.sent for o in outcomes)) if outcomes else 0.0
    tokens = sum(o.output_tokens for o in ok)
    routes = routed if routed is not None else [(o.replica, o.error is not None) for o in outcomes]
    per_replica = {}
    for index, name in enumerate(replicas):
        hits = [failed for replica, failed in routes if replica == index]
        per_replica[name] = ReplicaShare(requests=len(hits), errors=sum(hits), share=len(hits) / max(1, len(routes)))
    tpot = [(o.end - o.sent - o.ttft) / (o.output_tokens - 1) for o in ok if o.ttft is not None and o.output_tokens > 1]
    sends = sorted(o.sent for o in outcomes)
    span = sends[-1] - sends[0] if sends else 0.0
    by_send = sorted(ok, key=lambda o: o.sent)
    third = len(by_send) // 3
    early = percentiles([o.end - o.sent for o in by_send[:third]]) if third else None
    late = percentiles([o.end - o.sent for o in by_send[-third:]]) if third else None
    return StepReport(
        load=load,
        requests=len(outcomes),
        completed=len(ok),
        errors=dict(sorted(errors.items())),
        error_rate=sum(errors.values()) / len(outcomes) if outcomes else 0.0,
        duration_sec=window,
        requests_per_sec=len(ok) / window if window > 0 else 0.0,
        sent_per_sec=(len(sends) - 1) / span if span > 0 else None,
        latency_growth=late.p50 / early.p50 if early and late and early.p50 > 0 else None,
        output_tokens_per_sec=tokens / window if window > 0 else 0.0,
        ttft_ms=percentiles([o.ttft for o in ok if o.ttft is not None]),
        itl_ms=percentiles([gap for o in ok for gap in o.gaps]),
        tpot_ms=percentiles(tpot),
        e2e_ms=percentiles([o.end - o.sent for o in ok]),
        per_replica=per_replica,
        events=sum(o.events for o in outcomes),
        **extra,
    )


# --------------------------------------------------------------------------------------------- saturation

THROUGHPUT_GAIN = 0.1
"""A load increase is 'used' when throughput grows by at least this share of it (×2 load → ≥ ×1.1 req/s)."""
LATENCY_GROWTH = 1.25
QUEUE_GROWTH = 2.0
"""An open-loop step is saturated when its last third of requests took this many times longer than its first…"""
RATE_SHORTFALL = 0.9
"""…and fewer than this share of the rate requests were sent at completed."""
QUEUEING_TTFT = 3.0
"""TTFT this many times the lightest step's, and more than half of end-to-end latency: requests queue."""


def saturation(steps: list[StepReport], arrival: str) -> Saturation:
    """Signs of over-saturation, step by step: the first load where one shows is `at_load`."""
    reasons: list[str] = []
    first: float | None = None
    base = steps[0] if steps else None
    for prev, step in zip([None, *steps], steps, strict=False):
        found = []
        if (
            arrival != "concurrency" and step.latency_growth is not None and step.latency_growth >= QUEUE_GROWTH
            and step.sent_per_sec is not None and step.requests_per_sec < RATE_SHORTFALL * step.sent_per_sec
        ):
            found.append(
                f"at {step.load:g} req/s offered ({step.sent_per_sec:.1f} sent per second) only "
                f"{step.requests_per_sec:.1f} completed per second and the last requests took "
                f"×{step.latency_growth:.1f} as long as the first: a queue builds, the server cannot keep up"
            )
        if prev is not None and step.load > prev.load and prev.requests_per_sec > 0 and prev.e2e_ms and step.e2e_ms:
            load_ratio = step.load / prev.load
            gain = step.requests_per_sec / prev.requests_per_sec
            latency = step.e2e_ms.p50 / prev.e2e_ms.p50 if prev.e2e_ms.p50 > 0 else 1.0
            if gain < 1 + THROUGHPUT_GAIN * (load_ratio - 1) and latency >= LATENCY_GROWTH:
                found.append(
                    f"from load {prev.load:g} to {step.load:g} (×{load_ratio:.2g}) throughput changed ×{gain:.2f} "
                    f"while median latency grew ×{latency:.2f}: throughput stopped growing"
                )
        if (
            base is not None and step is not base and base.ttft_ms and step.ttft_ms and step.e2e_ms
            and step.ttft_ms.p50 >= QUEUEING_TTFT * base.ttft_ms.p50 and step.ttft_ms.p50 > 0.5 * step.e2e_ms.p50
        ):
            found.append(
                f"at load {step.load:g} median TTFT is {step.ttft_ms.p50:.0f} ms, ×{step.ttft_ms.p50 / base.ttft_ms.p50:.1f} "
                f"the lightest load's and {step.ttft_ms.p50 / step.e2e_ms.p50:.0%} of end-to-end: queueing dominates TTFT"
            )
        if found and first is None:
            first = step.load
        reasons += found
    return Saturation(detected=bool(reasons), at_load=first, reasons=reasons)
