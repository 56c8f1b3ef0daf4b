"""`[environment.healthcheck]` (and a step's): a command run in the main container until it passes, before
the agent — Harbor's loop, not Docker's HEALTHCHECK (it stops at the first pass and never runs again).

During `start_period_sec` (measured from before the first run) failures do not count and the next run
follows `start_interval_sec` later; after it, `retries` consecutive failures fail the check, `interval_sec`
apart. A run that outlives its timeout fails the check at once, and the timeout is truncated to whole
seconds (so below 1 s there is none), as in Harbor.
"""

from __future__ import annotations

import asyncio

from evalkit.environments import Environment
from evalkit.errors import HealthcheckError
from evalkit.tasks import HealthcheckConfig


async def run_healthcheck(env: Environment, check: HealthcheckConfig, *, user: str | None = None) -> int:
    """Run `check` until it passes; returns how many runs that took. Raises HealthcheckError."""
    loop = asyncio.get_running_loop()
    start_period_end = loop.time() + check.start_period_sec
    timeout = int(check.timeout_sec) or None
    failures = runs = 0
    while True:
        in_start_period = loop.time() < start_period_end
        result = await env.exec(check.command, timeout_sec=timeout, user=user)
        runs += 1
        if result.timed_out:
            raise HealthcheckError(f"a healthcheck run outlived its timeout of {timeout} s: {check.command}")
        if result.exit_code == 0:
            return runs
        if in_start_period:
            await asyncio.sleep(check.start_interval_sec)
            continue
        failures += 1
        if failures >= check.retries:
            raise HealthcheckError(f"Healthcheck failed after {check.retries} consecutive retries: {check.command}")
        await asyncio.sleep(check.interval_sec)
