"""One try of a trial: environment → agent setup → agent → (agent's processes killed, logs copied out) →
verifier → results copied out, each phase timed and bounded, one `TrialResult`.

A phase's failure is recorded as a typed error with its kind, not raised: an agent that times out or exits
non-zero still gets its verdict. Whatever fails after the agent started is the agent's outcome, except an
engine that stopped answering. The container is removed on every path, cancellation included.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evalkit.agents import Agent
from evalkit.cleanup import uncancellable
from evalkit.config import TimeoutsConfig
from evalkit.environments import Environment
from evalkit.errors import (
    AgentExitError,
    AgentProcessesSurvivedError,
    AgentSetupError,
    AgentTimeoutError,
    ContainerLostError,
    DockerUnavailableError,
    JobFailedError,
    TrialError,
)
from evalkit.results import AgentOutcome, ErrorInfo, PhaseTiming, TrialResult, utcnow, write_json_atomic
from evalkit.tasks import Task
from evalkit.verifier import FRESH_DIRS, run_verifier

if TYPE_CHECKING:
    from evalkit.gateway import Gateway

AGENT_GRACE_SEC = 30.0
"""An agent's `run` must return by its timeout; the engine cuts it off this much later if it does not."""
TRAJECTORY_FILE = "litellm-trajectory.jsonl"
VERDICT_FILE = "verdict.json"
LOG_COPIES = (
    ("/logs/agent", "agent", {TRAJECTORY_FILE}),
    ("/logs/verifier", "evaluation", {VERDICT_FILE}),
    ("/logs/artifacts", "artifacts", set()),
)
"""Container directory → try subdirectory, and the names there that only the host writes."""
_MESSAGE_CHARS = 4000


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
class TrySpec:
    """What to run and where its evidence goes."""

    job_name: str
    task: Task | None
    """None for a task that cannot run at all (`record_without_container`)."""
    task_source: dict[str, Any]
    attempt: int
    try_index: int
    try_dir: Path
    download_max_bytes: int
    download_max_files: int

    @property
    def try_name(self) -> str:
        return self.try_dir.name


def error_info(exc: BaseException, *, phase: str, agent_started: bool) -> ErrorInfo:
    """An exception as a result's error. After the agent started, what is not the verifier's is the agent's
    (it may have caused it), unless the engine itself went away."""
    typed = isinstance(exc, TrialError)
    kind = exc.kind if isinstance(exc, TrialError) else "infrastructure"
    if agent_started and kind == "infrastructure" and not isinstance(exc, DockerUnavailableError):
        kind = "agent"
    message = str(exc) or type(exc).__name__
    return ErrorInfo(
        type=type(exc).__name__,
        kind=kind,
        phase=phase,
        message=message if len(message) <= _MESSAGE_CHARS else message[:_MESSAGE_CHARS] + "…",
        traceback=None if typed else "".join(traceback.format_exception(exc)),
    )


def new_result(spec: TrySpec, task_name: str, agent: str) -> TrialResult:
    return TrialResult(
        job_name=spec.job_name,
        trial_name=spec.try_name,
        task_name=task_name,
        attempt=spec.attempt,
        try_index=spec.try_index,
        agent=agent,
        task_source=spec.task_source,
        started_at=utcnow(),
    )


async def run_try(
    spec: TrySpec,
    env: Environment,
    agent: Agent,
    timeouts: PhaseTimeouts,
    gateway: Gateway | None = None,
    retry_if: Callable[[TrialResult], bool] | None = None,
) -> TrialResult:
    """Run every phase that can run, then write `evaluation/verdict.json` and `result.json`.

    `retry_if` decides `will_retry` before the one write, so a crash can never separate a result from
    the decision to retry it."""
    task = spec.task
    assert task is not None
    result = new_result(spec, task.name, agent.name)
    current = "environment"
    agent_started = False

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        nonlocal current
        current = name
        timing = result.phases[name] = PhaseTiming(started_at=utcnow())
        try:
            yield
        finally:
            timing.finished_at = utcnow()

    def record(exc: BaseException) -> None:
        # The first error stands, except those that explain whatever the agent's exit looked like and why
        # no verdict follows.
        if result.error is None or isinstance(exc, (ContainerLostError, DockerUnavailableError, AgentProcessesSurvivedError)):
            result.error = error_info(exc, phase=current, agent_started=agent_started)

    await _in_thread(spec.try_dir.mkdir, parents=True, exist_ok=True)
    access = None
    try:
        try:
            with phase("environment"):
                result.environment = await env.start()
            with phase("agent_setup"):
                try:
                    async with asyncio.timeout(timeouts.agent_setup):
                        await agent.setup(env)
                except TimeoutError:
                    raise AgentSetupError(f"agent setup outlived its timeout of {timeouts.agent_setup:g} s") from None
            if gateway is not None:
                access = await gateway.open_trial(spec.try_name, spec.try_dir / "agent" / TRAJECTORY_FILE)
            agent_started = True
            with phase("agent"):
                result.agent_outcome = await _run_agent(agent, task, env, access, timeouts.agent)
                if result.agent_outcome.timed_out:
                    record(AgentTimeoutError(f"the agent outlived its timeout of {timeouts.agent:g} s"))
                elif result.agent_outcome.exit_code != 0:
                    record(AgentExitError(f"the agent exited with code {result.agent_outcome.exit_code}"))
                if access is not None:  # the key dies with the agent phase, before the verifier runs
                    result.agent_outcome.usage = await uncancellable(gateway.close_trial(access.api_key))  # type: ignore[union-attr]
                await env.kill_agent_processes(then_empty=FRESH_DIRS)
            # The agent is gone, its logs are final: copy them out while the verifier runs.
            agent_logs = asyncio.ensure_future(_copy_out(env, spec, result, LOG_COPIES[0]))
            try:
                with phase("verifier"):
                    result.rewards = await run_verifier(task, env, timeout_sec=timeouts.verifier)
            finally:
                await _join(agent_logs)
        except Exception as exc:  # every failure of one try is that try's result, never the job's crash
            record(exc)
        finally:
            if access is not None and result.agent_outcome.usage is None:
                result.agent_outcome.usage = await uncancellable(gateway.close_trial(access.api_key))  # type: ignore[union-attr]
        if result.environment is not None:  # the agent's logs too, when its phase ended early
            await asyncio.gather(*(_copy_out(env, spec, result, copy) for copy in LOG_COPIES if copy[1] not in result.downloads))
    finally:
        try:
            await uncancellable(env.stop())
        except Exception as exc:  # a container we could not remove is worth knowing about, not a crash
            record(exc)
    result.finished_at = utcnow()
    result.will_retry = retry_if is not None and retry_if(result)
    await _write(spec.try_dir / "evaluation" / VERDICT_FILE, _verdict(result))
    await _write(spec.try_dir / "result.json", result)
    return result


async def _run_agent(agent: Agent, task: Task, env: Environment, access: Any, timeout: float | None) -> AgentOutcome:
    """The agent's run, bounded by the engine too: an agent that ignores its timeout is cut off."""
    try:
        async with asyncio.timeout(None if timeout is None else timeout + AGENT_GRACE_SEC):
            outcome = await agent.run(task, env, model=access, timeout_sec=timeout)
    except TimeoutError:
        return AgentOutcome(timed_out=True)
    return AgentOutcome(exit_code=outcome.exit_code, timed_out=outcome.timed_out)


async def _join(task: asyncio.Future[None]) -> None:
    """Wait for a helper task of this try; cancelled meanwhile, cancel it too and let it end first."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait([task])
        raise


async def _copy_out(env: Environment, spec: TrySpec, result: TrialResult, copy: tuple[str, str, set[str]]) -> None:
    source, target, reserved = copy
    result.downloads[target] = await env.download(
        source, spec.try_dir / target, max_bytes=spec.download_max_bytes, max_files=spec.download_max_files,
        reserved=reserved,
    )


def _verdict(result: TrialResult) -> dict[str, Any]:
    return {"rewards": result.rewards, "reward": result.reward, "error": result.error and result.error.model_dump()}


async def record_without_container(spec: TrySpec, task_name: str, agent: str, error: TrialError) -> TrialResult:
    """The result of a trial whose task cannot run at all (broken or unsupported): no container starts."""
    result = new_result(spec, task_name, agent)
    result.error = error_info(error, phase="load", agent_started=False)
    result.finished_at = result.started_at
    await _in_thread(spec.try_dir.mkdir, parents=True, exist_ok=True)
    await _write(spec.try_dir / "result.json", result)
    return result


async def _write(path: Path, data: Any) -> None:
    await _in_thread(write_json_atomic, path, data)


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """File work off the loop; a failure to write the job's own files stops the job (JobFailedError)."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        where = exc.filename or (args[0] if args else "")
        raise JobFailedError(
            f"cannot write {where}: {exc.strerror or exc}; finished tries are kept, and running the job again resumes it"
        ) from None
