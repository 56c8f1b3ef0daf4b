"""The embeddable API: `await evaluate(config)` and `async for result in evaluate_iter(config)` inside any
running event loop (a training service's, a notebook's). Neither installs signal handlers or touches global
state, so several evaluations can run concurrently in one loop. Cancelling the awaiting task stops the job
cleanly: containers removed, `results.json` marked interrupted, and running the same config again resumes
it. Tasks that cannot run are logged as warnings (logger `evalkit`) and recorded as their trials' errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from evalkit.cleanup import uncancellable
from evalkit.config import JobConfig, config_from_dict, load_config
from evalkit.job import Job, JobResult, Progress, ProgressCallback
from evalkit.results import TrialResult

log = logging.getLogger("evalkit")


def as_config(config: JobConfig | dict[str, Any] | str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    """A JobConfig from a model, a plain dict (paths relative to the working directory) or a YAML file."""
    if isinstance(config, (str, Path)):
        return load_config(config, overrides)
    if isinstance(config, JobConfig):
        if not overrides:
            return config
        return config_from_dict(config.model_dump(), base_dir=config.base_dir, source=config.source, overrides=overrides)
    return config_from_dict(config, overrides=overrides)


async def prepare_job(config: JobConfig, **job_options: Any) -> Job:
    """A prepared `Job` (lock taken, tasks loaded), its unrunnable tasks and warnings logged."""
    job = Job(config, **job_options)
    await job.prepare()
    for name, problem in job.task_errors.items():
        log.warning("task %s cannot run: %s", name, problem)
    for name, warnings in job.task_warnings.items():  # once per job; every try's result names them too
        for warning in warnings:
            log.warning("task %s runs with %s", name, warning)
    return job


async def evaluate(
    config: JobConfig | dict[str, Any] | str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
    retry_errors: list[str] | None = None,
) -> JobResult:
    """Run (or resume) a job to the end and return its summary (with `summary.metrics`) and trial results.
    `retry_errors` runs again the trials whose final try ended in an error of those types or kinds (`[]`: any),
    keeping every try."""
    job = await prepare_job(as_config(config, overrides), on_progress=on_progress, retry_errors=retry_errors)
    try:
        return await job.run()
    finally:
        job.close()


async def evaluate_iter(
    config: JobConfig | dict[str, Any] | str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    retry_errors: list[str] | None = None,
) -> AsyncIterator[TrialResult]:
    """Run (or resume) a job, yielding each trial's final result as it finishes (trials a resumed job had
    already finished come first). A try that schedules a retry is not yielded; its retry's result is.

    Leaving the loop early (`break`, an exception, cancellation) stops the job like cancelling `evaluate`;
    use `contextlib.aclosing(evaluate_iter(...))` so that happens at once rather than when the generator is
    garbage-collected."""
    finished: asyncio.Queue[TrialResult | None] = asyncio.Queue()

    def on_progress(result: TrialResult, _: Progress) -> None:
        if not result.will_retry:
            finished.put_nowait(result)

    job = await prepare_job(as_config(config, overrides), on_progress=on_progress, retry_errors=retry_errors)
    try:
        for trial in job.trials:
            if trial.final is not None:
                yield trial.final
    except BaseException:
        job.close()
        raise

    async def run() -> JobResult:
        try:
            return await job.run()  # releases the lock whatever happens
        finally:
            finished.put_nowait(None)

    runner = asyncio.create_task(run(), name=f"evalkit job {job.config.job_name}")
    try:
        while (result := await finished.get()) is not None:
            yield result
        await runner  # a job that failed outside any try raises here
    finally:
        if not runner.done():
            runner.cancel()
            try:
                await uncancellable(runner)
            except asyncio.CancelledError:
                pass
