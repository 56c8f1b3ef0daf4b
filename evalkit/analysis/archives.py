"""Run archives (`artifacts/archives/run_NNN/` + `artifacts/index.yaml`), the operational status, and clean-up.

Numbering is safe when runs finish at once: an exclusive `flock` on `archives/.lock` is held while the next
number is chosen, its directory made and the index rewritten (atomically: temp file + rename). Clean-up never
follows a symlink, never touches `archives/` or `index.yaml`, and skips a job whose `<job>/.lock` is held.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from evalkit.analysis.reader import read_job_files
from evalkit.lock import job_is_running
from evalkit.results import utcnow

ARCHIVE_SCHEMA_VERSION = 1
_RUN_DIR = re.compile(r"^run_(\d{3,})$")
RUNTIME_OUTPUTS = ("jobs", "litellm", "logs")
"""Git-ignored runtime outputs `clean_outputs` removes (plus the task cache with `repos=True`)."""


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _git_commit(repo_dir: Path | None) -> str | None:
    if repo_dir is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class ArchiveEntry(BaseModel):
    """One line of `artifacts/index.yaml`."""

    run: str
    """`run_NNN`."""
    run_id: str
    job_name: str
    job_dir: str
    started_at: str | None
    finished_at: str
    status: str | None
    mean_reward: float | None
    pass_rate: float | None
    n_trials: int | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_regular(src: Path, dst: Path) -> bool:
    if src.is_symlink() or not src.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    return True


def _monitor(files: Any, entry: ArchiveEntry) -> str:
    results = files.results or {}
    lines = [f"# {entry.run}: {entry.job_name}", "", "| | |", "|---|---|"]
    for label, value in (("run id", entry.run_id), ("status", entry.status), ("started", entry.started_at),
                         ("finished", entry.finished_at), ("trials", results.get("n_trials")),
                         ("finished trials", results.get("n_finished")), ("errored", results.get("n_errored")),
                         ("mean reward", entry.mean_reward), ("pass rate", entry.pass_rate)):
        lines.append(f"| {label} | {'' if value is None else value} |")
    errors = results.get("errors") or {}
    if errors:
        lines += ["", "## Errors", ""] + [f"- {name}: {count}" for name, count in sorted(errors.items())]
    return "\n".join(lines) + "\n"


def create_archive(
    artifacts_dir: Path,
    job_dir: Path,
    *,
    config_path: Path | None = None,
    scripts: Sequence[Path] = (),
    session_log: Path | None = None,
    monitor: str | None = None,
    repo_dir: Path | None = None,
    started_at: str | None = None,
) -> ArchiveEntry:
    """Archive one finished run as `archives/run_NNN/` and append it to `index.yaml`.

    config_path: the config as the user wrote it (default: the job's redacted snapshot `config.yaml`);
    scripts: files the run executed, copied to `scripts/`; session_log: copied to `session.log`;
    monitor: the monitor's markdown (default: a summary of `results.json`); repo_dir: the evalkit checkout
    whose commit is recorded."""
    artifacts_dir, job_dir = Path(artifacts_dir), Path(job_dir)
    files = read_job_files(job_dir)
    results = files.results or {}
    archives = artifacts_dir / "archives"
    with _flock(archives / ".lock"):
        numbers = [int(m[1]) for p in archives.iterdir() if (m := _RUN_DIR.match(p.name))]
        run = f"run_{max(numbers, default=0) + 1:03d}"
        target = archives / run
        target.mkdir()
        entry = ArchiveEntry(
            run=run, run_id=str((files.job or {}).get("job_id") or f"{files.job_name}/{run}"), job_name=files.job_name,
            job_dir=str(job_dir.resolve()), started_at=started_at or results.get("started_at") or (files.job or {}).get("created_at"),
            finished_at=utcnow().isoformat(), status=results.get("status"), mean_reward=results.get("mean_reward"),
            pass_rate=results.get("pass_rate"), n_trials=results.get("n_trials"))
        inputs: dict[str, str] = {}
        for name in ("config.yaml", "job.json", "tasks.lock.json", "results.json"):
            if _copy_regular(job_dir / name, target / "inputs" / name):
                inputs[f"inputs/{name}"] = _sha256(target / "inputs" / name)
        if not _copy_regular(config_path or job_dir / "config.yaml", target / "config.yaml"):
            _write_text_atomic(target / "config.yaml", "# no config was available to archive\n")
        copied_scripts = []
        for script in scripts:
            if _copy_regular(Path(script), target / "scripts" / Path(script).name):
                copied_scripts.append(Path(script).name)
        (target / "scripts").mkdir(exist_ok=True)
        if session_log is None or not _copy_regular(Path(session_log), target / "session.log"):
            _write_text_atomic(target / "session.log", "")
        _write_text_atomic(target / "monitor.md", monitor if monitor is not None else _monitor(files, entry))
        task_commits = [
            {"name": t.get("name"), "git_url": t.get("git_url"), "git_commit": t.get("git_commit_id") or t.get("git_commit")}
            for t in (files.tasks_lock or {}).get("tasks", []) if isinstance(t, dict) and t.get("git_url")
        ]
        metadata = {
            "schema_version": ARCHIVE_SCHEMA_VERSION, **entry.model_dump(), "host": socket.gethostname(),
            "repo_commit": _git_commit(repo_dir), "task_commits": task_commits,
            "results": {k: results.get(k) for k in ("status", "n_trials", "n_finished", "n_errored", "mean_reward",
                                                     "pass_rate", "pass_at_k", "errors", "metrics") if k in results},
            "inputs": inputs, "scripts": copied_scripts,
        }
        _write_text_atomic(target / "metadata.yaml", yaml.safe_dump(metadata, sort_keys=False))
        index_path = artifacts_dir / "index.yaml"
        index = yaml.safe_load(index_path.read_text()) if index_path.is_file() else None
        runs = index.get("runs", []) if isinstance(index, dict) else []
        runs.append(entry.model_dump())
        _write_text_atomic(index_path, yaml.safe_dump({"schema_version": ARCHIVE_SCHEMA_VERSION, "runs": runs}, sort_keys=False))
    return entry


# ----------------------------------------------------------------------------------------------- status


class JobStatus(BaseModel):
    job_name: str
    running: bool
    """Its `.lock` is held by a runner now."""
    status: str | None
    """`results.json` status; `running` without a held lock is shown as `stale`."""
    n_trials: int | None
    n_finished: int | None
    mean_reward: float | None
    updated_at: str | None


class StatusReport(BaseModel):
    """`evalkit status`: the operational snapshot of one artifacts directory."""

    artifacts_dir: str
    jobs: list[JobStatus]
    last_runs: list[dict[str, Any]]
    """The last entries of `index.yaml`, newest last."""
    disk_bytes: dict[str, int]
    """Bytes under each top-level directory (symlinks not followed)."""


def _du(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def status_snapshot(artifacts_dir: Path, *, last: int = 5) -> StatusReport:
    artifacts_dir = Path(artifacts_dir)
    jobs = []
    jobs_dir = artifacts_dir / "jobs"
    for job_dir in sorted(jobs_dir.iterdir()) if jobs_dir.is_dir() else []:
        if job_dir.is_symlink() or not job_dir.is_dir():
            continue
        files = read_job_files(job_dir)
        results = files.results or {}
        running = job_is_running(job_dir)
        status = results.get("status")
        jobs.append(JobStatus(job_name=files.job_name, running=running,
                              status="stale" if status == "running" and not running else status,
                              n_trials=results.get("n_trials"), n_finished=results.get("n_finished"),
                              mean_reward=results.get("mean_reward"), updated_at=results.get("updated_at")))
    index_path = artifacts_dir / "index.yaml"
    try:
        index = yaml.safe_load(index_path.read_text()) if index_path.is_file() else {}
    except (OSError, yaml.YAMLError):
        index = {}
    runs = index.get("runs", []) if isinstance(index, dict) else []
    disk = {p.name: _du(p) for p in sorted(artifacts_dir.iterdir()) if p.is_dir() and not p.is_symlink()} if artifacts_dir.is_dir() else {}
    return StatusReport(artifacts_dir=str(artifacts_dir), jobs=jobs, last_runs=runs[-last:], disk_bytes=disk)


def render_status(report: StatusReport) -> str:
    lines = [f"artifacts: {report.artifacts_dir}", ""]
    running = [j for j in report.jobs if j.running]
    lines.append(f"jobs: {len(report.jobs)} ({len(running)} running)")
    for j in report.jobs:
        progress = f"{j.n_finished}/{j.n_trials}" if j.n_trials is not None else "-"
        reward = "-" if j.mean_reward is None else f"{j.mean_reward:.3f}"
        lines.append(f"  {'*' if j.running else ' '} {j.job_name:<40} {str(j.status):<12} {progress:>9}  reward {reward}")
    runs = [f"  {r.get('run')}  {r.get('job_name')}  {r.get('finished_at')}  reward {r.get('mean_reward')}" for r in report.last_runs]
    lines += ["", "last runs:"] + (runs or ["  (none)"])
    lines += ["", "disk:"] + [f"  {name:<12} {size / 1e6:10.1f} MB" for name, size in report.disk_bytes.items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ clean


class CleanReport(BaseModel):
    removed: list[str]
    skipped: dict[str, str]
    """path → why it was kept."""


def _try_lock(lock_path: Path) -> int | None:
    """An fd holding `lock_path` exclusively, or None when another process holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def clean_outputs(artifacts_dir: Path, repos: bool = False, *, cache_dir: Path | None = None) -> CleanReport:
    """Remove git-ignored runtime outputs: `jobs/` (every job not running: its lock is taken while it is
    removed), `litellm/` (except running jobs' gateway directories), `logs/`; with `repos`, the task cache
    (`cache_dir`, default the user task cache). Never touches `archives/`, `index.yaml` or `datasets/`."""
    artifacts_dir = Path(artifacts_dir)
    report = CleanReport(removed=[], skipped={})
    running: set[str] = set()
    jobs = artifacts_dir / "jobs"
    if jobs.is_symlink():
        report.skipped[str(jobs)] = "a symlink; not followed"
    elif jobs.is_dir():
        for job_dir in sorted(jobs.iterdir()):
            if job_dir.is_symlink() or not job_dir.is_dir():
                job_dir.unlink()
                report.removed.append(str(job_dir))
                continue
            fd = _try_lock(job_dir / ".lock")
            if fd is None:
                running.add(job_dir.name)
                report.skipped[str(job_dir)] = "running (its .lock is held)"
                continue
            try:
                shutil.rmtree(job_dir)
            finally:
                os.close(fd)
            report.removed.append(str(job_dir))
    for name in ("litellm", "logs"):
        path = artifacts_dir / name
        if path.is_symlink():
            report.skipped[str(path)] = "a symlink; not followed"
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                if name == "litellm" and child.name in running:
                    report.skipped[str(child)] = "the gateway directory of a running job"
                    continue
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
                report.removed.append(str(child))
    if repos:
        from evalkit.adapters.harbor.config import default_cache_dir

        cache = cache_dir or default_cache_dir()
        if cache.is_symlink():
            report.skipped[str(cache)] = "a symlink; not followed"
        elif cache.is_dir():
            shutil.rmtree(cache)
            report.removed.append(str(cache))
    return report
