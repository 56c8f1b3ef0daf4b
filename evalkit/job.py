"""A job: tasks × attempts as trials, a bounded pool, retries, resume, and a `results.json` kept current.

Resume needs no journal of its own: every finished try has an atomically written `result.json`, so the
job directory *is* the journal. A try directory without one was interrupted and is run again (as a new try,
keeping the evidence of the interrupted one).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from evalkit.adapters.harbor import TaskRef, resolve_tasks
from evalkit.agents import create_agent
from evalkit.cleanup import uncancellable
from evalkit.config import JobConfig
from evalkit.environments import DockerEngine, DockerEnvironment
from evalkit.errors import ConfigError
from evalkit.gateway import Gateway
from evalkit.metrics import mean_pass_at_k, passed, phase_stats
from evalkit.results import JobSummary, TaskSummary, TrialResult, sum_usage, utcnow, write_json_atomic
from evalkit.tasks import Task, load_task
from evalkit.trial import TrialSpec, phase_timeouts, run_trial

JOB_FILE = "job.json"
_TRY_SUFFIX = re.compile(r"^(?P<unit>.+__\d+)(?:-try(?P<try>\d+))?$")


@dataclass
class Unit:
    """One (task, attempt): the trial as counted in results, with all of its tries."""

    task: Task
    ref: TaskRef
    attempt: int
    tries: list[TrialResult] = field(default_factory=list)
    next_try: int = 0

    @property
    def name(self) -> str:
        return f"{self.task.name}__{self.attempt}"

    @property
    def retries(self) -> int:
        """Tries so far that scheduled another."""
        return sum(1 for r in self.tries if r.will_retry)

    @property
    def final(self) -> TrialResult | None:
        """The last finished try, if no further try is due."""
        if self.tries and not self.tries[-1].will_retry:
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
SUMMARY_INTERVAL_SEC = 1.0
"""`results.json` is rewritten at most this often while running (and always at the end)."""


@dataclass
class JobResult:
    """What `evaluate()` returns: the summary and the final try of every trial."""

    job_dir: Path
    summary: JobSummary
    trials: list[TrialResult]


class Job:
    def __init__(self, config: JobConfig, *, on_progress: ProgressCallback | None = None) -> None:
        self.config = config
        self.job_dir = config.job_dir
        self.on_progress = on_progress
        self.units: list[Unit] = []
        self.started_at = utcnow()
        self.progress = Progress(total=0)
        self._write_lock = asyncio.Lock()
        self._last_write = 0.0
        ca_bundle = config.environment.ca_bundle
        self._ca_bundle = config.resolve_path(ca_bundle) if ca_bundle else None

    # ----------------------------------------------------------------------------------------- preparation

    async def prepare(self) -> None:
        """Resolve and load tasks, check the job directory, collect finished tries. No containers yet."""
        self._check_identity()
        create_agent(self.config.agent.name, self.config.agent.kwargs)  # a bad agent name fails here, not per trial
        refs = await resolve_tasks(self.config.dataset, base_dir=self.config.base_dir, job_dir=self.job_dir)
        if not refs:
            raise ConfigError(f"{self.config.source}: dataset: the selection matches no task")
        tasks = await asyncio.to_thread(lambda: [load_task(ref.path, ref.name) for ref in refs])
        self.units = [
            Unit(task=task, ref=ref, attempt=attempt)
            for task, ref in zip(tasks, refs)
            for attempt in range(self.config.n_attempts)
        ]
        await asyncio.to_thread(self._load_tries)
        await asyncio.to_thread(self._write_job_files)
        self.progress = Progress(total=len(self.units))
        for unit in self.units:
            if unit.final is not None:
                self.progress.count(unit.final)

    def _check_identity(self) -> None:
        path = self.job_dir / JOB_FILE
        if not path.exists():
            return
        previous = orjson.loads(path.read_bytes()).get("identity", {})
        current = orjson.loads(orjson.dumps(self.config.identity()))
        changes = sorted(_diff(previous, current))
        if changes:
            raise ConfigError(
                f"job {self.config.job_name!r} already exists in {self.job_dir} with a different config; "
                f"changed: {', '.join(changes)}. Use another job_name, or restore the config to resume."
            )

    def _write_job_files(self) -> None:
        self.job_dir.mkdir(parents=True, exist_ok=True)
        if not (self.job_dir / JOB_FILE).exists():
            write_json_atomic(
                self.job_dir / JOB_FILE,
                {"schema_version": 1, "job_name": self.config.job_name, "created_at": self.started_at.isoformat(),
                 "identity": self.config.identity()},
            )
        snapshot = yaml.safe_dump(self.config.redacted(), sort_keys=False)
        (self.job_dir / "config.yaml").write_text(f"# snapshot of {self.config.source} at launch (secrets redacted)\n{snapshot}")

    def _load_tries(self) -> None:
        by_name = {unit.name: unit for unit in self.units}
        if not self.job_dir.is_dir():
            return
        for trial_dir in sorted(self.job_dir.iterdir()):
            match = _TRY_SUFFIX.match(trial_dir.name)
            unit = by_name.get(match.group("unit")) if match else None
            if unit is None or not trial_dir.is_dir():
                continue
            try_index = int(match.group("try") or 0)
            unit.next_try = max(unit.next_try, try_index + 1)
            result_path = trial_dir / "result.json"
            if result_path.exists():
                unit.tries.append(TrialResult.model_validate_json(result_path.read_bytes()))
        for unit in self.units:
            unit.tries.sort(key=lambda r: r.try_index)

    # ----------------------------------------------------------------------------------------- running

    async def run(self) -> JobResult:
        """Run every unfinished trial. Cancellation stops launching, removes running containers, and
        leaves `results.json` marked `interrupted` before re-raising."""
        if not self.units:
            await self.prepare()
        pending = [u for u in self.units if u.final is None]
        status = "interrupted"
        try:
            if pending:
                async with AsyncExitStack() as stack:
                    engine = await DockerEngine.connect(
                        docker_host=self.config.environment.docker_host,
                        job_name=self.config.job_name,
                        n_concurrent_builds=self.config.environment.n_concurrent_builds,
                    )
                    stack.push_async_callback(engine.close)
                    await engine.remove_containers(self.config.job_name)
                    gateway = None
                    if self.config.llm_api is not None:
                        gateway = await stack.enter_async_context(
                            Gateway.serve(self.config.llm_api, job_name=self.config.job_name, artifacts_dir=self.config.artifacts_dir)
                        )
                    await self._write_summary("running")
                    slots = asyncio.Semaphore(self.config.n_concurrent)
                    async with asyncio.TaskGroup() as group:
                        for unit in pending:
                            group.create_task(self._run_unit(unit, engine, gateway, slots))
            status = "finished"
        finally:
            if self.units:
                await uncancellable(self._write_summary(status))
        return JobResult(job_dir=self.job_dir, summary=self.summary(status), trials=[u.final for u in self.units if u.final])

    async def _run_unit(self, unit: Unit, engine: DockerEngine, gateway: Any, slots: asyncio.Semaphore) -> None:
        agent = create_agent(self.config.agent.name, self.config.agent.kwargs)
        timeouts = phase_timeouts(unit.task, self.config.timeouts)
        while unit.final is None:
            if unit.tries and unit.tries[-1].will_retry:
                await asyncio.sleep(self._backoff(unit))
            async with slots:
                name = unit.name if unit.next_try == 0 else f"{unit.name}-try{unit.next_try}"
                spec = TrialSpec(
                    job_name=self.config.job_name,
                    task=unit.task,
                    task_source=_source(unit.ref),
                    attempt=unit.attempt,
                    try_index=unit.next_try,
                    trial_dir=self.job_dir / name,
                )
                unit.next_try += 1
                spec.trial_dir.mkdir(parents=True, exist_ok=True)
                env = DockerEnvironment(
                    engine,
                    unit.task,
                    trial_name=name,
                    trial_dir=spec.trial_dir,
                    network_mode=self.config.environment.network_mode,
                    build_timeout_sec=timeouts.build,
                    start_timeout_sec=timeouts.start,
                    ca_bundle=self._ca_bundle,
                    keep=self.config.environment.keep_containers,
                )
                result = await run_trial(spec, env, agent, timeouts, gateway, retry_if=lambda r: self._should_retry(unit, r))
            unit.tries.append(result)
            self.progress.count(result)
            if time.monotonic() - self._last_write >= SUMMARY_INTERVAL_SEC:
                await self._write_summary("running")
            if self.on_progress is not None:
                self.on_progress(result, self.progress)

    def _should_retry(self, unit: Unit, result: TrialResult) -> bool:
        retry = self.config.retry
        return bool(result.error) and unit.retries < retry.max_retries and retry.should_retry(result.error.type)

    def _backoff(self, unit: Unit) -> float:
        return min(self.config.retry.max_backoff_sec, self.config.retry.backoff_sec * 2 ** (unit.retries - 1))

    # ----------------------------------------------------------------------------------------- results

    def summary(self, status: str) -> JobSummary:
        finals = [(u, u.final) for u in self.units if u.final is not None]
        rewards_by_task: dict[str, list[float | None]] = {}
        errors_by_task: dict[str, list[str]] = {}
        for unit in self.units:
            rewards_by_task.setdefault(unit.task.name, [])
            errors_by_task.setdefault(unit.task.name, [])
        errors: dict[str, int] = {}
        durations: dict[str, list[float]] = {}
        for unit, result in finals:
            rewards_by_task[unit.task.name].append(result.reward)
            if result.error:
                errors[result.error.type] = errors.get(result.error.type, 0) + 1
                errors_by_task[unit.task.name].append(result.error.type)
        for unit in self.units:
            for result in unit.tries:
                for name, timing in result.phases.items():
                    if timing.seconds is not None:
                        durations.setdefault(name, []).append(timing.seconds)
        usages = [r.agent_outcome.usage for u in self.units for r in u.tries if r.agent_outcome.usage]
        rewards = [r.reward or 0.0 for _, r in finals]
        n = len(finals)
        return JobSummary(
            job_name=self.config.job_name,
            status=status,
            started_at=self.started_at,
            updated_at=utcnow(),
            n_trials=len(self.units),
            n_finished=n,
            n_errored=sum(1 for _, r in finals if r.error),
            n_tries=sum(len(u.tries) for u in self.units),
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
            tasks={
                name: TaskSummary(
                    rewards=values,
                    mean_reward=sum(v or 0.0 for v in values) / len(values) if values else 0.0,
                    n_errors=len(errors_by_task[name]),
                    errors=errors_by_task[name],
                )
                for name, values in rewards_by_task.items()
            },
            trials={u.name: u.final.trial_name for u, _ in finals},
        )

    async def _write_summary(self, status: str) -> None:
        self._last_write = time.monotonic()
        summary = self.summary(status)
        async with self._write_lock:
            await asyncio.to_thread(write_json_atomic, self.job_dir / "results.json", summary)


def _source(ref: TaskRef) -> dict[str, Any]:
    if ref.git_url:
        return {"git_url": ref.git_url, "git_commit": ref.git_commit, "path": ref.source_path}
    return {"path": str(ref.path)}


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in old.keys() | new.keys():
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [f"{prefix} ({old!r} → {new!r})"]
