"""Where a training run's evaluations go: `EvalStore`, a small protocol (one eval per step with its per-task
rollouts), and `SQLiteStore`, the implementation the dashboard's Training runs page reads.

The schema is the one in docs/architecture.md ("Training store"): `evals` and `rollouts` with their documented
columns, plus optional ones for what training needs of a rollout (all rewards, token usage, token ids and
logprobs) that the dashboard ignores. Writes happen in a worker thread, one transaction per eval, so a reader
never sees an eval without its rollouts and the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Protocol

import orjson
from pydantic import BaseModel, Field

from evalkit.results import utcnow

TRAINING_DIR = "training"
"""`artifacts/training/<run_id>.sqlite`: where the dashboard looks for training runs."""


class Rollout(BaseModel):
    """One trial of an eval, with what a trainer needs of it."""

    task: str
    attempt: int
    reward: float | None
    """Primary reward; None when the verifier gave none."""
    rewards: dict[str, float] | None = None
    """Every reward key the verifier wrote."""
    error_kind: str | None = None
    """infrastructure | agent | verifier | task | cancelled; None: no error."""
    error_type: str | None = None
    trajectory_path: Path | None = None
    """The trial's `litellm-trajectory.jsonl` (every model call, same schema on both engines)."""
    input_tokens: int = 0
    output_tokens: int = 0
    token_ids: list[list[int]] | None = None
    """Completion token ids of each model call, where the sampler or upstream gave them."""
    logprobs: list[list[float]] | None = None
    """Their logprobs, likewise."""


class EvalRecord(BaseModel):
    """One evaluation of one checkpoint on one benchmark."""

    run_id: str
    step: int
    benchmark: str
    """The benchmark id (`name@version`)."""
    metrics: dict[str, float]
    """`MetricsReport.flat()`: values, SEs, interval ends and coverage."""
    job_dir: Path | None = None
    created_at: datetime = Field(default_factory=utcnow)
    rollouts: list[Rollout] = []


class EvalStore(Protocol):
    """Records one eval per step (a step evaluated again replaces its record) with its rollouts. Best-effort for the caller: `BenchmarkEvaluator` logs a
    store that raises or hangs and carries on."""

    async def record_eval(self, record: EvalRecord) -> None: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS evals (
  id           INTEGER PRIMARY KEY,
  run_id       TEXT NOT NULL,
  step         INTEGER NOT NULL,
  benchmark    TEXT NOT NULL,
  metrics_json TEXT NOT NULL,
  job_dir      TEXT,
  created_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollouts (
  eval_id         INTEGER NOT NULL REFERENCES evals(id),
  task            TEXT NOT NULL,
  attempt         INTEGER NOT NULL,
  reward          REAL,
  error_kind      TEXT,
  trajectory_path TEXT,
  rewards_json    TEXT,
  error_type      TEXT,
  input_tokens    INTEGER,
  output_tokens   INTEGER,
  token_ids_json  TEXT,
  logprobs_json   TEXT
);
CREATE INDEX IF NOT EXISTS rollouts_eval ON rollouts(eval_id);
"""


class SQLiteStore:
    """An `EvalStore` in one SQLite file; paths are stored relative to `artifacts_dir` when under it (the
    dashboard links trajectories only then)."""

    def __init__(self, path: Path | str, *, artifacts_dir: Path | str | None = None) -> None:
        self.path = Path(path)
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir is not None else self.path.parent.parent

    @classmethod
    def for_run(cls, artifacts_dir: Path | str, run_id: str) -> SQLiteStore:
        """`<artifacts>/training/<run_id>.sqlite`, where `evalkit view` finds it."""
        artifacts = Path(artifacts_dir)
        return cls(artifacts / TRAINING_DIR / f"{run_id}.sqlite", artifacts_dir=artifacts)

    async def record_eval(self, record: EvalRecord) -> None:
        await asyncio.to_thread(self._write, record)

    def _relative(self, path: Path | None) -> str | None:
        if path is None:
            return None
        try:
            return path.resolve().relative_to(self.artifacts_dir.resolve()).as_posix()
        except ValueError:
            return str(path)

    def _write(self, record: EvalRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0)
        try:
            with db:
                db.executescript(SCHEMA)
                # one eval per (run, step, benchmark): evaluating a step again replaces its record
                old = "SELECT id FROM evals WHERE run_id = ? AND step = ? AND benchmark = ?"
                key = (record.run_id, record.step, record.benchmark)
                db.execute(f"DELETE FROM rollouts WHERE eval_id IN ({old})", key)
                db.execute(f"DELETE FROM evals WHERE id IN ({old})", key)
                cursor = db.execute(
                    "INSERT INTO evals (run_id, step, benchmark, metrics_json, job_dir, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (record.run_id, record.step, record.benchmark, orjson.dumps(record.metrics).decode(),
                     self._relative(record.job_dir), record.created_at.isoformat()),
                )
                eval_id = cursor.lastrowid
                db.executemany(
                    "INSERT INTO rollouts (eval_id, task, attempt, reward, error_kind, trajectory_path, rewards_json, "
                    "error_type, input_tokens, output_tokens, token_ids_json, logprobs_json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(eval_id, r.task, r.attempt, r.reward, r.error_kind, self._relative(r.trajectory_path),
                      _json(r.rewards), r.error_type, r.input_tokens, r.output_tokens, _json(r.token_ids), _json(r.logprobs))
                     for r in record.rollouts],
                )
        finally:
            db.close()


def _json(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()
