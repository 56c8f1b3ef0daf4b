"""What a job leaves on disk: per-trial `result.json` and the job's `results.json`, versioned schemas.

These files are the API between the engine, analysis, the dashboard and users' scripts. They are always
written atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, PrivateAttr

from evalkit.errors import ErrorKind
from evalkit.metrics import MetricsReport

RESULT_SCHEMA_VERSION = 2
"""2: errors carry `kind` and `phase`; results record the resource envelope and download notes."""


TRY_DIR_NAME = re.compile(r"^(?P<trial>.+__\d+)(?:-try(?P<try>\d+))?$")
"""A try's directory in the job directory: its trial's name (`<task>__<attempt>`), then `-try<N>` for a retry."""


def try_dir_name(trial: str, try_index: int) -> str:
    return trial if try_index == 0 else f"{trial}-try{try_index}"


def trial_of(try_name: str) -> str:
    """The trial a try belongs to (every try of a trial shares it)."""
    match = TRY_DIR_NAME.match(try_name)
    return match.group("trial") if match else try_name


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
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide results from other users of the job directory
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def overwrite_json_in_place(path: Path, data: Any) -> bool:
    """Last resort when the disk is full: rewrite an existing file's blocks with compact JSON, if it fits
    in them (so no new block is needed). False when it does not fit; the file is then left as it was."""
    payload = orjson.dumps(data.model_dump(mode="json") if isinstance(data, BaseModel) else data)
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if len(payload) > os.fstat(fd).st_size:
            return False
        os.write(fd, payload)
        os.ftruncate(fd, len(payload))
        return True
    finally:
        os.close(fd)


class ErrorInfo(BaseModel):
    type: str
    """Class name of the error (`AgentTimeoutError`, …); what retries and `results.json` count by."""
    kind: ErrorKind
    """Whose failure: infrastructure, agent, verifier or task. Only infrastructure errors of a known type
    are retried by default."""
    phase: str
    """The phase that was running: load, environment, agent_setup, agent, verifier."""
    message: str
    traceback: str | None = None
    """Only for unexpected exceptions (a bug somewhere), never for typed errors."""


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


class ResourceEnvelope(BaseModel):
    """What a try's container actually ran with (resources move scores: record them, don't assume them)."""

    cpus: float
    memory_mb: int
    storage_mb: int
    storage_enforced: bool
    """False where the storage driver cannot cap a container's writable layer (e.g. overlay2 on ext4)."""
    pids_limit: int
    network_mode: str
    cap_drop: list[str]
    """Linux capabilities removed from Docker's default set."""
    no_new_privileges: bool


class DownloadReport(BaseModel):
    """What came back from one container directory, and what did not (names only, never content)."""

    files: int = 0
    bytes: int = 0
    skipped: list[str] = []
    """`path: reason` for each entry not copied (links, FIFOs, devices, over the cap, already present);
    at most a few dozen, the rest counted in `n_skipped`."""
    n_skipped: int = 0
    truncated: bool = False
    """True when the download stopped at its size or file-count cap."""
    error: str | None = None
    """Why the download failed, if it did (the container vanished, the disk is full)."""
    _not_taken: dict[str, tuple[str, int]] = PrivateAttr(default_factory=dict)

    @property
    def not_taken(self) -> dict[str, tuple[str, int]]:
        """Entries left behind for their type or size: relative path → (type name, size). In memory only
        (a reward is read back from a download and refused the same way); never written to a file."""
        return self._not_taken


class AgentOutcome(BaseModel):
    exit_code: int | None = None
    timed_out: bool = False
    exit_code_is_error: bool = True
    """False for the oracle: Harbor records a reference solution's exit code and raises nothing."""
    version: str | None = None
    """The agent's version (a scaffold's pinned release), when it has one."""
    model: str | None = None
    """The model name the agent was given (`llm_api.model`); None without a gateway."""
    usage: ModelUsage | None = None


class StepResult(BaseModel):
    """One step of a multi-step task: its verdict and what happened on the way to it."""

    name: str
    rewards: dict[str, float] | None = None
    """The step's verifier result; None when its verifier did not run or gave no reward."""
    error: ErrorInfo | None = None
    """The first failure of the step (setup, healthcheck, agent, verifier); a failed step is not the try's error."""
    agent_outcome: AgentOutcome = AgentOutcome()
    phases: dict[str, PhaseTiming] = {}
    """setup, agent, verifier — whichever ran."""


class TrialResult(BaseModel):
    """One try of one (task, attempt). Retries are further tries with their own directory and result."""

    schema_version: int = RESULT_SCHEMA_VERSION
    job_name: str
    trial_name: str
    """This try's directory name: `<task>__<attempt>`, then `<task>__<attempt>-try<k>` for retries."""
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
    environment: ResourceEnvelope | None = None
    """The container's resources, network and privileges; None when no container started."""
    downloads: dict[str, DownloadReport] = {}
    """`agent`, `evaluation`, `artifacts`: what was copied out of the container into this try's directory."""
    phases: dict[str, PhaseTiming] = {}
    """environment, agent_setup, agent, verifier — whichever ran."""
    started_at: datetime
    finished_at: datetime | None = None
    will_retry: bool = False
    """True when the job scheduled another try for this (task, attempt) after this one."""
    steps: list[StepResult] = []
    """Multi-step tasks: each step that ran, in order (`rewards` is then combined from theirs)."""
    warnings: list[str] = []
    """What evalkit ignored in this task (unknown or unimplemented `task.toml` and compose keys), each named."""
    outage: bool = False
    """The container engine went away during this try: it was run again once the engine was back, not
    counted against `retry.max_retries`."""

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


class ConcurrencyChange(BaseModel):
    """A change of the number of tries allowed in flight (`n_concurrent: auto`)."""

    at_sec: float
    """Seconds since the job started running."""
    level: int
    reason: str


class ImageSummary(BaseModel):
    """What the job did with images."""

    built: int = 0
    pulled: int = 0
    reused: int = 0
    """Found already present (an earlier job built it, a base image)."""
    evicted: int = 0
    """Removed to stay within `environment.image_cache_gb` once no pending trial needed them."""
    evicted_mb: float = 0.0


class NodeStats(BaseModel):
    """One node of a job on a cluster backend (`environment.backend: ray`)."""

    address: str
    """The node's address as the cluster knows it."""
    in_flight: int
    """Environments running on it now (0 once the job has ended)."""
    tries: int
    """Environments placed on it during this run."""
    lost: bool = False
    """It died or stopped answering during the run; its tries in flight were recorded as infrastructure errors."""
    failures: int = 0
    """Environment operations on it that failed with an infrastructure error (its Docker engine's, a lost
    actor's); a task's, an agent's or a verifier's failure is not the node's."""
    images: ImageSummary = ImageSummary()
    """What this node did with images (a task's images are made on the node its tries go to); refreshed as
    the node prepares images and ends tries, exact once the job's nodes have closed."""


class JobSummary(BaseModel):
    """`results.json`: refreshed as trials finish, so it is always a consistent picture of the job so far."""

    schema_version: int = RESULT_SCHEMA_VERSION
    job_name: str
    job_id: str
    """The job's uuid (from `job.json`); container labels carry it."""
    status: str
    """running | finished | interrupted | failed (a failure outside any try stopped the job)"""
    error: str | None = None
    """Why the job failed, when `status` is failed."""
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
    """Raw mean primary reward over finished trials, every error (infrastructure too) counting 0; the honest
    figure is `metrics`."""
    pass_rate: float | None
    """Raw share of finished trials with primary reward ≥ 1 (errors count as failures; see `metrics`)."""
    pass_at_k: dict[str, float] = {}
    """Raw unbiased pass@k over tasks, for k = 1 … n_attempts."""
    metrics: MetricsReport | None = None
    """The job's `metrics` with standard errors, 95% intervals, denominator policy, coverage and breakdowns;
    every trial without a final result yet counts as not scored (`cancelled`). `reliable: false` below
    `min_coverage`."""
    errors: dict[str, int]
    """Final-try errors by type."""
    phases: dict[str, PhaseStats]
    usage: ModelUsage | None = None
    """Model calls summed over every try (retries cost tokens too); None when the job used no model."""
    task_errors: dict[str, str] = {}
    """Tasks that could not run at all (broken or unsupported), listed up front: name → `Type: message`."""
    task_warnings: dict[str, list[str]] = {}
    """Tasks that run with something ignored (unknown or unimplemented keys): name → what, once per job."""
    concurrency: list[ConcurrencyChange] = []
    """With `n_concurrent: auto`, the level over time (this run of the job)."""
    images: ImageSummary | None = None
    """Images built, pulled, reused and evicted in this run of the job."""
    tasks: dict[str, TaskSummary]
    trials: dict[str, str]
    """`task__attempt` → directory name of its final try."""
    nodes: dict[str, NodeStats] | None = None
    """Cluster backends only: per node (by id), what ran where during this run."""
