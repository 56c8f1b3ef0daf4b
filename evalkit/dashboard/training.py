"""Training runs: evaluation metrics over training steps, from `artifacts/training/<run_id>.sqlite`.

The store's schema is in docs/architecture.md ("Training store"). Each database is opened read-only
(`mode=ro`) and never through a symlink; columns beyond the documented ones are ignored and missing optional
ones read as NULL, so the page keeps working while the store grows. An eval whose `metrics_json` has no
interval for a metric gets one computed from its rollouts with `evalkit.metrics.compute_metrics`.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from evalkit.dashboard.paths import NotFound, Refused, check_name, under
from evalkit.metrics import TrialRecord, compute_metrics

TRAINING_DIR = "training"
SUFFIX = ".sqlite"
MAX_ROLLOUTS = 5000


def run_names(artifacts: Path) -> list[str]:
    root = artifacts / TRAINING_DIR
    if root.is_symlink() or not root.is_dir():
        return []
    return sorted(e.name[: -len(SUFFIX)] for e in os.scandir(root)
                  if e.name.endswith(SUFFIX) and e.is_file(follow_symlinks=False))


def _connect(artifacts: Path, run: str) -> sqlite3.Connection:
    path = under(artifacts, TRAINING_DIR, check_name(run) + SUFFIX)
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise Refused("path refused: not a regular file", 403)
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2.0)
        db.row_factory = sqlite3.Row
        db.execute("SELECT 1 FROM evals LIMIT 1")
    except sqlite3.Error as exc:
        raise Refused(f"training run {run}: not a readable training store ({exc})", 422) from None
    return db


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _select(db: sqlite3.Connection, table: str, wanted: tuple[str, ...], tail: str = "", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    have = _columns(db, table)
    cols = ", ".join(c if c in have else f"NULL AS {c}" for c in wanted)
    return [dict(r) for r in db.execute(f"SELECT {cols} FROM {table} {tail}", args)]


def _flat(metrics_json: Any) -> dict[str, float]:
    try:
        data = orjson.loads(metrics_json) if isinstance(metrics_json, (str, bytes)) else None
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _with_intervals(flat: dict[str, float], rollouts: list[dict[str, Any]]) -> dict[str, float]:
    """`flat`, plus the mean reward and pass rate (with intervals) from the rollouts where `flat` lacks them."""
    if not rollouts or all(f"{name}/ci_low" in flat for name in ("mean_reward", "pass_rate")):
        return flat
    records = [TrialRecord(task=str(r["task"]), attempt=int(r["attempt"] or 0),
                           rewards=None if r["reward"] is None else {"reward": float(r["reward"])},
                           error_kind=r["error_kind"] if r["error_kind"] in ("infrastructure", "agent", "verifier", "task", "cancelled") else None)
               for r in rollouts]
    return compute_metrics(records, metrics=["mean_reward", "pass_rate"]).flat() | flat


def runs(artifacts: Path) -> dict[str, Any]:
    """Every run's evals with their metrics (series by benchmark and metric name)."""
    out, problems = [], []
    for name in run_names(artifacts):
        try:
            out.append(run(artifacts, name, with_rollouts=False))
        except Refused as exc:
            problems.append(str(exc))
    return {"runs": out, "problems": problems}


def run(artifacts: Path, name: str, *, with_rollouts: bool = True) -> dict[str, Any]:
    db = _connect(artifacts, name)
    try:
        evals = _select(db, "evals", ("id", "run_id", "step", "benchmark", "metrics_json", "job_dir", "created_at"),
                        "ORDER BY step, id")
        have_rollouts = "eval_id" in _columns(db, "rollouts")
        by_eval: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        if have_rollouts:
            for r in _select(db, "rollouts", ("eval_id", "task", "attempt", "reward", "error_kind", "trajectory_path")):
                by_eval[r["eval_id"]].append(r)
    except sqlite3.Error as exc:
        raise Refused(f"training run {name}: {exc}", 422) from None
    finally:
        db.close()
    series: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    rows = []
    for e in evals:
        flat = _with_intervals(_flat(e["metrics_json"]), by_eval.get(e["id"], []))
        for key, value in flat.items():
            if "/" in key:
                continue
            series[str(e["benchmark"])][key].append({"step": e["step"], "value": value, "ci_low": flat.get(f"{key}/ci_low"),
                                                     "ci_high": flat.get(f"{key}/ci_high")})
        row = {k: e[k] for k in ("id", "step", "benchmark", "job_dir", "created_at")} | {"metrics": flat,
                                                                                          "n_rollouts": len(by_eval.get(e["id"], []))}
        if with_rollouts:
            row["rollouts"] = [_rollout(artifacts, r) for r in by_eval.get(e["id"], [])[:MAX_ROLLOUTS]]
        rows.append(row)
    return {"run": name, "evals": rows, "series": series}


def _rollout(artifacts: Path, r: dict[str, Any]) -> dict[str, Any]:
    """A rollout; its trajectory is linked only when the path stays under the artifacts directory."""
    link = None
    path = r.get("trajectory_path")
    if isinstance(path, str) and path:
        try:
            rel = Path(path).resolve().relative_to(artifacts.resolve()) if os.path.isabs(path) else Path(path)
            under(artifacts, *rel.parts)
            link = rel.as_posix()
        except (ValueError, Refused, NotFound):
            link = None
    return {"task": r.get("task"), "attempt": r.get("attempt"), "reward": r.get("reward"), "error_kind": r.get("error_kind"),
            "trajectory": link}
