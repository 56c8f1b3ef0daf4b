"""A job: tasks × attempts as trials, a bounded pool of tries, retries, resume, and `results.json` kept
current.

Resume needs no journal of its own: every finished try has an atomically written `result.json`, so the
job directory *is* the journal. A try directory without one was interrupted and is run again (as a new try,
keeping the evidence of the interrupted one). One runner at a time: `<job>/.lock` is held while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from evalkit.adapters.harbor import TaskRef, resolve_tasks
from evalkit.agents import Agent, agent_factory
from evalkit.agents.base import uses_route
from evalkit.cleanup import uncancellable
from evalkit.concurrency import AdaptiveConcurrency, Limiter
from evalkit.config import SECRET_MARK, JobConfig
from evalkit.environments import Environment, EnvironmentBackend, EnvironmentSpec, JobIdentity, Mount, Resources, connect_backend
from evalkit.errors import (
    ConfigError,
    DockerUnavailableError,
    EvalkitError,
    InfrastructureError,
    JobFailedError,
    TaskConfigError,
    TrialError,
    says_machine_went_away,
)
from evalkit.gateway import Gateway, LLMApiConfig
from evalkit.lock import JobLock
from evalkit.metrics import MetricsReport, compute_metrics, mean_pass_at_k, passed, phase_stats
from evalkit.results import (
    ImageSummary,
    JobSummary,
    TRY_DIR_NAME,
    NodeStats,
    TaskSummary,
    TrialResult,
    overwrite_json_in_place,
    sum_usage,
    try_dir_name,
    utcnow,
    write_json_atomic,
)
from evalkit.serving import managed_llm_api
from evalkit.tasks import Task, load_task
from evalkit.trial import PhaseTimeouts, TrySpec, phase_timeouts, record_without_container, run_try, task_network

log = logging.getLogger(__name__)
JOB_FILE = "job.json"
JOB_SCHEMA_VERSION = 2
_CA_PATH = "/etc/ssl/certs/ca-certificates.crt"
_CA_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "PIP_CERT", "CURL_CA_BUNDLE")


@dataclass
class Trial:
    """One (task, attempt): what results count, with all of its tries."""

    ref: TaskRef
    attempt: int
    task: Task | None
    """None when the task cannot run at all; `problem` says why."""
    problem: TrialError | None = None
    tries: list[TrialResult] = field(default_factory=list)
    next_try: int = 0
    reopened_at: int = 0
    """`--retry-errors`: tries before this index ended the trial once; it runs again, keeping them."""

    @property
    def name(self) -> str:
        return f"{self.ref.name}__{self.attempt}"

    @property
    def retries(self) -> int:
        """Tries since the trial (re)opened that scheduled another."""
        return sum(1 for r in self.tries[self.reopened_at:] if r.will_retry and not r.outage)

    @property
    def final(self) -> TrialResult | None:
        """The last finished try, if no further try is due."""
        if len(self.tries) > self.reopened_at and not self.tries[-1].will_retry:
            return self.tries[-1]
        return None


@dataclass
class Progress:
    """Counters kept incrementally, for progress displays (the full summary is O(trials) to compute)."""

    total: int
    done: int = 0
    errored: int = 0
    reward_sum: float = 0.0
    tries: int = 0

    @property
    def mean_reward(self) -> float | None:
        return self.reward_sum / self.done if self.done else None

    def count(self, result: TrialResult) -> None:
        self.tries += 1
        if not result.will_retry:
            self.done += 1
            self.errored += result.error is not None
            self.reward_sum += result.reward or 0.0


ProgressCallback = Callable[[TrialResult, Progress], None]
IMAGE_LOGS = "images"
"""`<job>/images/<task>.log`: the build or pull of each task's image, made ahead of its trials."""
LOOKAHEAD_FACTOR = 2
LOOKAHEAD_MIN = 8
"""Trials whose images are prepared ahead of the running ones: at most max(LOOKAHEAD_MIN, factor × slots)."""
SUMMARY_INTERVAL_SEC = 1.0
"""`results.json` is rewritten at most this often while running (and always at the end)."""


@dataclass
class JobResult:
    """What `evaluate()` returns: the summary and the final try of every trial."""

    job_dir: Path
    summary: JobSummary
    trials: list[TrialResult]


class Job:
    """`prepare()` takes the job's lock and reads everything; `run()` runs and releases it. A caller that
    prepares and then does not run calls `close()`."""

    def __init__(self, config: JobConfig, *, on_progress: ProgressCallback | None = None,
                 retry_errors: Collection[str] | None = None, agent: Callable[[], Agent] | None = None,
                 model_routes: Any = None) -> None:
        """`agent` and `model_routes` are for embedders (`evalkit.training`): a maker of agents instead of the
        `agent:` block's, and an in-process stand-in for the gateway (its `open_trial`/`close_trial`/
        `release_route`) instead of one built from `llm_api`."""
        self.config = config
        self._agent = agent
        self._model_routes = model_routes
        self.retry_errors = retry_errors
        """`--retry-errors`: rerun trials whose final try ended in an error of these types or kinds (empty:
        any error), keeping every earlier try; None: finished trials stay finished."""
        self.job_dir = config.job_dir
        self.on_progress = on_progress
        self.job_id = ""
        self.trials: list[Trial] = []
        self.task_errors: dict[str, str] = {}
        """Tasks that cannot run at all, by name: `Type: message`. Known after `prepare()`."""
        self.task_warnings: dict[str, list[str]] = {}
        """Tasks that run with something ignored, by name. Known after `prepare()`."""
        self.started_at = utcnow()
        self.progress = Progress(total=0)
        self._lock = JobLock(self.job_dir, config.job_name)
        self._prepared = False
        self._write_lock = asyncio.Lock()
        self._last_write = 0.0
        self._failure: str | None = None
        self._salt = ""
        """Per job, stored in job.json: secrets in the identity are hashed with it."""
        self._concurrency: AdaptiveConcurrency | None = None
        self._images: ImageSummary | None = None
        self._window_releases: dict[str, Callable[[], None]] = {}
        """Per trial whose image is prepared ahead: gives its look-ahead place to the next trial."""
        self._stoppers: list[Callable[[], object]] = []
        self._make_agent: Callable[[], Agent] | None = None
        """One agent per trial, from the `agent:` block checked once in `prepare()`."""
        self._node_stats: Callable[[], dict[str, NodeStats]] | None = None
        """A cluster backend's per-node view (`environment.backend: ray`), for `results.json` and progress."""

    # ----------------------------------------------------------------------------------------- preparation

    async def prepare(self) -> None:
        """Take the lock, check the job directory against the config, resolve and load tasks, collect
        finished tries. No containers yet."""
        await asyncio.to_thread(self._lock.acquire)
        try:
            await self._prepare()
        except OSError as exc:
            await asyncio.to_thread(self._lock.release_and_remove_empty)
            raise InfrastructureError(f"cannot use the job directory {self.job_dir}: {exc}") from None
        except BaseException:
            await uncancellable(asyncio.to_thread(self._lock.release_and_remove_empty))
            raise
        self.progress = Progress(total=len(self.trials))
        for trial in self.trials:
            if trial.final is not None:
                self.progress.count(trial.final)
        self._prepared = True

    async def _prepare(self) -> None:
        stored = await asyncio.to_thread(self._read_job_file)
        # A bad agent name or an unbuilt runtime fails here, once, not per trial.
        self._make_agent = self._agent or await asyncio.to_thread(
            agent_factory, self.config.agent, has_model=self.config.llm_api is not None, base_dir=self.config.base_dir
        )
        refs = await resolve_tasks(self.config.dataset, base_dir=self.config.base_dir, job_dir=self.job_dir)
        if not refs:
            raise ConfigError(f"{self.config.source}: dataset: the selection matches no task")
        loaded = await asyncio.to_thread(self._load_tasks, refs)
        self.trials = [
            Trial(ref=ref, attempt=attempt, task=task, problem=problem)
            for ref, (task, problem) in zip(refs, loaded)
            for attempt in range(self.config.n_attempts)
        ]
        self.task_errors = {
            ref.name: f"{type(problem).__name__}: {problem}" for ref, (_, problem) in zip(refs, loaded) if problem
        }
        self.task_warnings = {ref.name: list(task.warnings) for ref, (task, _) in zip(refs, loaded) if task and task.warnings}
        await asyncio.to_thread(self._load_tries)
        if self.retry_errors is not None:
            self._reopen_errored(self.retry_errors)
        await asyncio.to_thread(self._write_job_files, stored)

    def _reopen_errored(self, wanted: Collection[str]) -> None:
        for trial in self.trials:
            error = trial.final and trial.final.error
            if error and (not wanted or error.type in wanted or error.kind in wanted):
                trial.reopened_at = len(trial.tries)

    def close(self) -> None:
        """Release the job's lock (idempotent)."""
        self._lock.release()

    def _read_job_file(self) -> dict[str, Any] | None:
        """The stored `job.json`, checked against this config; None for a new job."""
        path = self.job_dir / JOB_FILE
        if not path.exists():
            self.job_id, self._salt = str(uuid.uuid4()), secrets.token_hex(16)
            return None
        try:
            stored = orjson.loads(path.read_bytes())
            self.job_id, self._salt = stored["job_id"], stored["identity_salt"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path} is unreadable or from an older evalkit ({type(exc).__name__}); "
                "start a new job (another job_name) or move that directory away"
            ) from None
        current = orjson.loads(orjson.dumps(self.config.identity(self._salt)))
        changes = sorted(_diff(stored.get("identity", {}), current))
        if changes:
            raise ConfigError(
                f"job {self.config.job_name!r} already exists in {self.job_dir} with a different config; "
                f"changed: {', '.join(changes)}. Use another job_name, or restore the config to resume."
            )
        return stored

    def _load_tasks(self, refs: list[TaskRef]) -> list[tuple[Task | None, TrialError | None]]:
        """Each task on its own: one that cannot load becomes its trials' error, and the rest still run."""
        pass_env = self.config.environment.pass_env
        loaded: list[tuple[Task | None, TrialError | None]] = []
        for ref in refs:
            try:
                loaded.append((load_task(ref.path, ref.name, pass_env=pass_env), None))
            except TrialError as exc:
                loaded.append((None, exc))
            except (OSError, UnicodeDecodeError) as exc:
                loaded.append((None, TaskConfigError(f"task {ref.name!r} ({ref.path}): cannot read it: {exc}")))
        return loaded

    def _write_job_files(self, stored: dict[str, Any] | None) -> None:
        if stored is None:
            write_json_atomic(
                self.job_dir / JOB_FILE,
                {"schema_version": JOB_SCHEMA_VERSION, "job_id": self.job_id, "job_name": self.config.job_name,
                 "created_at": self.started_at.isoformat(), "identity_salt": self._salt,
                 "identity": self.config.identity(self._salt)},
            )
        snapshot = yaml.safe_dump(self.config.redacted(), sort_keys=False)
        (self.job_dir / "config.yaml").write_text(f"# snapshot of {self.config.source} at launch (secrets redacted)\n{snapshot}")

    def _load_tries(self) -> None:
        by_name = {trial.name: trial for trial in self.trials}
        for try_dir in sorted(self.job_dir.iterdir()):
            match = TRY_DIR_NAME.match(try_dir.name)
            trial = by_name.get(match.group("trial")) if match else None
            if trial is None or not try_dir.is_dir():
                continue
            trial.next_try = max(trial.next_try, int(match.group("try") or 0) + 1)
            result_path = try_dir / "result.json"
            if result_path.exists():
                try:
                    trial.tries.append(TrialResult.model_validate_json(result_path.read_bytes()))
                except ValidationError as exc:
                    raise ConfigError(
                        f"{result_path} is not a result this evalkit can read ({exc.error_count()} problems, first: "
                        f"{exc.errors()[0]['msg']}); move that try directory away to run it again"
                    ) from None
        for trial in self.trials:
            trial.tries.sort(key=lambda r: r.try_index)

    @property
    def model_server_logs(self) -> Path:
        """Where the logs of model servers the job starts itself (`llm_api.serve`) go."""
        return self.config.artifacts_dir / "litellm" / self.config.job_name / "model-server"

    @property
    def identity(self) -> JobIdentity:
        return JobIdentity(job_id=self.job_id, job_name=self.config.job_name, job_dir=self.job_dir)

    # ----------------------------------------------------------------------------------------- running

    async def run(self) -> JobResult:
        """Run every unfinished trial, then release the lock. Cancellation stops launching, removes running
        containers, and leaves `results.json` marked `interrupted` before re-raising. A failure outside any
        try (a result that cannot be written, a progress callback that raised) stops the job with
        JobFailedError and `results.json` marked `failed`. A job whose backend never answered is left as it
        was (InfrastructureError)."""
        try:
            if not self._prepared:
                await self.prepare()
            return await self._run()
        finally:
            self.close()

    async def _run(self) -> JobResult:
        pending = [t for t in self.trials if t.final is None]
        status: str | None = None  # None: nothing started, results.json stays as it was
        try:
            async with AsyncExitStack() as stack:
                backend = None
                if any(t.task is not None for t in pending):
                    backend = await connect_backend(self.config.environment, self.identity)
                    stack.push_async_callback(backend.close)
                    self._check_networks(pending, backend)
                    self._node_stats = getattr(backend, "node_stats", None)
                    await backend.sweep()
                else:
                    await self._sweep_quietly()
                gateway = self._model_routes
                if gateway is None and self.config.llm_api is not None and backend is not None:
                    llm_api = await stack.enter_async_context(  # Mode B: start the model servers it names
                        managed_llm_api(self.config.llm_api, log_dir=self.model_server_logs, base_dir=self.config.base_dir)
                    )
                    gateway = await stack.enter_async_context(self._gateway(backend, llm_api, pending))
                status = "interrupted"
                await self._write_summary("running")
                try:
                    async with asyncio.TaskGroup() as group:
                        slots = self._slots(group, backend)
                        ready = self._prepare_ahead(group, backend, pending, slots.limit)
                        if backend is not None:
                            self._images = backend.image_summary
                        async with asyncio.TaskGroup() as trials:
                            for trial in pending:
                                trials.create_task(self._run_trial(trial, backend, gateway, slots, ready.get(trial.name)))
                        for stop in self._stoppers:
                            stop()
                except BaseExceptionGroup as failures:
                    raise _first_evalkit_error(failures) from None
            status = "finished"
        except EvalkitError as exc:
            if status is not None:  # it started: say why it stopped
                status, self._failure = "failed", str(exc)
            raise
        finally:
            if status is not None:
                await uncancellable(self._write_final(status))
        return JobResult(job_dir=self.job_dir, summary=self.summary(status), trials=[t.final for t in self.trials if t.final])

    def _gateway(self, backend: EnvironmentBackend, llm_api: LLMApiConfig, pending: list[Trial]) -> Any:
        """The job's model route: its gateway, or on a cluster whose containers run the agent, a gateway on
        each node (the route is a socket mounted from the container's machine)."""
        on_nodes = getattr(backend, "model_routes", None)
        assert self._make_agent is not None
        if on_nodes is not None and uses_route(self._make_agent()):
            tasks = {t.name: t.task for t in pending if t.task is not None}
            return on_nodes(llm_api, job_name=self.config.job_name, artifacts_dir=self.config.artifacts_dir, tasks=tasks)
        return Gateway.serve(llm_api, job_name=self.config.job_name, artifacts_dir=self.config.artifacts_dir)

    async def _sweep_quietly(self) -> None:
        """Nothing to run: still remove what an earlier run left (an engine restart, a failed removal), if
        the engine answers; a resume of a finished job never needs it to."""
        try:
            backend = await connect_backend(self.config.environment, self.identity)
        except EvalkitError:
            return
        try:
            await backend.sweep()
        except Exception as exc:  # best effort: the job itself is done
            log.warning("could not remove leftover containers: %s", exc)
        finally:
            await backend.close()

    def _slots(self, group: asyncio.TaskGroup, backend: EnvironmentBackend | None) -> Limiter:
        """The tries-in-flight limit: fixed, or steered by health (`n_concurrent: auto`)."""
        if self.config.n_concurrent != "auto":
            return Limiter(self.config.n_concurrent)
        ceiling = self.config.n_concurrent_max
        limiter = Limiter(min(ceiling, 2 * (os.cpu_count() or 1)))
        if backend is not None:
            self._concurrency = AdaptiveConcurrency(limiter, backend.health, ceiling=ceiling)
            controller = group.create_task(self._concurrency.run())
            self._stoppers.append(controller.cancel)
        return limiter

    def _prepare_ahead(self, group: asyncio.TaskGroup, backend: EnvironmentBackend | None, pending: list[Trial],
                       n_slots: int) -> dict[str, asyncio.Event]:
        """Images are made ready ahead of the trials, in trial order, at most LOOKAHEAD_FACTOR × the slots
        ahead of the tries running: a trial takes a slot only once its image is ready, so agents never
        wait in a slot for a build. The backend holds each image until its trials are final."""
        runnable = [t for t in pending if t.task is not None]
        if backend is None or not runnable:
            return {}
        window = asyncio.Semaphore(max(LOOKAHEAD_MIN, LOOKAHEAD_FACTOR * n_slots))
        ready = {t.name: asyncio.Event() for t in runnable}

        async def prepare(trial: Trial) -> None:
            assert trial.task is not None and backend is not None
            try:
                await backend.available()
                await backend.prepare(trial.task, timeout_sec=phase_timeouts(trial.task, self.config.timeouts).build,
                                      log_path=self.job_dir / IMAGE_LOGS / f"{trial.ref.name}.log")
            except TrialError as exc:  # the trial's try meets the same error, typed, in its environment phase
                log.info("preparing the image of %s failed: %s", trial.name, exc)
            finally:
                ready[trial.name].set()

        async def feed() -> None:
            async with asyncio.TaskGroup() as preparing:
                for trial in runnable:
                    await window.acquire()
                    self._window_releases[trial.name] = window.release
                    preparing.create_task(prepare(trial))

        group.create_task(feed())
        return ready

    async def _run_trial(self, trial: Trial, backend: EnvironmentBackend | None, gateway: Gateway | None,
                         slots: Limiter, ready: asyncio.Event | None) -> None:
        if trial.problem is not None:
            spec = self._try_spec(trial)
            await self._record(trial, await record_without_container(spec, trial.ref.name, self.config.agent.name, trial.problem))
            return
        assert trial.task is not None and backend is not None and self._make_agent is not None
        task = trial.task
        agent = self._make_agent()
        timeouts = phase_timeouts(task, self.config.timeouts)
        try:
            if ready is not None:
                await ready.wait()
            while trial.final is None:
                if trial.tries and trial.tries[-1].will_retry and not trial.tries[-1].outage:
                    await asyncio.sleep(self._backoff(trial))
                await backend.available()  # an engine that went away pauses the queue
                async with slots:
                    if (release_window := self._window_releases.pop(trial.name, None)) is not None:
                        release_window()
                    spec = self._try_spec(trial)
                    env_spec = self._environment_spec(task, spec, timeouts, backend)

                    def make_env(mounts: tuple[Mount, ...], env_spec: EnvironmentSpec = env_spec) -> Environment:
                        return backend.environment(task, replace(env_spec, mounts=env_spec.mounts + mounts))

                    outages = backend.outages
                    result = await run_try(spec, make_env, agent, timeouts, gateway,
                                           retry_if=lambda r: self._retry_decision(trial, r, backend, outages),
                                           verifier_environments=_verifier_environments(backend, env_spec))
                await self._record(trial, result)
        finally:
            if (release_window := self._window_releases.pop(trial.name, None)) is not None:
                release_window()
            if ready is not None:
                await uncancellable(backend.release(trial.task))

    def _check_networks(self, pending: list[Trial], backend: EnvironmentBackend) -> None:
        """Before the first trial: every task that needs the internet must have a network to get."""
        configured = self.config.environment.network_mode
        for trial in pending:
            if trial.task is not None and task_network(trial.task, configured, backend.internet_network) is None:
                raise ConfigError(
                    f"{self.config.source}: environment.network_mode: task {trial.ref.name!r} needs the internet "
                    '(network_mode = "public" in its task.toml) and this engine has no bridge network to give it; '
                    "set environment.network_mode: host (the container then shares this machine's network, its "
                    "loopback services included) or none (the task runs offline)"
                )

    def _try_spec(self, trial: Trial) -> TrySpec:
        name = try_dir_name(trial.name, trial.next_try)
        trial.next_try += 1
        environment = self.config.environment
        return TrySpec(
            job_name=self.config.job_name,
            task=trial.task,
            task_source=_source(trial.ref),
            attempt=trial.attempt,
            try_index=trial.next_try - 1,
            try_dir=self.job_dir / name,
            download_max_bytes=environment.download_max_mb * 1024 * 1024,
            download_max_files=environment.download_max_files,
        )

    def _environment_spec(self, task: Task, spec: TrySpec, timeouts: PhaseTimeouts,
                          backend: EnvironmentBackend) -> EnvironmentSpec:
        environment, task_env = self.config.environment, task.config.environment
        mounts, env = (), {}
        if environment.ca_bundle:
            mounts = (Mount(self.config.resolve_path(environment.ca_bundle), _CA_PATH),)
            env = dict.fromkeys(_CA_ENV, _CA_PATH)
        return EnvironmentSpec(
            name=spec.try_name,
            network_mode=task_network(task, environment.network_mode, backend.internet_network) or "none",
            resources=Resources(cpus=task_env.cpus, memory_mb=task_env.memory_mb, storage_mb=task_env.storage_mb,
                                pids_limit=environment.pids_limit),
            mounts=mounts,
            env=env,
            build_timeout_sec=timeouts.build,
            start_timeout_sec=timeouts.start,
            build_log=spec.try_dir / "environment" / "build.log",
            keep=environment.keep_containers,
        )

    async def _record(self, trial: Trial, result: TrialResult) -> None:
        trial.tries.append(result)
        self.progress.count(result)
        if time.monotonic() - self._last_write >= SUMMARY_INTERVAL_SEC:
            await self._write_summary("running")
        if self.on_progress is not None:
            try:
                self.on_progress(result, self.progress)
            except Exception as exc:
                raise JobFailedError(f"the progress callback raised {type(exc).__name__}: {exc}") from exc

    async def _retry_decision(self, trial: Trial, result: TrialResult, backend: EnvironmentBackend, outages: int) -> bool:
        """Whether another try follows this one. A try that failed while the engine went away (stopped,
        restarted) is the machine's failure whatever it looked like from inside (a killed agent, a lost
        container): it is recorded as DockerUnavailableError and run again once the engine is back, without
        using up the trial's retries."""
        if result.error is not None:
            if backend.outages != outages or not await backend.answers():
                if not says_machine_went_away(result.error.type):
                    result.error = result.error.model_copy(update={
                        "type": DockerUnavailableError.__name__, "kind": "infrastructure",
                        "message": f"the Docker engine went away during this try (seen as {result.error.type}: {result.error.message})",
                    })
                result.outage = True
                return True
        retry = self.config.retry
        return result.error is not None and trial.retries < retry.max_retries and retry.should_retry(result.error)

    def _backoff(self, trial: Trial) -> float:
        return min(self.config.retry.max_backoff_sec, self.config.retry.backoff_sec * 2 ** (trial.retries - 1))

    # ----------------------------------------------------------------------------------------- results

    def node_stats(self) -> dict[str, NodeStats] | None:
        """Per node of a cluster backend: environments in flight and tries placed (None on one engine)."""
        return self._node_stats() if self._node_stats is not None else None

    def summary(self, status: str | None, *, metrics: bool = True) -> JobSummary:
        """The job so far; `metrics=False` leaves `metrics` for the caller to fill (off the event loop)."""
        finals = [(t, t.final) for t in self.trials if t.final is not None]
        rewards_by_task: dict[str, list[float | None]] = {t.ref.name: [] for t in self.trials}
        errors_by_task: dict[str, list[str]] = {t.ref.name: [] for t in self.trials}
        errors: dict[str, int] = {}
        durations: dict[str, list[float]] = {}
        for trial, result in finals:
            rewards_by_task[trial.ref.name].append(result.reward)
            if result.error:
                errors[result.error.type] = errors.get(result.error.type, 0) + 1
                errors_by_task[trial.ref.name].append(result.error.type)
        for trial in self.trials:
            for result in trial.tries:
                for name, timing in result.phases.items():
                    if timing.seconds is not None:
                        durations.setdefault(name, []).append(timing.seconds)
        usages = [r.agent_outcome.usage for t in self.trials for r in t.tries if r.agent_outcome.usage]
        rewards = [r.reward or 0.0 for _, r in finals]
        n = len(finals)
        return JobSummary(
            job_name=self.config.job_name,
            job_id=self.job_id,
            status=status or "interrupted",
            error=self._failure,
            started_at=self.started_at,
            updated_at=utcnow(),
            n_trials=len(self.trials),
            n_finished=n,
            n_errored=sum(1 for _, r in finals if r.error),
            n_tries=sum(len(t.tries) for t in self.trials),
            mean_reward=sum(rewards) / n if n else None,
            pass_rate=sum(1 for _, r in finals if passed(r.reward)) / n if n else None,
            pass_at_k={
                f"pass@{k}": score
                for k in range(1, self.config.n_attempts + 1)
                if (score := mean_pass_at_k(rewards_by_task.values(), k)) is not None
            },
            errors=errors,
            phases={name: phase_stats(values) for name, values in durations.items()},
            usage=sum_usage(usages) if usages else None,
            task_errors=self.task_errors,
            task_warnings=self.task_warnings,
            concurrency=self._concurrency.changes if self._concurrency else [],
            images=self._images,
            tasks={
                name: TaskSummary(
                    rewards=values,
                    mean_reward=sum(v or 0.0 for v in values) / len(values) if values else 0.0,
                    n_errors=len(errors_by_task[name]),
                    errors=errors_by_task[name],
                )
                for name, values in rewards_by_task.items()
            },
            trials={t.name: t.final.trial_name for t, _ in finals},
            metrics=self.metrics(self.metric_records()) if metrics else None,
            nodes=self.node_stats(),
        )

    def metric_records(self) -> list[dict[str, Any]]:
        """A snapshot of every trial for metrics; one without a final result (not yet run, or stopped) is
        `cancelled`: never scored as a failure, it lowers coverage."""
        return [
            {"task": t.ref.name, "attempt": t.attempt, "rewards": t.final.rewards,
             "error_kind": t.final.error.kind if t.final.error else None} if t.final is not None
            else {"task": t.ref.name, "attempt": t.attempt, "error_kind": "cancelled"}
            for t in self.trials
        ]

    def metrics(self, records: list[dict[str, Any]]) -> MetricsReport:
        """The config's metrics over a snapshot (O(trials): safe to compute in a worker thread)."""
        config = self.config
        metadata = {t.ref.name: t.task.config.metadata for t in self.trials if t.task is not None}
        return compute_metrics(records, metrics=config.metrics, task_metadata=metadata,
                               breakdown_keys=config.breakdown_keys, error_policy=config.error_policy,
                               min_coverage=config.min_coverage)

    async def _write_summary(self, status: str) -> None:
        self._last_write = time.monotonic()
        summary, records = self.summary(status, metrics=False), self.metric_records()

        def write() -> None:  # metrics are O(trials) of CPU: computed in the thread, not on the event loop
            summary.metrics = self.metrics(records)
            write_json_atomic(self.job_dir / "results.json", summary)

        async with self._write_lock:
            # Uncancellable: a write still running in its thread must never land after the final one.
            try:
                await uncancellable(asyncio.to_thread(write))
            except OSError as exc:
                raise JobFailedError(f"cannot write {self.job_dir / 'results.json'}: {exc.strerror or exc}") from None

    async def _write_final(self, status: str) -> None:
        """The last `results.json`. When the disk is full, rewrite the old file's blocks in place rather than
        leave it saying `running`."""
        try:
            await self._write_summary(status)
        except JobFailedError:
            if not await asyncio.to_thread(_overwrite_quietly, self.job_dir / "results.json", self.summary(status)):
                if status != "failed":
                    raise
                log.error("results.json could not be updated to say the job failed")


def _overwrite_quietly(path: Path, summary: JobSummary) -> bool:
    try:
        return overwrite_json_in_place(path, summary)
    except OSError:
        return False


def _verifier_environments(backend: EnvironmentBackend, agent_spec: EnvironmentSpec) -> Callable[[Task], Environment]:
    """A try's separate verifier environments: same envelope and labels as the agent's, role `verifier`, and
    of the agent's mounts only the CA bundle (never an agent runtime or a model route)."""
    build_log = agent_spec.build_log and agent_spec.build_log.with_name("verifier-build.log")
    mounts = tuple(m for m in agent_spec.mounts if m.target == _CA_PATH)
    return lambda view: backend.environment(view, replace(agent_spec, role="verifier", mounts=mounts, build_log=build_log))


def _first_evalkit_error(group: BaseExceptionGroup) -> BaseException:
    """A failure that stopped the task group, as one error a person can read (the first EvalkitError)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_evalkit_error(exc)
        if isinstance(exc, EvalkitError):
            return exc
    return group


def _source(ref: TaskRef) -> dict[str, Any]:
    if ref.git_url:
        return {"git_url": ref.git_url, "git_commit": ref.git_commit, "path": ref.source_path}
    return {"path": str(ref.path)}


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values; secrets are named, never shown."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in old.keys() | new.keys():
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    if old == new:
        return []
    if any(isinstance(v, str) and v.startswith(SECRET_MARK) for v in (old, new)):
        return [f"{prefix} (a secret; its value is not shown)"]
    return [f"{prefix} ({old!r} → {new!r})"]
