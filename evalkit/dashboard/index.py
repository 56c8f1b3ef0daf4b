"""What the dashboard knows about the jobs of one artifacts directory, kept current cheaply.

A `JobIndex` holds one job's parsed tries. Refreshing it lists the job directory and `lstat`s each
`result.json`; only a file whose (mtime, size, inode) changed is read again (through
`evalkit.analysis.reader`), so a finished 10,000-trial job costs a directory listing per request and a
running one costs its new results. Everything derived (the jobs-list row, the job page) is cached against the
index's version. Nothing is written: the dashboard reads files only.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from evalkit.lock import lock_held
from evalkit.analysis.reader import (
    JobFiles,
    TryRecord,
    Unreadable,
    final_tries,
    parse_try,
    read_job_files,
    read_json,
    read_optional,
    read_yaml,
)
from evalkit.dashboard.paths import NotFound, Refused, under
from evalkit.metrics import MetricsReport, TrialRecord, compute_metrics, phase_stats

SCAN_INTERVAL_SEC = 1.0
"""A job directory is looked at again at most this often; requests in between share the last look."""
FULL_SCAN_SEC = 60.0
"""A job no runner works on is listed again when its directory or `results.json` changes, or after this long
(to notice a `result.json` edited by hand)."""
MAX_CURVE_POINTS = 20
CONCURRENCY_POINTS = 400
KINDS = ("infrastructure", "agent", "verifier", "task", "cancelled")


@dataclass
class TryInfo:
    """One try: the reader's record plus the wall-clock bounds the concurrency chart needs."""

    record: TryRecord
    started: float | None
    finished: float | None


Stamp = tuple[int, int, int]


def _epoch(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp() if value else None
    except ValueError:
        return None


def _read_try(try_dir: Path) -> TryInfo | Unreadable:
    try:
        data = read_json(try_dir / "result.json")
        return TryInfo(parse_try(try_dir, data), _epoch(data.get("started_at")), _epoch(data.get("finished_at")))
    except (OSError, ValueError) as exc:
        return Unreadable(try_dir, f"result.json: {str(exc)[:160] or type(exc).__name__}")


def _stamp(path: Path | str) -> Stamp | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class JobIndex:
    """One job directory, parsed incrementally. Thread-safe: refreshes run in worker threads."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self._lock = threading.RLock()
        self._tries: dict[str, tuple[Stamp, TryInfo | Unreadable]] = {}
        self._files_stamp: tuple[Stamp | None, ...] = ()
        self.files: JobFiles = JobFiles(job_dir, None, None, None, None)
        self.running = False
        self.version = 0
        self._scanned_at = self._listed_at = -math.inf
        self._dir_stamp: Stamp | None = None
        self._derived: dict[str, tuple[int, Any]] = {}

    # ------------------------------------------------------------------------------------------ reading

    def refresh(self, *, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._scanned_at < SCAN_INTERVAL_SEC:
                return
            self._scanned_at = now
            changed = False
            names = ("job.json", "config.yaml", "results.json", "tasks.lock.json")
            stamps = tuple(_stamp(self.job_dir / n) for n in names)
            if stamps != self._files_stamp:
                self.files, self._files_stamp, changed = read_job_files(self.job_dir), stamps, True
            running = runner_active(self.job_dir, (self.files.results or {}).get("status"))
            changed |= running != self.running
            self.running = running
            dir_stamp = _stamp(self.job_dir)
            if force or running or changed or dir_stamp != self._dir_stamp or now - self._listed_at > FULL_SCAN_SEC:
                changed |= self._list_tries()
                self._dir_stamp, self._listed_at = dir_stamp, now
            if changed:
                self.version += 1

    def _list_tries(self) -> bool:
        """Stat every try's `result.json`; read the new and changed ones. True when anything changed."""
        changed = False
        seen = set()
        with os.scandir(self.job_dir) as entries:
            for entry in entries:
                if "__" not in entry.name or not entry.is_dir(follow_symlinks=False):
                    continue
                stamp = _stamp(entry.path + "/result.json")
                if stamp is None:
                    continue  # not finished yet (or not a try)
                seen.add(entry.name)
                old = self._tries.get(entry.name)
                if old is None or old[0] != stamp:
                    self._tries[entry.name] = (stamp, _read_try(Path(entry.path)))
                    changed = True
        for gone in self._tries.keys() - seen:
            del self._tries[gone]
            changed = True
        return changed

    def _cached(self, key: str, build: Any) -> Any:
        with self._lock:
            hit = self._derived.get(key)
            if hit and hit[0] == self.version:
                return hit[1]
            value = build()
            self._derived[key] = (self.version, value)
            return value

    def tries(self) -> list[TryInfo]:
        return [info for _, info in self._tries.values() if isinstance(info, TryInfo)]

    def unreadable(self) -> list[Unreadable]:
        return sorted((info for _, info in self._tries.values() if isinstance(info, Unreadable)), key=lambda u: u.dir.name)

    def try_info(self, name: str) -> TryInfo | Unreadable | None:
        entry = self._tries.get(name)
        return entry[1] if entry else None

    # ----------------------------------------------------------------------------------------- deriving

    def finals(self) -> list[TryRecord]:
        """The final try of every trial whose outcome is settled (no retry pending)."""
        return [t for t in final_tries([i.record for i in self.tries()]) if not t.will_retry]

    def summary(self) -> dict[str, Any]:
        return self._cached("summary", self._summary)

    def detail(self) -> dict[str, Any]:
        return self._cached("detail", self._detail)

    def _summary(self) -> dict[str, Any]:
        files = self.files
        config, results, job = files.config or {}, files.results or {}, files.job or {}
        finals = self.finals()
        report = job_metrics(finals)
        dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
        llm = config.get("llm_api") if isinstance(config.get("llm_api"), dict) else {}
        agent_cfg = config.get("agent") if isinstance(config.get("agent"), dict) else {}
        tries = self.tries()
        starts = [i.started for i in tries if i.started is not None]
        status = results.get("status")
        state, note = "running", None
        if self.running and not (self.job_dir / ".lock").exists():
            note = "an evalkit without job locks runs this job: the state is results.json's"
        if not self.running:
            state = status if status in ("finished", "interrupted") else "interrupted"
            if status == "running":
                note = "results.json says running, but no runner holds the job's lock"
            elif status is None:
                note = "no results.json"
        agent = agent_cfg.get("name") or next((i.record.agent for i in tries if i.record.agent), None)
        return {
            "name": self.job_dir.name,
            "job_name": files.job_name,
            "job_id": job.get("job_id"),
            "benchmark": _benchmark(dataset),
            "model": llm.get("model"),
            "agent": agent,
            "started_at": results.get("started_at") or job.get("created_at")
            or (datetime.fromtimestamp(min(starts)).astimezone().isoformat() if starts else None),
            "updated_at": results.get("updated_at"),
            "state": state,
            "state_note": note,
            "n_trials": results.get("n_trials") if isinstance(results.get("n_trials"), int) else len({i.record.trial for i in tries}),
            "n_done": len(finals),
            "n_errored": sum(1 for t in finals if t.error_type),
            "mean_reward": _metric(report, "mean_reward"),
            "pass_rate": _metric(report, "pass_rate"),
            "pass_at_k": _top_pass_at_k(report),
            "coverage": report.coverage if report else None,
            "has_analysis": (self.job_dir / "analysis").is_dir(),
            "problems": files.problems + [f"{u.dir.name}: {u.reason}" for u in self.unreadable()],
        }

    def _detail(self) -> dict[str, Any]:
        finals = self.finals()
        tries = self.tries()
        report = job_metrics(finals)
        config = self.files.config or {}
        return {
            "summary": self.summary(),
            "config": {k: config.get(k) for k in ("n_attempts", "n_concurrent", "timeout_multiplier") if k in config},
            "metrics": report.model_dump() if report else None,
            "pass_at_k_curve": [_metric(report, m.name) | {"k": int(m.name[5:])}
                                for m in (report.metrics if report else []) if m.name.startswith("pass@") and m.reward_key == "reward"],
            "reward_histogram": reward_histogram([t.reward for t in finals]),
            "phases": {name: phase_stats(values).model_dump() for name, values in _phase_values(finals).items()},
            "errors": _errors(finals, self.job_dir),
            "concurrency": concurrency(tries, running=self.running),
            "tasks": task_rows(finals, tries),
            "unreadable": [{"dir": u.dir.name, "reason": u.reason} for u in self.unreadable()],
            "analysis": analysis_files(self.job_dir),
        }


def runner_active(job_dir: Path, status: Any) -> bool:
    """Is a runner working on the job now? It holds `<job>/.lock` while it runs; a job directory without a
    `.lock` at all was written by an evalkit that took no job lock, and then `results.json` is believed."""
    lock = job_dir / ".lock"
    if lock.exists() or lock.is_symlink():
        return lock_held(lock)
    return status == "running"


def _benchmark(dataset: dict[str, Any]) -> str | None:
    if dataset.get("name"):
        return str(dataset["name"])
    path = dataset.get("path")
    return Path(str(path)).name if path else None


def _kind(kind: str | None) -> str | None:
    """The reader passes a recorded kind through; one the metrics do not know counts as the agent's."""
    return None if kind is None else kind if kind in KINDS else "agent"


def job_metrics(finals: list[TryRecord]) -> MetricsReport | None:
    """Mean reward, pass rate and pass@k for k = 1 … (fewest attempts of any task), with task-clustered intervals."""
    if not finals:
        return None
    attempts = Counter(t.task for t in finals)
    top = min(attempts.values())
    ks = sorted({1, top} | {k for k in range(1, top + 1) if top <= MAX_CURVE_POINTS or k in (2, 3, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100)})
    records = [TrialRecord(task=t.task, attempt=t.attempt, rewards=t.rewards, error_kind=_kind(t.error_kind)) for t in finals]
    return compute_metrics(records, metrics=["mean_reward", "pass_rate"] + [f"pass@{k}" for k in ks])


def _metric(report: MetricsReport | None, name: str) -> dict[str, Any] | None:
    for m in report.metrics if report else []:
        if m.name == name and m.reward_key == "reward":
            return {"name": m.name, "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high, "n_tasks": m.n_tasks}
    return None


def _top_pass_at_k(report: MetricsReport | None) -> dict[str, Any] | None:
    names = [m.name for m in report.metrics if m.name.startswith("pass@")] if report else []
    return _metric(report, max(names, key=lambda n: int(n[5:]))) if names else None


def reward_histogram(rewards: list[float | None]) -> dict[str, list[Any]]:
    """Counts per distinct reward when there are few, else per tenth of the range; `no reward` last."""
    present = sorted(r for r in rewards if r is not None)
    labels: list[str] = []
    counts: list[int] = []
    distinct = sorted(set(present))
    if len(distinct) <= 12:
        tally = Counter(present)
        labels, counts = [f"{v:g}" for v in distinct], [tally[v] for v in distinct]
    else:
        lo, hi = present[0], present[-1]
        width = (hi - lo) / 10
        counts = [0] * 10
        for v in present:
            counts[min(9, int((v - lo) / width))] += 1
        labels = [f"{lo + i * width:.2g}–{lo + (i + 1) * width:.2g}" for i in range(10)]
    missing = len(rewards) - len(present)
    if missing:
        labels.append("no reward")
        counts.append(missing)
    return {"labels": labels, "counts": counts}


def _phase_values(finals: list[TryRecord]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = defaultdict(list)
    for t in finals:
        for name, seconds in t.phases.items():
            values[name].append(seconds)
    return values


def _errors(finals: list[TryRecord], job_dir: Path) -> dict[str, Any]:
    """Final-try errors by type and kind, and the analysis's primary causes when a report exists."""
    causes = None
    problems: list[str] = []
    report = read_optional(job_dir / "analysis" / "report_failed.json", problems)
    if isinstance(report, dict) and isinstance(report.get("causes"), dict):
        causes = {str(k): v.get("count") for k, v in report["causes"].items() if isinstance(v, dict) and isinstance(v.get("count"), int)}
    return {
        "by_type": dict(Counter(t.error_type for t in finals if t.error_type).most_common()),
        "by_kind": dict(Counter(t.error_kind for t in finals if t.error_kind).most_common()),
        "causes": causes,
    }


def concurrency(tries: list[TryInfo], *, running: bool) -> dict[str, list[float]]:
    """Tries in flight over time (seconds from the first start), at most CONCURRENCY_POINTS points."""
    events: list[tuple[float, int]] = []
    now = time.time()
    for info in tries:
        if info.started is None:
            continue
        events.append((info.started, 1))
        end = info.finished if info.finished is not None else (now if running else None)
        if end is not None:
            events.append((max(end, info.started), -1))
    if not events:
        return {"t": [], "n": []}
    events.sort()
    origin = events[0][0]
    points: list[tuple[float, int]] = []
    level = 0
    for at, delta in events:
        level += delta
        points.append((at - origin, level))
    if len(points) > CONCURRENCY_POINTS:
        span = points[-1][0] or 1.0
        bins: dict[int, int] = {}
        for at, n in points:
            b = min(CONCURRENCY_POINTS - 1, int(at / span * CONCURRENCY_POINTS))
            bins[b] = max(bins.get(b, 0), n)
        points = [(b * span / CONCURRENCY_POINTS, n) for b, n in sorted(bins.items())]
    return {"t": [round(p[0], 3) for p in points], "n": [p[1] for p in points]}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def task_rows(finals: list[TryRecord], tries: list[TryInfo]) -> list[dict[str, Any]]:
    """One row per task: its trials' rewards and errors, mean duration, and tokens and cost over every try."""
    n_tries = Counter(i.record.trial for i in tries)
    spend: dict[str, list[float | None]] = defaultdict(lambda: [0.0, 0.0, None])
    for info in tries:
        usage = info.record.usage if isinstance(info.record.usage, dict) else {}
        row = spend[info.record.task]
        row[0] = (row[0] or 0.0) + (_number(usage.get("input_tokens")) or 0.0)
        row[1] = (row[1] or 0.0) + (_number(usage.get("output_tokens")) or 0.0)
        if (cost := _number(usage.get("cost_usd"))) is not None:
            row[2] = (row[2] or 0.0) + cost
    by_task: dict[str, list[TryRecord]] = defaultdict(list)
    for t in finals:
        by_task[t.task].append(t)
    rows = []
    for task, trials in sorted(by_task.items()):
        scored = [t.reward or 0.0 for t in trials if t.error_kind not in ("infrastructure", "cancelled")]
        durations = [t.duration_sec for t in trials if t.duration_sec is not None]
        input_tokens, output_tokens, cost = spend[task]
        rows.append({
            "task": task,
            "attempts": [{"attempt": t.attempt, "try": t.dir.name, "reward": t.reward, "error": t.error_type,
                          "kind": t.error_kind, "tries": n_tries[t.trial]} for t in trials],
            "mean_reward": statistics.fmean(scored) if scored else None,
            "n_errors": sum(1 for t in trials if t.error_type),
            "duration_sec": statistics.fmean(durations) if durations else None,
            "input_tokens": int(input_tokens or 0),
            "output_tokens": int(output_tokens or 0),
            "cost_usd": cost,
        })
    return rows


ANALYSIS_REPORTS = (
    "report_failed.json",
    "report_resolved.json",
    "report_task_analysis.json",
    "traj_analysis/score_comparison.json",
    "instance_analysis/summary.json",
    "instance_analysis/correlations.json",
    "status.json",
)


def analysis_files(job_dir: Path) -> list[str]:
    """The analysis reports present (regular files only)."""
    out = []
    for rel in ANALYSIS_REPORTS:
        try:
            path = under(job_dir, "analysis", *rel.split("/"))
        except Refused:
            continue
        if path.is_file():
            out.append(rel)
    return out


class Catalog:
    """The jobs of one artifacts directory; `JobIndex`es are made on first use and kept."""

    def __init__(self, artifacts: Path) -> None:
        self.artifacts = artifacts
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[int, JobIndex]] = {}

    def job(self, name: str) -> JobIndex:
        """The index of `jobs/<name>`, refreshed; NotFound/Refused for a bad or missing name."""
        path = under(self.artifacts, "jobs", name)
        st = os.lstat(path)
        if not path.is_dir():
            raise NotFound(f"not found: job {name}")
        with self._lock:
            known = self._jobs.get(name)
            if known is None or known[0] != st.st_ino:  # a job removed and made again is a new job
                known = (st.st_ino, JobIndex(path))
                self._jobs[name] = known
        known[1].refresh()
        return known[1]

    def job_names(self) -> list[str]:
        jobs = self.artifacts / "jobs"
        if jobs.is_symlink() or not jobs.is_dir():
            return []
        return sorted(e.name for e in os.scandir(jobs) if e.is_dir(follow_symlinks=False))

    def jobs_list(self) -> dict[str, Any]:
        rows, problems = [], []
        for name in self.job_names():
            try:
                rows.append(self.job(name).summary())
            except (Refused, OSError) as exc:
                problems.append(f"jobs/{name}: {exc}")
        return {"jobs": rows, "archived": self.archived(problems), "problems": problems}

    def archived(self, problems: list[str]) -> list[dict[str, Any]]:
        """Runs listed in `artifacts/index.yaml`, linked to their job when its directory is still here."""
        index = read_optional(self.artifacts / "index.yaml", problems, read_yaml)
        runs = index.get("runs") if isinstance(index, dict) else None
        names = set(self.job_names())
        out = []
        for run in runs if isinstance(runs, list) else []:
            if not isinstance(run, dict):
                continue
            row = {k: run.get(k) for k in ("run", "run_id", "job_name", "started_at", "finished_at", "status",
                                           "mean_reward", "pass_rate", "n_trials")}
            job_dir = Path(str(run.get("job_dir") or ""))
            row["job"] = job_dir.name if job_dir.name in names else None
            out.append(row)
        return out
