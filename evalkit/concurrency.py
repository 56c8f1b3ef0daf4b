"""How many tries run at once: a fixed number, or `n_concurrent: auto`, which grows and shrinks the level
from measured health — how fast the container engine answers, whether its calls fail, and the host's
memory and CPU pressure (`/proc/pressure/*` where the kernel has it, else meminfo and the load average).

The rule is additive increase, multiplicative decrease: one more try while everything is healthy and every
slot is busy; a quarter fewer when the engine fails calls, memory runs short, or the engine's answers take
more than LATENCY_TOLERANCE times the fastest seen. No peer needs this tuned by hand per machine.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from evalkit.environments import BackendHealth
from evalkit.results import ConcurrencyChange

INTERVAL_SEC = 2.0
LATENCY_TOLERANCE = 2.5
"""Engine answers this much slower than the best interval seen: the engine is the bottleneck, back off."""
MEMORY_PRESSURE = 10.0
"""PSI `memory some avg10` (% of time tasks stalled on memory) above which the level shrinks."""
CPU_PRESSURE = 95.0
"""PSI `cpu some avg10` above which the level stops growing (it does not shrink for CPU alone: waiting
agents cost little CPU, and a busy CPU still finishes tries)."""
MIN_AVAILABLE_MEMORY = 0.10
"""Without PSI: shrink when less than this share of memory is available."""
MIN_SAMPLES = 8


class Limiter:
    """A semaphore whose size can change while tries hold it: a lower limit lets running tries finish and
    starts no new one until they are under it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.waiting = 0
        self._changed = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._changed:
            self.waiting += 1
            try:
                await self._changed.wait_for(lambda: self.held < self.limit)
            finally:
                self.waiting -= 1
            self.held += 1

    async def release(self) -> None:
        async with self._changed:
            self.held -= 1
            self._changed.notify_all()

    async def resize(self, limit: int) -> None:
        async with self._changed:
            self.limit = limit
            self._changed.notify_all()

    async def __aenter__(self) -> Limiter:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


@dataclass(frozen=True)
class HostPressure:
    cpu: float | None
    """PSI cpu some avg10 (%), or the load average per CPU × 100 without PSI."""
    memory: float | None
    """PSI memory some avg10 (%), None without PSI."""
    available_memory: float | None
    """Share of memory available (meminfo), None where unknown."""


def _psi(resource: str) -> float | None:
    try:
        text = Path(f"/proc/pressure/{resource}").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("some"):
            return float(dict(part.split("=") for part in line.split()[1:])["avg10"])
    return None


def host_pressure() -> HostPressure:
    """Read the host's pressure now (cheap: three small procfs files; called from a thread)."""
    cpu = _psi("cpu")
    if cpu is None:
        try:
            cpu = os.getloadavg()[0] / (os.cpu_count() or 1) * 100
        except OSError:
            cpu = None
    available = None
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        available = int(info["MemAvailable"].split()[0]) / int(info["MemTotal"].split()[0])
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        pass
    return HostPressure(cpu=cpu, memory=_psi("memory"), available_memory=available)


class AdaptiveConcurrency:
    """Steers a Limiter between 1 and `ceiling` every INTERVAL_SEC; `changes` is the level over time."""

    def __init__(self, limiter: Limiter, health: BackendHealth, *, ceiling: int) -> None:
        self.limiter = limiter
        self.health = health
        self.ceiling = ceiling
        self.started = time.monotonic()
        self.changes: list[ConcurrencyChange] = [ConcurrencyChange(at_sec=0.0, level=limiter.limit, reason="start")]
        self._best_latency: float | None = None
        self._calls = health.calls
        self._failures = health.failures

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL_SEC)
            pressure = await asyncio.to_thread(host_pressure)
            level, reason = self.decide(pressure)
            if level != self.limiter.limit:
                await self.limiter.resize(level)
                self.changes.append(ConcurrencyChange(at_sec=round(time.monotonic() - self.started, 1), level=level, reason=reason))

    def decide(self, pressure: HostPressure) -> tuple[int, str]:
        """The next level and why, from what happened since the last decision."""
        level = self.limiter.limit
        new_calls = self.health.calls - self._calls
        failures = self.health.failures - self._failures
        self._calls, self._failures = self.health.calls, self.health.failures
        recent = list(self.health.latencies)[-new_calls:] if new_calls else []
        latency = statistics.median(recent) if len(recent) >= MIN_SAMPLES else None
        if latency is not None:
            self._best_latency = latency if self._best_latency is None else min(self._best_latency, latency)
        shrunk = max(1, int(level * 0.75))
        if failures:
            return shrunk, f"{failures} engine call(s) failed"
        if (pressure.memory is not None and pressure.memory > MEMORY_PRESSURE) or (
            pressure.available_memory is not None and pressure.available_memory < MIN_AVAILABLE_MEMORY
        ):
            return shrunk, "memory pressure"
        if latency is not None and self._best_latency and latency > LATENCY_TOLERANCE * self._best_latency:
            return max(1, level - 1), f"engine answers in {latency * 1000:.0f} ms (best {self._best_latency * 1000:.0f} ms)"
        saturated = self.limiter.held >= level and self.limiter.waiting > 0
        if saturated and level < self.ceiling and (pressure.cpu is None or pressure.cpu < CPU_PRESSURE):
            return level + 1, "healthy and every slot busy"
        return level, ""
