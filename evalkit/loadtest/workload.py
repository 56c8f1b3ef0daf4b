"""What is sent: generated requests, or recorded trials turned into replay plans.

A replay plan keeps a trial's shape: its calls in order with the bodies the agent sent (so the message prefix
grows as it did), and for each call the call it waited for and how long after that call's answer it was sent
(the think-time: the agent's own work, tool runs included). Calls that overlapped when recorded (parallel
sub-agents) overlap in the replay too. Trajectories are read through `evalkit.gateway.trajectory.read_trajectory`,
the one place that knows their encoding; nothing in them is trusted beyond its shape (only known model endpoints are replayed,
always on the addresses the user gave).
"""

from __future__ import annotations

import itertools
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from evalkit.analysis.reader import TRAJECTORY
from evalkit.errors import ConfigError
from evalkit.gateway.trajectory import read_trajectory
from evalkit.loadtest.config import ReplayWorkload, SyntheticWorkload

ENDPOINTS = {
    "/v1/chat/completions": "openai_chat",
    "/v1/messages": "anthropic_messages",
    "/v1/messages/count_tokens": "anthropic_count_tokens",
}
"""The recorded endpoints a replay sends (others, such as `/v1/responses`, are counted as skipped)."""

CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Call:
    """One request to send."""

    path: str
    protocol: str
    body: bytes
    stream: bool
    after: int | None = None
    """Index (in the trial) of the call whose answer this one waits for; None: the trial's start."""
    think_sec: float = 0.0
    """Wait after that answer (or after the trial's start) before sending."""


@dataclass(frozen=True, slots=True)
class TrialPlan:
    """A recorded trial, ready to replay."""

    name: str
    calls: tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class ReplaySet:
    trials: tuple[TrialPlan, ...]
    skipped: dict[str, int]
    """Recorded calls not replayed, by reason."""
    problems: tuple[str, ...]
    """Damage found while reading (torn lines), as the reader reported it."""


# ------------------------------------------------------------------------------------------------ synthetic


class SyntheticRequests:
    """The requests of a synthetic workload, numbered across the whole sweep: a unique first line each (so no
    step reuses another's prompts), then filler text of the asked length."""

    def __init__(self, workload: SyntheticWorkload, model: str) -> None:
        self.workload, self.model = workload, model
        rng = random.Random(workload.seed)
        words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 8))) for _ in range(512)]
        filler = " ".join(rng.choices(words, k=workload.prompt_tokens * CHARS_PER_TOKEN // 5 + 1))
        self._filler = filler[: max(0, workload.prompt_tokens * CHARS_PER_TOKEN - 40)]
        self._nonce = rng.getrandbits(48)
        self._count = itertools.count()

    def next_call(self) -> Call:
        i = next(self._count)
        text = f"Request {self._nonce:x}-{i}. Continue this text: {self._filler}"
        message = [{"role": "user", "content": text}]
        n = self.workload.output_tokens
        if self.workload.protocol == "anthropic_messages":
            body: dict[str, Any] = {"model": self.model, "max_tokens": n, "messages": message, "stream": True}
            return Call("/v1/messages", "anthropic_messages", orjson.dumps(body), True)
        body = {
            "model": self.model,
            "messages": message,
            "max_tokens": n,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return Call("/v1/chat/completions", "openai_chat", orjson.dumps(body), True)


# --------------------------------------------------------------------------------------------------- replay


def trajectory_files(paths: list[Path]) -> list[Path]:
    """Every trajectory under the given job directories, trial directories or files, in name order."""
    found: list[Path] = []
    for i, path in enumerate(paths):
        if path.is_symlink() or not path.exists():
            raise ConfigError(f"replay.jobs[{i}]: {path} does not exist (or is a symlink)")
        if path.is_file():
            found.append(path)
        elif (path / TRAJECTORY).is_file():
            found.append(path / TRAJECTORY)
        else:
            found += sorted(p for p in path.glob(f"*/{TRAJECTORY}") if not p.parent.parent.is_symlink())
    return found


def _timing(call: dict[str, Any]) -> tuple[float, float] | None:
    timing = call.get("timing")
    if not isinstance(timing, dict):
        return None
    start, end = timing.get("start"), timing.get("end")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end >= start:
        return float(start), float(end)
    return None


def plan_trial(name: str, recorded: list[dict[str, Any]], model: str, scale: float, skipped: dict[str, int]) -> TrialPlan:
    """A trial's calls in `seq` order, each waiting for the last call that had answered when it was sent."""
    recorded = sorted(recorded, key=lambda c: c.get("seq") if isinstance(c.get("seq"), int) else 0)
    calls: list[Call] = []
    times: list[tuple[float, float] | None] = []
    for record in recorded:
        endpoint = str(record.get("endpoint") or "").split("?", 1)[0]
        protocol = ENDPOINTS.get(endpoint)
        request = record.get("request")
        reason = None
        if protocol is None:
            reason = f"endpoint {endpoint or '(none)'}"
        elif not isinstance(request, dict):
            reason = "request not recorded as JSON"
        elif record.get("messages_incomplete"):
            reason = "messages incomplete in the recording"
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        request = {**request, "model": model}  # a copy: the reader's calls share their message objects
        stream = bool(request.get("stream")) and protocol != "anthropic_count_tokens"
        if stream and protocol == "openai_chat" and "stream_options" not in request:
            request["stream_options"] = {"include_usage": True}  # to count output tokens; messages unchanged
        span = _timing(record)
        after, think = _dependency(span, times, calls)
        calls.append(Call(endpoint, protocol, orjson.dumps(request), stream, after, think * scale))
        times.append(span)
    return TrialPlan(name, tuple(calls))


def _dependency(
    span: tuple[float, float] | None, times: list[tuple[float, float] | None], calls: list[Call]
) -> tuple[int | None, float]:
    if not calls:
        return None, 0.0
    if span is None or any(t is None for t in times):
        return len(calls) - 1, 0.0  # no timing: one after another, no wait
    start = span[0]
    answered = [(t[1], j) for j, t in enumerate(times) if t is not None and t[1] <= start]
    if not answered:  # sent while every earlier call was still running: timed from the trial's start
        first = times[0]
        return None, max(0.0, start - first[0]) if first else 0.0
    end, j = max(answered)
    return j, start - end


def load_replay(workload: ReplayWorkload, model: str) -> ReplaySet:
    """Read every trajectory once into replay plans (blocking: run it in a thread)."""
    skipped: dict[str, int] = {}
    problems: list[str] = []
    trials = []
    for path in trajectory_files(workload.jobs):
        found: list[str] = []
        plan = plan_trial(path.parent.parent.name, list(read_trajectory(path, found)), model,
                          workload.think_time_scale, skipped)
        problems += (f"{path.parent.parent.name}/{TRAJECTORY}: {problem}" for problem in found)
        if plan.calls:
            trials.append(plan)
    if not trials:
        where = ", ".join(str(p) for p in workload.jobs)
        raise ConfigError(f"replay.jobs: no recorded model calls to replay in {where}")
    return ReplaySet(tuple(trials), skipped, tuple(problems))
