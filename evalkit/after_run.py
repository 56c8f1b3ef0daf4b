"""What `evalkit run` does around a job: a session log, then analysis and a run archive.

Both post-run steps read only the job's files (they are the same code as `evalkit analyze` and the archive
functions), run in a thread, and can never change the job's results or its exit code: a failure is logged
and the command goes on.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evalkit.config import JobConfig

log = logging.getLogger("evalkit")
REPO_DIR = Path(__file__).resolve().parents[1]


@contextmanager
def session_log(path: Path) -> Iterator[Path]:
    """Record evalkit's log records (INFO and up) in `path` for the run, written by a listener thread so the
    event loop never waits on the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    listener = logging.handlers.QueueListener(records, file_handler)
    handler = logging.handlers.QueueHandler(records)
    previous_level = log.level
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    listener.start()
    try:
        yield path
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)
        listener.stop()
        file_handler.close()


async def after_run(config: JobConfig, session: Path | None) -> list[str]:
    """Analyse and archive a job that ran; returns one line per step for the user. Never raises."""
    return await asyncio.to_thread(_after_run, config, session)


def _after_run(config: JobConfig, session: Path | None) -> list[str]:
    lines = []
    if config.after_run.analyze:
        try:
            from evalkit.analysis import AnalysisConfig, analyze_job

            analysis = analyze_job(config.job_dir, AnalysisConfig(artifacts_dir=config.artifacts_dir))
            state = "written" if analysis.ok else f"written with {len(analysis.errors)} failed step(s)"
            lines.append(f"analysis: {analysis.out_dir} ({state})")
        except Exception:  # analysis must never change a job's outcome
            log.exception("analysis of %s failed", config.job_dir)
            lines.append("analysis: failed (see the session log)")
    if config.after_run.archive:
        try:
            from evalkit.analysis.archives import create_archive

            # The job's own snapshot of the config is archived: it is redacted, the user's file may not be.
            entry = create_archive(config.artifacts_dir, config.job_dir, session_log=session, repo_dir=REPO_DIR)
            lines.append(f"archive: {config.artifacts_dir / 'archives' / entry.run}")
        except Exception:
            log.exception("archiving %s failed", config.job_dir)
            lines.append("archive: failed (see the session log)")
    return lines
