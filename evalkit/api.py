"""The embeddable API: `await evaluate(config)` inside any running event loop (a training service's, a
notebook's). It installs no signal handlers and changes no global state; cancelling the awaiting task
stops the job cleanly (containers removed, `results.json` marked interrupted). Tasks that cannot run are
logged as warnings (logger `evalkit`) and recorded as their trials' errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from evalkit.config import JobConfig, config_from_dict, load_config
from evalkit.job import Job, JobResult, ProgressCallback

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


async def evaluate(
    config: JobConfig | dict[str, Any] | str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
    retry_errors: list[str] | None = None,
) -> JobResult:
    """Run (or resume) a job to the end and return its summary and trial results. `retry_errors` runs again
    the trials whose final try ended in an error of those types or kinds (`[]`: any), keeping every try."""
    job = Job(as_config(config, overrides), on_progress=on_progress, retry_errors=retry_errors)
    try:
        await job.prepare()
        for name, problem in job.task_errors.items():
            log.warning("task %s cannot run: %s", name, problem)
        for name, warnings in job.task_warnings.items():  # once per job; every try's result names them too
            for warning in warnings:
                log.warning("task %s runs with %s", name, warning)
        return await job.run()
    finally:
        job.close()
