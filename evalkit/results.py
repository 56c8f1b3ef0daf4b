"""What a job leaves on disk: per-trial `result.json` and the job's `results.json`, versioned schemas.

These files are the API between the engine, analysis, the dashboard and users' scripts. They are always
written atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

RESULT_SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so readers see either the old file or the new one, never a mix."""
    payload = orjson.dumps(
        data.model_dump(mode="json") if isinstance(data, BaseModel) else data,
        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ErrorInfo(BaseModel):
    type: str
    """Class name of the error (`AgentTimeoutError`, …); what retries and `results.json` count by."""
    message: str
    traceback: str | None = None


class PhaseTiming(BaseModel):
    started_at: datetime
    finished_at: datetime | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.finished_at is None else (self.finished_at - self.started_at).total_seconds()


class ModelUsage(BaseModel):
    """Model calls of one trial through the job's gateway, summed for its result."""

    n_calls: int = 0
    n_errors: int = 0
    """Calls that ended with an HTTP error status or broke off (timeout, disconnect)."""
    input_tokens: int = 0
    """Prompt tokens, cache reads included."""
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float | None = None
    """Sum over calls whose deployment has a known price; None when none had one."""
    trajectory_error: str | None = None
    """What went wrong with the trial's `litellm-trajectory.jsonl` (a write error, a deleted file); None if nothing."""


def sum_usage(usages: list[ModelUsage]) -> ModelUsage:
    costs = [u.cost_usd for u in usages if u.cost_usd is not None]
    return ModelUsage(
        n_calls=sum(u.n_calls for u in usages),
        n_errors=sum(u.n_errors for u in usages),
        input_tokens=sum(u.input_tokens for u in usages),
        output_tokens=sum(u.output_tokens for u in usages),
        cache_read_tokens=sum(u.cache_read_tokens for u in usages),
        cost_usd=sum(costs) if costs else None,
    )


class AgentOutcome(BaseModel):
    exit_code: int | None = None
    timed_out: bool = False
    usage: ModelUsage | None = None


class TrialResult(BaseModel):
    """One try of one (task, attempt). Retries are further tries with their own directory and result."""

    schema_version: int = RESULT_SCHEMA_VERSION
    job_name: str
    trial_name: str
    task_name: str
    attempt: int
    try_index: int = 0
    """0 for the first try; n for the n-th retry."""
    agent: str
    task_source: dict[str, Any] = {}
    """Where the task came from (local path, or git url + resolved commit + path)."""
    rewards: dict[str, float] | None = None
    error: ErrorInfo | None = None
    agent_outcome: AgentOutcome = AgentOutcome()
    phases: dict[str, PhaseTiming] = {}
    """environment, agent_setup, agent, verifier — whichever ran."""
    started_at: datetime
    finished_at: datetime | None = None
    will_retry: bool = False
    """True when the job scheduled another try for this (task, attempt) after this one."""

    @property
    def reward(self) -> float | None:
        """The primary reward: `reward` if the verifier wrote that key, else the mean of all keys."""
        if not self.rewards:
            return None
        if "reward" in self.rewards:
            return self.rewards["reward"]
        return sum(self.rewards.values()) / len(self.rewards)


class PhaseStats(BaseModel):
    n: int
    mean_sec: float
    p50_sec: float
    p95_sec: float
    max_sec: float


class TaskSummary(BaseModel):
    rewards: list[float | None]
    """Primary reward of each attempt's final try, in attempt order (None: no reward)."""
    mean_reward: float
    n_errors: int
    errors: list[str]


class JobSummary(BaseModel):
    """`results.json`: refreshed as trials finish, so it is always a consistent picture of the job so far."""

    schema_version: int = RESULT_SCHEMA_VERSION
    job_name: str
    status: str
    """running | finished | interrupted"""
    started_at: datetime
    updated_at: datetime
    n_trials: int
    """tasks × attempts."""
    n_finished: int
    n_errored: int
    """Finished trials whose final try carries an error."""
    n_tries: int
    """All tries, retries included."""
    mean_reward: float | None
    """Mean primary reward over finished trials; a trial without reward counts 0."""
    pass_rate: float | None
    """Share of finished trials with primary reward ≥ 1."""
    pass_at_k: dict[str, float] = {}
    """Unbiased pass@k over tasks, for k = 1 … n_attempts."""
    errors: dict[str, int]
    """Final-try errors by type."""
    phases: dict[str, PhaseStats]
    usage: ModelUsage | None = None
    """Model calls summed over every try (retries cost tokens too); None when the job used no model."""
    tasks: dict[str, TaskSummary]
    trials: dict[str, str]
    """`task__attempt` → directory name of its final try."""
