"""Reading a job directory as plain files, tolerant of damage and of schema growth.

Nothing here imports the engine: a job written by an older or newer evalkit, or half-destroyed by a crash,
is still read. A `result.json` that cannot be parsed becomes an `Unreadable` entry (reported, never raised);
a torn last line of a trajectory is counted and skipped. Trajectories are streamed line by line.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from evalkit.gateway import trajectory as gateway_trajectory
from evalkit.metrics import primary_reward

TRAJECTORY = Path("agent") / "litellm-trajectory.jsonl"
_TRY_DIR = re.compile(r"^(?P<trial>.+__(?P<attempt>\d+))(?:-try(?P<try>\d+))?$")

ERROR_KINDS: dict[str, str] = {
    "DockerUnavailableError": "infrastructure",
    "ImagePullError": "infrastructure",
    "EnvironmentStartError": "infrastructure",
    "AgentSetupError": "infrastructure",
    "EnvironmentBuildError": "infrastructure",
    "AgentTimeoutError": "agent",
    "AgentExitError": "agent",
    "ContainerLostError": "agent",
    "RateLimitError": "agent",
    "ContextWindowError": "agent",
    "VerifierTimeoutError": "verifier",
    "RewardFileMissingError": "verifier",
    "RewardFileEmptyError": "verifier",
    "RewardParseError": "verifier",
    "TaskConfigError": "task",
    "TaskUnsupportedError": "task",
    "Cancelled": "cancelled",
    "CancelledError": "cancelled",
}
"""The kind of each error type, for results written before `ErrorInfo.kind` existed. An unknown type raised
while the agent ran is the agent's (a crash); anywhere else it is infrastructure's."""


def read_json(path: Path) -> Any:
    """Parsed JSON, refusing symlinks and anything but a regular file (a container may have made it)."""
    if path.is_symlink() or not path.is_file():
        raise OSError(f"{path.name} is not a regular file")
    return orjson.loads(path.read_bytes())


def read_optional(path: Path, problems: list[str], reader: Callable[[Path], Any] = read_json) -> Any:
    """A job-level file, or None when it is missing; damage is noted in `problems`."""
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return reader(path)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        problems.append(f"{path.name}: unreadable ({_short(exc)})")
        return None


def read_yaml(path: Path) -> Any:
    if path.is_symlink() or not path.is_file():
        raise OSError(f"{path.name} is not a regular file")
    return yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------- trajectories


def read_trajectory(path: Path, problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The model calls of one trajectory file, whole, streamed: `evalkit.gateway.trajectory.read_trajectory`
    (the one reader of the format, delta-encoded requests included), with its problems named after the try."""
    found: list[str] = []
    try:
        yield from gateway_trajectory.read_trajectory(path, found)
    finally:
        if problems is not None:
            problems.extend(f"{path.parent.parent.name}/{TRAJECTORY}: {problem}" for problem in found)


_CONTEXT = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|too many (input )?tokens|context_length_exceeded",
    re.I,
)


def _error_text(call: dict[str, Any]) -> str:
    parts = [str(call.get("error") or "")]
    response = call.get("response")
    if isinstance(response, dict) and isinstance(response.get("error"), (dict, str)):
        parts.append(str(response["error"]))
    if call.get("response_raw"):
        parts.append(str(call["response_raw"])[:2000])
    return " ".join(parts)


def tool_calls_of(response: Any) -> list[dict[str, Any]]:
    """Tool calls in a model answer of any protocol, as `{"id", "name", "arguments"}`."""
    if not isinstance(response, dict):
        return []
    out: list[dict[str, Any]] = []
    for choice in response.get("choices") or []:  # OpenAI chat
        message = choice.get("message") if isinstance(choice, dict) else None
        for call in (message or {}).get("tool_calls") or []:
            fn = call.get("function") or {}
            out.append({"id": call.get("id"), "name": fn.get("name"), "arguments": fn.get("arguments")})
    for block in response.get("content") or [] if isinstance(response.get("content"), list) else []:  # Anthropic
        if isinstance(block, dict) and block.get("type") == "tool_use":
            out.append({"id": block.get("id"), "name": block.get("name"), "arguments": block.get("input")})
    for item in response.get("output") or [] if isinstance(response.get("output"), list) else []:  # Responses
        if isinstance(item, dict) and item.get("type") == "function_call":
            out.append({"id": item.get("call_id"), "name": item.get("name"), "arguments": item.get("arguments")})
    return out


@dataclass
class TrajectoryStats:
    """What one trial's model calls add up to."""

    n_calls: int = 0
    n_tool_calls: int = 0
    n_errors: int = 0
    n_rate_limited: int = 0
    n_context_exceeded: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float | None = None
    first_start: float | None = None
    last_end: float | None = None
    last_error: str | None = None
    """Status and text of the last failed call, for failure reports (truncated)."""
    last_call_failed: bool = False

    @property
    def duration_sec(self) -> float | None:
        if self.first_start is None or self.last_end is None:
            return None
        return max(0.0, self.last_end - self.first_start)

    def add(self, call: dict[str, Any]) -> None:
        self.n_calls += 1
        status = call.get("status")
        failed = call.get("error") is not None or not isinstance(status, int) or status >= 400
        self.last_call_failed = failed
        if failed:
            self.n_errors += 1
            text = _error_text(call)
            self.n_rate_limited += status == 429
            self.n_context_exceeded += bool(status in (400, 413, None) and _CONTEXT.search(text))
            self.last_error = f"{status}: {text.strip()}"[:300]
        self.n_tool_calls += len(tool_calls_of(call.get("response")))
        usage = call.get("usage") or {}
        self.input_tokens += _int(usage.get("input_tokens"))
        self.output_tokens += _int(usage.get("output_tokens"))
        self.cache_read_tokens += _int(usage.get("cache_read_tokens"))
        cost = call.get("cost_usd")
        if isinstance(cost, (int, float)) and math.isfinite(cost):
            self.cost_usd = (self.cost_usd or 0.0) + cost
        timing = call.get("timing") or {}
        start, end = timing.get("start"), timing.get("end")
        if isinstance(start, (int, float)):
            self.first_start = start if self.first_start is None else min(self.first_start, start)
        if isinstance(end, (int, float)):
            self.last_end = end if self.last_end is None else max(self.last_end, end)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def summarize_trajectory(path: Path, problems: list[str]) -> TrajectoryStats | None:
    """Stream one trajectory into its totals; None when the trial has no trajectory file."""
    if not path.exists():
        return None
    stats = TrajectoryStats()
    for call in read_trajectory(path, problems):
        stats.add(call)
    return stats


# ---------------------------------------------------------------------------------------------- tries


@dataclass
class TryRecord:
    """One try's `result.json`, reduced to what analysis uses (unknown fields are ignored)."""

    dir: Path
    trial: str
    """`<task>__<attempt>`: the trial this try belongs to."""
    task: str
    attempt: int
    try_index: int
    will_retry: bool
    agent: str | None
    rewards: dict[str, float] | None
    error_type: str | None
    error_kind: str | None
    error_message: str | None
    error_phase: str | None
    exit_code: int | None
    timed_out: bool
    usage: dict[str, Any]
    phases: dict[str, float]
    """Seconds per finished phase."""
    duration_sec: float | None
    task_source: dict[str, Any]

    @property
    def reward(self) -> float | None:
        return primary_reward(self.rewards)


@dataclass
class Unreadable:
    """A try directory whose `result.json` could not be used."""

    dir: Path
    reason: str


def _seconds(timing: Any) -> float | None:
    from datetime import datetime

    if not isinstance(timing, dict) or not timing.get("started_at") or not timing.get("finished_at"):
        return None
    try:
        start = datetime.fromisoformat(str(timing["started_at"]))
        end = datetime.fromisoformat(str(timing["finished_at"]))
    except ValueError:
        return None
    return (end - start).total_seconds()


def error_kind(error_type: str | None, recorded: str | None, phase: str | None) -> str | None:
    """The recorded kind, else the known kind of the type, else by phase (see ERROR_KINDS)."""
    if error_type is None:
        return None
    if recorded:
        return recorded
    if error_type in ERROR_KINDS:
        return ERROR_KINDS[error_type]
    return "agent" if phase == "agent" else "infrastructure"


def parse_try(trial_dir: Path, data: Any) -> TryRecord:
    """A TryRecord from parsed `result.json`; ValueError when required fields are missing or mistyped."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    match = _TRY_DIR.match(trial_dir.name)
    task = data.get("task_name")
    attempt = data.get("attempt")
    if not isinstance(task, str) or not isinstance(attempt, int):
        raise ValueError("task_name or attempt missing")
    rewards = data.get("rewards")
    if rewards is not None and not (
        isinstance(rewards, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rewards.values())
    ):
        raise ValueError("rewards is not an object of numbers")
    error = data.get("error") if isinstance(data.get("error"), dict) else None
    outcome = data.get("agent_outcome") if isinstance(data.get("agent_outcome"), dict) else {}
    phases = {name: s for name, t in (data.get("phases") or {}).items() if (s := _seconds(t)) is not None}
    error_type = error.get("type") if error else None
    phase = error.get("phase") if error else None
    if error and phase is None:
        phase = _phase_of(error_type, data.get("phases") or {})
    return TryRecord(
        dir=trial_dir,
        trial=f"{task}__{attempt}",
        task=task,
        attempt=attempt,
        try_index=int(data.get("try_index") or (match and match["try"]) or 0),
        will_retry=bool(data.get("will_retry")),
        agent=data.get("agent"),
        rewards={k: float(v) for k, v in rewards.items()} if rewards else None,
        error_type=error_type,
        error_kind=error_kind(error_type, error.get("kind") if error else None, phase),
        error_message=(error.get("message") or "")[:500] if error else None,
        error_phase=phase,
        exit_code=outcome.get("exit_code"),
        timed_out=bool(outcome.get("timed_out")),
        usage=outcome.get("usage") or {},
        phases=phases,
        duration_sec=_seconds(data),
        task_source=data.get("task_source") or {},
    )


def _phase_of(error_type: str | None, phases: dict[str, Any]) -> str | None:
    """Older results have no `error.phase`: the last phase that started is where the trial stopped."""
    if error_type in ("AgentTimeoutError", "AgentExitError"):
        return "agent"
    return list(phases)[-1] if phases else None


def iter_tries(job_dir: Path) -> Iterator[TryRecord | Unreadable]:
    """Every try directory of the job that has a `result.json`, in name order."""
    for entry in sorted(job_dir.iterdir()):
        if not _TRY_DIR.match(entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        path = entry / "result.json"
        if not path.exists() and not path.is_symlink():
            continue  # interrupted before its result: the engine runs it again
        try:
            yield parse_try(entry, read_json(path))
        except (OSError, ValueError) as exc:
            yield Unreadable(entry, f"result.json: {_short(exc)}")


def final_tries(tries: list[TryRecord]) -> list[TryRecord]:
    """The try that counts for each trial: the last one that did not schedule another."""
    by_trial: dict[str, list[TryRecord]] = {}
    for t in tries:
        by_trial.setdefault(t.trial, []).append(t)
    finals = []
    for group in by_trial.values():
        group.sort(key=lambda t: t.try_index)
        done = [t for t in group if not t.will_retry]
        finals.append(done[-1] if done else group[-1])
    return sorted(finals, key=lambda t: (t.task, t.attempt))


# ------------------------------------------------------------------------------------------ the job


@dataclass
class JobFiles:
    """The job-level files, each None when missing or unreadable (noted in `problems`)."""

    job_dir: Path
    job: dict[str, Any] | None
    config: dict[str, Any] | None
    results: dict[str, Any] | None
    tasks_lock: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)

    @property
    def job_name(self) -> str:
        return str((self.job or {}).get("job_name") or (self.results or {}).get("job_name") or self.job_dir.name)


def read_job_files(job_dir: Path) -> JobFiles:
    problems: list[str] = []
    files = JobFiles(
        job_dir=job_dir,
        job=read_optional(job_dir / "job.json", problems),
        config=read_optional(job_dir / "config.yaml", problems, read_yaml),
        results=read_optional(job_dir / "results.json", problems),
        tasks_lock=read_optional(job_dir / "tasks.lock.json", problems),
        problems=problems,
    )
    for name in ("job", "config", "results", "tasks_lock"):
        if getattr(files, name) is not None and not isinstance(getattr(files, name), dict):
            problems.append(f"{name}: not a mapping; ignored")
            setattr(files, name, None)
    return files


def task_dir_of(source: dict[str, Any], cache_root: Path | None) -> Path | None:
    """The local directory of a task from its recorded source (a local path, or a git checkout in the cache)."""
    if source.get("git_url"):
        if cache_root is None or not source.get("git_commit"):
            return None
        from evalkit.adapters.harbor.cache import GitTaskCache

        path = GitTaskCache(cache_root).checkout_dir(source["git_url"], source["git_commit"], str(source.get("path") or ""))
        return path if path.is_dir() else None
    path = Path(str(source.get("path") or ""))
    return path if path.is_absolute() and path.is_dir() else None


def read_task_toml(task_dir: Path) -> dict[str, Any]:
    """`task.toml` of a task directory ({} when missing or invalid: metadata is optional)."""
    path = task_dir / "task.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
