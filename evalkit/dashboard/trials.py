"""One try's files for the trial page: result, verdict, test output, agent logs, timings.

Text files are shown up to `TEXT_LIMIT` bytes (the raw file is one link away); only regular files are read,
never through a symlink, and at most `MAX_LOGS` agent logs are listed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from evalkit.analysis.reader import TRAJECTORY, TryRecord, Unreadable, read_json
from evalkit.dashboard.index import JobIndex, TryInfo
from evalkit.dashboard.paths import NotFound, Refused, text_of, under

TEXT_LIMIT = 64 * 1024
MAX_LOGS = 20
TEST_OUTPUT = ("test-stdout.txt", "test-stderr.txt", "test_output.txt")


def _files(directory: Path, skip: set[str]) -> list[tuple[str, os.stat_result]]:
    """Regular files directly or one level below `directory` (no symlinks), by name."""
    out: list[tuple[str, os.stat_result]] = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and entry.name not in skip:
            out.append((entry.name, st))
        elif stat.S_ISDIR(st.st_mode):
            out += [(f"{entry.name}/{n}", s) for n, s in _files(Path(entry.path), set()) if "/" not in n]
    return out


def _subdir(path: Path, name: str) -> Path | None:
    """`path/name` when it is a real directory (not a symlink), else None."""
    try:
        sub = under(path, name)
    except Refused:
        return None
    return sub if sub.is_dir() else None


def try_dir(index: JobIndex, name: str) -> tuple[Path, TryInfo]:
    path = under(index.job_dir, name)
    info = index.try_info(name)
    if info is None:
        raise NotFound(f"not found: trial {name} (no result.json yet)")
    if isinstance(info, Unreadable):
        raise Refused(f"trial {name}: {info.reason}", 422)
    return path, info


def trajectory_path(index: JobIndex, name: str) -> Path | None:
    """The try's trajectory file, or None when it has none; Refused when something on the way is a symlink."""
    try_path, _ = try_dir(index, name)
    try:
        return under(try_path, *TRAJECTORY.parts)
    except NotFound:
        return None


def _record(t: TryRecord) -> dict[str, Any]:
    return {"trial": t.trial, "task": t.task, "attempt": t.attempt, "try_index": t.try_index, "will_retry": t.will_retry,
            "agent": t.agent, "rewards": t.rewards, "reward": t.reward,
            "error": {"type": t.error_type, "kind": t.error_kind, "phase": t.error_phase, "message": t.error_message}
            if t.error_type else None,
            "exit_code": t.exit_code, "timed_out": t.timed_out, "usage": t.usage, "duration_sec": t.duration_sec}


def trial_detail(index: JobIndex, name: str) -> dict[str, Any]:
    path, info = try_dir(index, name)
    t = info.record
    raw = read_json(path / "result.json")
    phases = raw.get("phases") if isinstance(raw.get("phases"), dict) else {}
    evaluation, agent = _subdir(path, "evaluation"), _subdir(path, "agent")
    verdict_problems: list[str] = []
    try:
        verdict = read_json(under(path, "evaluation", "verdict.json"))
    except (Refused, OSError, ValueError) as exc:
        verdict = None
        if not isinstance(exc, NotFound):
            verdict_problems.append(f"verdict.json: {exc}")
    tests = {n: text for n in TEST_OUTPUT if evaluation and (text := text_of(evaluation / n, TEXT_LIMIT)) is not None}
    logs = []
    for rel, st in _files(agent, {TRAJECTORY.name})[:MAX_LOGS] if agent else []:
        logs.append({"name": rel, "size": st.st_size} | (text_of(agent / rel, TEXT_LIMIT) or {}))
    tries = sorted((i.record for i in index.tries() if i.record.trial == t.trial), key=lambda r: r.try_index)
    try:
        traj = trajectory_path(index, name)
    except Refused as exc:
        traj = None
        verdict_problems.append(f"trajectory: {exc}")
    return {
        "job": index.job_dir.name,
        "try": name,
        **_record(t),
        "started_at": raw.get("started_at"),
        "finished_at": raw.get("finished_at"),
        "phases": [{"name": str(k), "started_at": v.get("started_at"), "finished_at": v.get("finished_at"),
                    "seconds": t.phases.get(k)} for k, v in phases.items() if isinstance(v, dict)],
        "tries": [{"try": r.dir.name, "try_index": r.try_index, "reward": r.reward, "error": r.error_type} for r in tries],
        "verdict": verdict,
        "problems": verdict_problems,
        "tests": tests,
        "evaluation_files": [{"name": n, "size": s.st_size} for n, s in _files(evaluation, set())] if evaluation else [],
        "agent_logs": logs,
        "trajectory": {"exists": traj is not None, "size": os.lstat(traj).st_size if traj else 0},
        "result": raw,
    }
