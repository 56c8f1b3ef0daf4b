"""Why a trial failed: one primary cause from the evidence on disk, plus the failing tests where the
verifier's output names them.

Primary causes are `<kind>/<reason>`, where kind is who failed:
- infrastructure: build, pull, start, agent_setup, exec (the machine; never the agent's fault)
- agent: timeout, crash, nonzero_exit, rate_limited, context_exceeded
- model: no_change, tests_failing, wrong_answer (the agent ran cleanly and the verifier said no)
- verifier: missing_reward, invalid_reward, timeout, error
- task: invalid, build
- cancelled (not a failure: listed so nothing disappears silently)
"""

from __future__ import annotations

import re
from pathlib import Path

from evalkit.analysis.reader import TRAJECTORY, TrajectoryStats, TryRecord

CAUSES: dict[str, str] = {
    "infrastructure/build": "the task image could not be built",
    "infrastructure/pull": "an image could not be pulled",
    "infrastructure/start": "the container could not be started",
    "infrastructure/agent_setup": "the agent's setup failed",
    "infrastructure/exec": "the machine failed while the trial ran (Docker, disk, an unexpected error)",
    "agent/timeout": "the agent outlived its timeout",
    "agent/crash": "the agent crashed (an exception, or its container died)",
    "agent/nonzero_exit": "the agent exited with a non-zero code",
    "agent/rate_limited": "the model endpoint rate-limited the agent (HTTP 429) and it gave up",
    "agent/context_exceeded": "a request exceeded the model's context window",
    "model/no_change": "the agent left no trace of any action (no tool calls, no logs, or an empty diff)",
    "model/tests_failing": "the agent acted, and the verifier's tests failed",
    "model/wrong_answer": "the agent acted, and the verifier gave less than full reward",
    "verifier/missing_reward": "the verifier wrote no reward (missing or empty file)",
    "verifier/invalid_reward": "the verifier's reward could not be parsed",
    "verifier/timeout": "the verifier outlived its timeout",
    "verifier/error": "the verifier failed otherwise",
    "task/invalid": "the task could not be loaded or is unsupported",
    "task/build": "the task's environment failed to build",
    "cancelled": "the trial was stopped before it finished",
}

_BY_TYPE = {
    "EnvironmentBuildError": "build",
    "ImagePullError": "pull",
    "EnvironmentStartError": "start",
    "AgentSetupError": "agent_setup",
    "AgentTimeoutError": "timeout",
    "AgentExitError": "nonzero_exit",
    "ContainerLostError": "crash",
    "RateLimitError": "rate_limited",
    "ContextWindowError": "context_exceeded",
    "VerifierTimeoutError": "timeout",
    "RewardFileMissingError": "missing_reward",
    "RewardFileEmptyError": "missing_reward",
    "RewardParseError": "invalid_reward",
    "TaskConfigError": "invalid",
    "TaskUnsupportedError": "invalid",
}
_DEFAULT_REASON = {"infrastructure": "exec", "agent": "crash", "verifier": "error", "task": "invalid"}

_FAILING_TEST_PATTERNS = [
    re.compile(r"^(?:FAILED|ERROR) (\S+::\S+)"),  # pytest short summary
    re.compile(r"^(\S+::\S+) (?:FAILED|ERROR)\b"),  # pytest -v
    re.compile(r"^not ok \d+(?: -)? (.+?)(?: # .*)?$"),  # TAP (bats, prove)
    re.compile(r"^\s*--- FAIL: (\S+)"),  # go test
    re.compile(r"^test (\S+) \.\.\. FAILED$"),  # cargo test
    re.compile(r"^FAIL: (\S+) \(([\w.]+)\)$"),  # unittest
]
TEST_OUTPUT_LIMIT = 4 * 1024 * 1024
"""Bytes of `test-stdout.txt` read at most (its tail, where summaries are)."""
MAX_FAILING_TESTS = 100


def failing_tests(trial_dir: Path) -> list[str]:
    """Test names the verifier's output reports as failed, in order, deduplicated ([] when unrecognisable)."""
    path = trial_dir / "evaluation" / "test-stdout.txt"
    if path.is_symlink() or not path.is_file():
        return []
    with path.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - TEST_OUTPUT_LIMIT))
        text = f.read().decode("utf-8", "replace")
    found: dict[str, None] = {}
    for line in text.splitlines():
        for pattern in _FAILING_TEST_PATTERNS:
            if match := pattern.match(line.rstrip()):
                name = match.group(1) if pattern.groups == 1 else f"{match.group(2)}.{match.group(1)}"
                found[name.strip()] = None
                break
        if len(found) >= MAX_FAILING_TESTS:
            break
    return list(found)


def _empty_diff(trial_dir: Path) -> bool | None:
    """True/False when the agent or engine saved a diff of the agent's changes; None when there is none."""
    diffs = [p for d in ("artifacts", "agent") for p in (trial_dir / d).glob("*.diff")] + [
        p for d in ("artifacts", "agent") for p in (trial_dir / d).glob("*.patch")
    ]
    diffs = [p for p in diffs if p.is_file() and not p.is_symlink()]
    if not diffs:
        return None
    return all(p.stat().st_size == 0 for p in diffs)


def left_a_trace(trial_dir: Path, traj: TrajectoryStats | None) -> bool:
    """Did the agent visibly act? A tool call, or any log it wrote besides the gateway's trajectory."""
    empty = _empty_diff(trial_dir)
    if empty is not None:
        return not empty
    if traj is not None and traj.n_tool_calls > 0:
        return True
    agent_dir = trial_dir / "agent"
    if agent_dir.is_dir() and not agent_dir.is_symlink():
        return any(p.name != TRAJECTORY.name for p in agent_dir.iterdir())
    return False


def _from_trajectory(traj: TrajectoryStats | None) -> str | None:
    """An agent that stopped because the endpoint refused it: the last call failed with 429 / context."""
    if traj is None or not traj.last_call_failed:
        return None
    if traj.n_context_exceeded:
        return "agent/context_exceeded"
    if traj.n_rate_limited:
        return "agent/rate_limited"
    return None


def primary_cause(t: TryRecord, traj: TrajectoryStats | None, tests: list[str]) -> str:
    """The primary cause of a trial that was not resolved."""
    if t.error_type is not None:
        kind = t.error_kind or "infrastructure"
        if kind == "cancelled":
            return "cancelled"
        if kind == "agent" and (cause := _from_trajectory(traj)):
            return cause
        reason = _BY_TYPE.get(t.error_type, _DEFAULT_REASON.get(kind, "error"))
        cause = f"{kind}/{reason}"
        return cause if cause in CAUSES else f"{kind}/{_DEFAULT_REASON.get(kind, 'error')}"
    if cause := _from_trajectory(traj):
        return cause
    if not left_a_trace(t.dir, traj):
        return "model/no_change"
    return "model/tests_failing" if tests else "model/wrong_answer"
