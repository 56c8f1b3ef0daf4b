"""One try of a trial: environment (and its healthcheck) → agent setup → agent → (agent's processes killed,
logs copied out) → verifier → results copied out, each phase timed and bounded, one `TrialResult`.

A phase's failure is recorded as a typed error with its kind, not raised: an agent that times out or exits
non-zero still gets its verdict. Whatever fails after the agent started is the agent's outcome, except an
engine that stopped answering. Every container is removed on every path, cancellation included, and the
whole try has a deadline (every phase's timeout plus grace) that cuts whatever is stuck. `/logs` comes back
in one transfer once the verifier is done, and the reward is read from that copy.

A multi-step task (`[[steps]]`) runs its steps in order in one environment, the verifier after each, as
Harbor does: a step's failure is the step's (kept in `TrialResult.steps`), the steps stop early on a failure
without a verdict or a missed `min_reward`, and the task's reward is combined from the steps that ran. A
separate verifier (`[verifier] environment_mode = "separate"`) grades in an environment of its own that
receives only `/logs/artifacts` and the declared artifacts.
"""

from __future__ import annotations

import asyncio
import inspect
import shlex
import shutil
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from evalkit.agents import Agent, AgentResult
from evalkit.agents.base import agent_mounts, uses_route
from evalkit.artifacts import CONVENTION_DIR, collect_artifacts, run_collect_hooks, upload_artifacts
from evalkit.cleanup import uncancellable
from evalkit.config import TimeoutsConfig
from evalkit.environments import DownloadTarget, Environment, Mount
from evalkit.environments.archive import DownloadedFiles
from evalkit.environments.base import NetworkMode
from evalkit.errors import (
    AgentExitError,
    AgentProcessesSurvivedError,
    AgentSetupError,
    AgentTimeoutError,
    ConfigError,
    ContainerLostError,
    DockerUnavailableError,
    GatewayLostError,
    JobFailedError,
    TrialError,
    TryDeadlineError,
    kind_of,
)
from evalkit.gateway.routes import CONTAINER_DIR
from evalkit.healthcheck import run_healthcheck
from evalkit.results import AgentOutcome, DownloadReport, ErrorInfo, PhaseTiming, StepResult, TrialResult, utcnow, write_json_atomic
from evalkit.steps import combine_rewards, stop_reason
from evalkit.tasks import HealthcheckConfig, Task, TaskStep, VerifierPlan
from evalkit.verifier import FRESH_DIRS, read_reward, run_tests

if TYPE_CHECKING:
    from evalkit.gateway import Gateway, TrialAccess

TRY_GRACE_SEC = 240.0
"""Beyond the sum of a try's phase timeouts (and the agent's grace): the engine's own steps (kill, copies,
removal) must fit in it, or the try is cut (`TryDeadlineError`)."""
TRAJECTORY_FILE = "litellm-trajectory.jsonl"
AGENT_LOG_FILE = "agent-log.jsonl"
"""A host-side agent's own log (`AgentResult.log`), written by the engine beside the trajectory."""
VERDICT_FILE = "verdict.json"
LOGS_DIR = "/logs"
LOG_COPIES = (
    ("agent", "agent", frozenset({TRAJECTORY_FILE, AGENT_LOG_FILE})),
    ("verifier", "evaluation", frozenset({VERDICT_FILE})),
    ("artifacts", "artifacts", frozenset()),
)
"""Subdirectory of /logs → try subdirectory, and the names there that only the host writes. All three
come back in one transfer once the verifier is done (the agent's processes are dead by then)."""
_RESERVED = {name: reserved for name, _, reserved in LOG_COPIES}
_MESSAGE_CHARS = 4000
_ENVIRONMENT_GONE = (ContainerLostError, DockerUnavailableError, AgentProcessesSurvivedError, JobFailedError)
"""Failures after which nothing more can run in the environment (or be trusted from it): they end the try
even inside a step."""

VerifierEnvironments = Callable[[Task], Environment]
"""Makes a separate verifier's environment for a view of the task whose image is the verifier's."""


@dataclass(frozen=True)
class PhaseTimeouts:
    build: float | None
    start: float | None
    agent_setup: float | None
    agent: float | None
    verifier: float | None
    scaling: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    """The job's overrides and multipliers, for the per-step limits of a multi-step task."""

    @property
    def grace(self) -> float:
        """An agent's `run` must return by its timeout; the engine cuts it off this much later if it does not."""
        return self.scaling.grace_sec

    def whole_try(self, task: Task) -> float | None:
        """The try's deadline: every phase's timeout (each step's, healthchecks' worst case, a separate
        verifier's build and start), the agents' grace and TRY_GRACE_SEC; None when a phase has no limit."""
        parts: list[float | None] = [self.build, self.start, self.agent_setup]
        checks = [task.config.environment.healthcheck]
        plans = []
        if task.steps:
            for step in task.steps:
                # A step's `setup.sh` (if any) has no limit of its own: it gets the agent setup's.
                parts += [*self.for_step(task, step), self.grace, self.agent_setup]
                checks.append(step.config.healthcheck)
                plans.append(task.verifier_plan(step))
        else:
            parts += [self.agent, self.verifier, self.grace]
            plans.append(task.verifier_plan())
        for plan in plans:
            parts += [sum(hook.timeout_sec for hook in plan.collect)] + ([self.build, self.start] if plan.separate else [])
        parts += [_healthcheck_bound(check) for check in checks if check is not None]
        if any(p is None for p in parts):
            return None
        return sum(parts) + TRY_GRACE_SEC  # type: ignore[arg-type]


    def for_step(self, task: Task, step: TaskStep) -> tuple[float | None, float | None]:
        """A step's agent and verifier limits: `[steps.agent] timeout_sec` else the task's; the step's own
        `[steps.verifier] timeout_sec`, which defaults to 600 s, never to the task's (as in Harbor)."""
        t = self.scaling
        agent = t.agent_sec or step.config.agent.timeout_sec or task.config.agent.timeout_sec
        verifier = t.verifier_sec or step.config.verifier.timeout_sec
        return (None if agent is None else agent * t.multiplier * t.agent_multiplier,
                verifier * t.multiplier * t.verifier_multiplier)


def _healthcheck_bound(check: HealthcheckConfig) -> float | None:
    """The longest a healthcheck can take before it passes or fails (None: its runs have no timeout)."""
    timeout = int(check.timeout_sec)
    if not timeout:
        return None
    return check.start_period_sec + timeout + check.start_interval_sec + check.retries * (timeout + check.interval_sec)


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
        scaling=t,
    )


def task_network(task: Task, configured: NetworkMode | None, internet: NetworkMode | None) -> NetworkMode | None:
    """The network a task's container gets: `none` for `no-network` (and `allowlist`, which is not implemented:
    such a task gets no network rather than all of it); for a task that needs the internet, the configured
    mode, else the backend's own (`internet`). None when there is none to give (a config error for the job)."""
    if task.config.environment.network_mode in ("no-network", "allowlist"):
        return "none"
    return configured or internet


def route_mounts(agent: Agent, access: TrialAccess | None) -> tuple[Mount, ...]:
    """The trial's model route, for an agent that runs in the container: its socket's directory, read-only."""
    if access is None or not uses_route(agent):
        return ()
    return (Mount(access.socket_path.parent, str(CONTAINER_DIR)),)


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
    kind = kind_of(type(exc))
    if agent_started and kind == "infrastructure" and not isinstance(exc, DockerUnavailableError | GatewayLostError):
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


@dataclass
class _Run:
    """What the phases of one try share."""

    spec: TrySpec
    task: Task
    agent: Agent
    result: TrialResult
    verifier_environments: VerifierEnvironments | None
    env: Environment | None = None
    """Made once the trial's route is open (it is mounted into the environment)."""
    access: Any = None

    async def copy_logs(self, targets: dict[str, str], env: Environment | None = None) -> DownloadedFiles:
        """Subdirectories of `/logs` (name → try subdirectory) not copied yet, in one transfer, each under the
        try's caps and with the names only the host writes left out; the verifier's copy for reading back."""
        routes = {
            name: DownloadTarget(self.spec.try_dir / target, self.spec.download_max_bytes, self.spec.download_max_files,
                                 _RESERVED[name])
            for name, target in targets.items() if target not in self.result.downloads
        }
        if routes:
            try:
                reports = await (env or self.env).download_many(LOGS_DIR, routes)
            except OSError as exc:  # the host's disk, never the container's doing
                raise JobFailedError(
                    f"cannot write {exc.filename or self.spec.try_dir}: {exc.strerror or exc}; finished tries are kept, "
                    "and running the job again resumes it"
                ) from None
            self.result.downloads.update({targets[name]: report for name, report in reports.items()})
        target = targets.get("verifier", "evaluation")
        return DownloadedFiles(f"{LOGS_DIR}/verifier", self.spec.try_dir / target,
                               self.result.downloads.get(target) or DownloadReport(error="not copied"))

    async def copy_rest(self) -> None:
        """What the phases did not copy, when they ended early (steps copy their own agent and verifier logs)."""
        await self.copy_logs({name: target for name, target, _ in LOG_COPIES if not self.task.steps or name == "artifacts"})


async def run_try(
    spec: TrySpec,
    make_env: Callable[[tuple[Mount, ...]], Environment],
    agent: Agent,
    timeouts: PhaseTimeouts,
    gateway: Gateway | None = None,
    retry_if: Callable[[TrialResult], bool | Awaitable[bool]] | None = None,
    verifier_environments: VerifierEnvironments | None = None,
) -> TrialResult:
    """Run every phase that can run, then write `evaluation/verdict.json` and `result.json`.

    `make_env(mounts)` makes the try's environment with these read-only mounts added: the agent's runtime
    tree and, for an in-container agent, the trial's model route (opened first, so it can be mounted).
    `retry_if` decides `will_retry` before the one write, so a crash can never separate a result from
    the decision to retry it. `verifier_environments` makes a separate verifier's environment (tasks whose
    verifier runs in the agent's environment need none)."""
    task = spec.task
    assert task is not None
    result = new_result(spec, task.name, agent.name)
    result.warnings = list(task.warnings)
    run = _Run(spec, task, agent, result, verifier_environments)
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
        if result.error is None or isinstance(
            exc, (ContainerLostError, DockerUnavailableError, AgentProcessesSurvivedError, GatewayLostError, TryDeadlineError)
        ):
            result.error = error_info(exc, phase=current, agent_started=agent_started)

    await _in_thread(spec.try_dir.mkdir, parents=True, exist_ok=True)
    deadline_sec = await asyncio.to_thread(timeouts.whole_try, task)  # verifier plans look at the task's files
    route: TrialAccess | None = None  # kept past the key's closing: its directory is released after the container
    try:
        try:
            async with asyncio.timeout(deadline_sec) as deadline:
                try:
                    with phase("environment"):
                        if gateway is not None:  # before the container: its route is mounted at the start
                            run.access = route = await gateway.open_trial(spec.try_name, spec.try_dir / "agent" / TRAJECTORY_FILE)
                        run.env = env = make_env(agent_mounts(agent) + route_mounts(agent, route))
                        result.environment = await env.start()
                        if task.config.environment.healthcheck is not None:
                            await run_healthcheck(env, task.config.environment.healthcheck)
                            await env.mark_baseline()  # what the environment runs once healthy is its own
                    with phase("agent_setup"):
                        try:
                            async with asyncio.timeout(timeouts.agent_setup):
                                await agent.setup(env)
                        except TimeoutError:
                            raise AgentSetupError(f"agent setup outlived its timeout of {timeouts.agent_setup:g} s") from None
                    agent_started = True
                    if task.steps:
                        current = "agent"
                        await _run_steps(run, timeouts, gateway)
                    else:
                        plan = task.verifier_plan()
                        with phase("agent"):
                            result.agent_outcome, problems = await _agent_phase(run, task, timeouts.agent, timeouts.grace,
                                                                                spec.try_dir / "agent")
                            for problem in problems:
                                record(problem)
                            await _close_key(run, gateway)
                            await env.kill_agent_processes(then_empty=FRESH_DIRS)
                        with phase("verifier"):
                            result.rewards = await _verify(run, plan, timeouts.verifier, "")
                except (JobFailedError, ConfigError):  # the job's, not the try's (a remote engine and mounts)
                    raise
                except Exception as exc:  # every failure of one try is that try's result, never the job's crash
                    record(exc)
                finally:
                    try:
                        await _close_key(run, gateway)
                    except GatewayLostError as exc:  # the gateway process serving this try died before the agent ended
                        record(exc)
                if result.environment is not None:  # the phases ended early (steps copy their own agent logs)
                    await run.copy_rest()
        except TimeoutError:
            if not deadline.expired():
                raise
            record(TryDeadlineError(f"the try outlived its deadline of {deadline_sec:g} s (every phase's timeout "
                                    f"and {timeouts.grace + TRY_GRACE_SEC:g} s of grace) in its {current} phase"))
    finally:
        try:
            if run.env is not None:
                await uncancellable(run.env.stop())
        except Exception as exc:  # a container we could not remove is worth knowing about, not a crash
            record(exc)
        if route is not None:  # no archive request of this try needs the route's mount source any more
            await uncancellable(gateway.release_route(route))  # type: ignore[union-attr]
    result.finished_at = utcnow()
    decision = retry_if is not None and retry_if(result)
    result.will_retry = bool(await decision if inspect.isawaitable(decision) else decision)
    await _write(spec.try_dir / "evaluation" / VERDICT_FILE, _verdict(result))
    await _write(spec.try_dir / "result.json", result)
    return result


async def _agent_phase(run: _Run, task: Task, timeout: float | None, grace: float,
                       log_dir: Path) -> tuple[AgentOutcome, list[TrialError]]:
    """Run the agent; its outcome as recorded (scaffold version, model), its host-side log written to
    `log_dir`, and what went wrong: a timeout, what the agent's own output says (rate limited, context
    window, a crash), else a non-zero exit that counts as an error."""
    assert run.env is not None
    ran = await _run_agent(run.agent, task, run.env, run.access, timeout, grace)
    outcome = AgentOutcome(exit_code=ran.exit_code, timed_out=ran.timed_out, exit_code_is_error=ran.exit_code_is_error,
                           version=getattr(run.agent, "version", None), model=run.access.model if run.access else None)
    if ran.log:
        await _write_lines(log_dir / AGENT_LOG_FILE, ran.log)
    if ran.timed_out:
        return outcome, [AgentTimeoutError(f"the agent outlived its timeout of {timeout:g} s")]
    if ran.error is not None:
        return outcome, [ran.error]
    if ran.exit_code != 0 and ran.exit_code is not None and ran.exit_code_is_error:
        return outcome, [AgentExitError(f"the agent exited with code {ran.exit_code}")]
    return outcome, []


async def _close_key(run: _Run, gateway: Gateway | None) -> None:
    """The model key dies with the agent phase, before any verifier runs (once per try)."""
    if run.access is not None and gateway is not None and run.result.agent_outcome.usage is None:
        access, run.access = run.access, None
        run.result.agent_outcome.usage = await uncancellable(gateway.close_trial(access.api_key))


async def _verify(run: _Run, plan: VerifierPlan, timeout: float | None, where: str, *, last: bool = True) -> dict[str, float]:
    """Collect hooks and declared artifacts, then the verifier: in the agent's environment (shared), or in a
    fresh one that receives only `/logs/artifacts` and the artifacts (separate; on the `last` verification
    of the try the agent's environment is stopped first, as in Harbor). The agent's processes are dead and
    `/tests`, `/logs/verifier` empty by now."""
    env, spec = run.env, run.spec
    await run_collect_hooks(env, plan.collect)
    collected, reports = await collect_artifacts(
        env, plan.artifacts, spec.try_dir / "artifacts" / where, max_bytes=spec.download_max_bytes,
        max_files=spec.download_max_files,
    )
    run.result.downloads.update({f"{where}{name}" if where else name: report for name, report in reports.items()})
    if not plan.separate:
        await run_tests(plan, env, timeout_sec=timeout)
        if where:  # a step's verifier logs go to the step's directory
            return await read_reward(await run.copy_logs({"verifier": f"evaluation/{where}".rstrip("/")}))
        return await read_reward(await run.copy_logs({name: target for name, target, _ in LOG_COPIES}))
    if run.verifier_environments is None:
        raise RuntimeError("this task's verifier needs an environment of its own, and none can be made here")
    staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".verifier-", dir=spec.try_dir))
    try:
        convention = staging / "logs-artifacts"
        report = await env.download(CONVENTION_DIR, convention, max_bytes=spec.download_max_bytes, max_files=spec.download_max_files)
        if last:  # the agent's environment has no further use (Harbor stops it here)
            await run.copy_logs({"artifacts": "artifacts"} if where else {"agent": "agent", "artifacts": "artifacts"})
            await uncancellable(env.stop())
        view = run.task.with_image(context=plan.image_context, docker_image=plan.docker_image, environment=plan.environment)
        verifier_env = run.verifier_environments(view)
        try:
            await verifier_env.start()
            await upload_artifacts(verifier_env, convention if report.error is None else None, collected, staging)
            target = f"evaluation/{where}".rstrip("/")
            try:
                await run_tests(plan, verifier_env, timeout_sec=timeout)
            finally:
                copied = await run.copy_logs({"verifier": target}, env=verifier_env)
            return await read_reward(copied)
        finally:
            await uncancellable(verifier_env.stop())
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


async def _run_steps(run: _Run, timeouts: PhaseTimeouts, gateway: Gateway | None) -> None:
    """Each step in order in the one environment; stop early as Harbor does; combine the reward."""
    task, env, result = run.task, run.env, run.result
    for step in task.steps:
        outcome = StepResult(name=step.name)
        result.steps.append(outcome)
        await _run_step(run, step, outcome, timeouts)
        await _write(run.spec.try_dir / "evaluation" / "steps" / step.name / VERDICT_FILE,
                     {"rewards": outcome.rewards, "error": outcome.error and outcome.error.model_dump()})
        if stop_reason(outcome, step.config.min_reward) is not None:
            break
    await _close_key(run, gateway)
    result.rewards = combine_rewards(result.steps, task.config.multi_step_reward_strategy)
    if result.steps:
        usage, result.agent_outcome = result.agent_outcome.usage, result.steps[-1].agent_outcome.model_copy()
        result.agent_outcome.usage = usage


async def _run_step(run: _Run, step: TaskStep, outcome: StepResult, timeouts: PhaseTimeouts) -> None:
    """Prepare (fresh /logs/agent, /tests, /logs/verifier; `workdir/` and `setup.sh`; the step's
    healthcheck), agent, verifier. A failure is the step's, unless the environment itself is gone."""
    env, task = run.env, run.task
    agent_timeout, verifier_timeout = timeouts.for_step(task, step)
    user = step.config.agent.user if step.config.agent.user is not None else task.config.agent.user
    user = None if user is None else str(user)

    @contextmanager
    def phase(name: str) -> Iterator[None]:
        timing = outcome.phases[name] = PhaseTiming(started_at=utcnow())
        try:
            yield
        except _ENVIRONMENT_GONE:
            raise
        except Exception as exc:
            if outcome.error is None:
                outcome.error = error_info(exc, phase=name, agent_started=name != "setup")
        finally:
            timing.finished_at = utcnow()

    with phase("setup"):
        # Nothing of the previous step (its agent's logs, its tests, its verdict) is seen by this one.
        await env.kill_agent_processes(then_empty=("/logs/agent", *FRESH_DIRS))
        ran = await _step_workdir(env, step, user)
        if step.config.healthcheck is not None:
            await run_healthcheck(env, step.config.healthcheck, user=user)
        if ran or step.config.healthcheck is not None:
            await env.mark_baseline()
    if outcome.error is not None:
        return
    with phase("agent"):
        try:
            step_logs = run.spec.try_dir / "agent" / "steps" / step.name
            outcome.agent_outcome, problems = await _agent_phase(run, task.for_step(step), agent_timeout, timeouts.grace,
                                                                 step_logs)
            if problems:
                raise problems[0]
        finally:
            await env.kill_agent_processes(then_empty=FRESH_DIRS)
            await run.copy_logs({"agent": f"agent/steps/{step.name}"})
    with phase("verifier"):
        try:
            outcome.rewards = await _verify(run, task.verifier_plan(step), verifier_timeout, f"steps/{step.name}/",
                                            last=step is task.steps[-1])
        finally:
            if not task.verifier_plan(step).separate:
                await run.copy_logs({"verifier": f"evaluation/steps/{step.name}"})


async def _step_workdir(env: Environment, step: TaskStep, user: str | None) -> bool:
    """Upload `steps/<name>/workdir/` into the working directory and run its `setup.sh` there (as the step's
    agent user); True if a setup script ran."""
    workdir = step.path / "workdir"
    if not await asyncio.to_thread(workdir.is_dir):
        return False
    where = await env.exec("pwd", user=user, timeout_sec=60)
    cwd = where.output.strip() or "/"
    await env.put(workdir, cwd)
    if not await asyncio.to_thread((workdir / "setup.sh").is_file):
        return False
    setup = await env.exec(f"bash {shlex.quote(cwd.rstrip('/') + '/setup.sh')}", user=user)
    if setup.exit_code != 0:
        raise RuntimeError(f"step {step.name!r}: setup.sh exited with code {setup.exit_code}: {setup.output.strip()[-300:]}")
    return True


async def _run_agent(agent: Agent, task: Task, env: Environment, access: Any, timeout: float | None,
                     grace: float) -> AgentResult:
    """The agent's run, bounded by the engine too: an agent that ignores its timeout (by `grace`) is cut off."""
    try:
        async with asyncio.timeout(None if timeout is None else timeout + grace):
            return await agent.run(task, env, model=access, timeout_sec=timeout)
    except TimeoutError:
        return AgentResult(exit_code=None, timed_out=True)


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


async def _write_lines(path: Path, lines: Any) -> None:
    """A JSONL file the host writes (never through anything the container made: `agent/` is ours until the
    download, which then skips this name)."""

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(orjson.dumps(line, default=str) + b"\n" for line in lines))

    await _in_thread(write)


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
