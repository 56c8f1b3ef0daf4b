"""One trial: environment → agent setup → agent → verifier, each phase timed and bounded, one `TrialResult`.

A phase's failure is recorded as a typed error, not raised: an agent that times out or exits non-zero still
gets its verdict. The container is removed on every path, cancellation included.
"""

from __future__ import annotations

import asyncio
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from evalkit.agents import Agent
from evalkit.cleanup import uncancellable
from evalkit.config import TimeoutsConfig
from evalkit.environments import Environment
from evalkit.errors import AgentExitError, AgentSetupError, AgentTimeoutError, TrialError
from evalkit.results import AgentOutcome, ErrorInfo, PhaseTiming, TrialResult, utcnow, write_json_atomic
from evalkit.tasks import Task
from evalkit.verifier import run_verifier

if TYPE_CHECKING:
    from evalkit.gateway import Gateway


@dataclass(frozen=True)
class PhaseTimeouts:
    build: float | None
    start: float | None
    agent_setup: float | None
    agent: float | None
    verifier: float | None


def phase_timeouts(task: Task, t: TimeoutsConfig) -> PhaseTimeouts:
    """(task value or override) × global multiplier × phase multiplier; None means no limit."""

    def scale(base: float | None, phase_multiplier: float) -> float | None:
        return None if base is None else base * t.multiplier * phase_multiplier

    return PhaseTimeouts(
        build=scale(t.build_sec or task.config.environment.build_timeout_sec, t.build_multiplier),
        start=scale(t.start_sec, t.start_multiplier),
        agent_setup=scale(t.agent_setup_sec, t.agent_setup_multiplier),
        agent=scale(t.agent_sec or task.config.agent.timeout_sec, t.agent_multiplier),
        verifier=scale(t.verifier_sec or task.config.verifier.timeout_sec, t.verifier_multiplier),
    )


@dataclass(frozen=True)
class TrialSpec:
    """What to run and where its evidence goes."""

    job_name: str
    task: Task
    task_source: dict[str, Any]
    attempt: int
    try_index: int
    trial_dir: Path

    @property
    def trial_name(self) -> str:
        return self.trial_dir.name


def error_info(exc: BaseException) -> ErrorInfo:
    tb = None if isinstance(exc, TrialError) else "".join(traceback.format_exception(exc))
    return ErrorInfo(type=type(exc).__name__, message=str(exc) or type(exc).__name__, traceback=tb)


async def run_trial(
    spec: TrialSpec,
    env: Environment,
    agent: Agent,
    timeouts: PhaseTimeouts,
    gateway: Gateway | None = None,
    retry_if: Callable[[TrialResult], bool] | None = None,
) -> TrialResult:
    """Run every phase that can run, then write `result.json` and `evaluation/verdict.json`.

    `retry_if` decides `will_retry` before the one write, so a crash can never separate a result from
    the decision to retry it."""
    task = spec.task
    result = TrialResult(
        job_name=spec.job_name,
        trial_name=spec.trial_name,
        task_name=task.name,
        attempt=spec.attempt,
        try_index=spec.try_index,
        agent=agent.name,
        task_source=spec.task_source,
        started_at=utcnow(),
    )

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        timing = result.phases[name] = PhaseTiming(started_at=utcnow())
        try:
            yield
        finally:
            timing.finished_at = utcnow()

    access = None
    try:
        with phase("environment"):
            await env.start()
        with phase("agent_setup"):
            try:
                async with asyncio.timeout(timeouts.agent_setup):
                    await agent.setup(env)
            except TimeoutError:
                raise AgentSetupError(f"agent setup outlived its timeout of {timeouts.agent_setup:g} s") from None
        if gateway is not None:
            access = await gateway.open_trial(spec.trial_name, spec.trial_dir / "agent" / "litellm-trajectory.jsonl")
        with phase("agent"):
            outcome = await agent.run(task, env, model=access, timeout_sec=timeouts.agent)
        result.agent_outcome = AgentOutcome(exit_code=outcome.exit_code, timed_out=outcome.timed_out)
        if outcome.timed_out:
            result.error = error_info(AgentTimeoutError(f"the agent outlived its timeout of {timeouts.agent:g} s"))
        elif outcome.exit_code != 0:
            result.error = error_info(AgentExitError(f"the agent exited with code {outcome.exit_code}"))
        with phase("verifier"):
            result.rewards = await run_verifier(task, env, spec.trial_dir / "evaluation", timeout_sec=timeouts.verifier)
    except Exception as exc:  # every failure of one trial is that trial's result, never the job's crash
        result.error = result.error or error_info(exc)
    finally:
        if access is not None:
            usage = await uncancellable(gateway.close_trial(access.api_key))
            result.agent_outcome.usage = usage
        try:
            await uncancellable(env.stop())
        except Exception as exc:  # a container we could not remove is worth knowing about, not a crash
            result.error = result.error or error_info(exc)
    result.finished_at = utcnow()
    result.will_retry = retry_if is not None and retry_if(result)
    await asyncio.to_thread(_write_trial_files, spec.trial_dir, result)
    return result


def _write_trial_files(trial_dir: Path, result: TrialResult) -> None:
    write_json_atomic(
        trial_dir / "evaluation" / "verdict.json",
        {"rewards": result.rewards, "reward": result.reward, "error": result.error and result.error.model_dump()},
    )
    write_json_atomic(trial_dir / "result.json", result)
