"""The SQLite training store: the documented schema, evals across steps with their rollouts, and the dashboard's
`/api/training` reading them back."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson

from evalkit.training import EvalRecord, Rollout, SQLiteStore
from tests.dashboard.conftest import Served


def record(step: int, reward_b: float, artifacts: Path) -> EvalRecord:
    traj = artifacts / "jobs" / f"ev-step{step}" / "a__0" / "agent" / "litellm-trajectory.jsonl"
    traj.parent.mkdir(parents=True)
    traj.write_text("")
    return EvalRecord(
        run_id="run1", step=step, benchmark="evalkit-smoke@1.0", job_dir=artifacts / "jobs" / f"ev-step{step}",
        metrics={"mean_reward": (1 + reward_b) / 2, "mean_reward/ci_low": 0.0, "mean_reward/ci_high": 1.0, "coverage": 1.0},
        rollouts=[Rollout(task="a", attempt=0, reward=1.0, rewards={"reward": 1.0}, trajectory_path=traj, input_tokens=10,
                          output_tokens=3, token_ids=[[1, 2, 3]], logprobs=[[-0.1, -0.2, -0.3]]),
                  Rollout(task="b", attempt=0, reward=reward_b, rewards={"reward": reward_b}, error_kind="agent",
                          error_type="AgentTimeoutError")],
    )


async def test_evals_across_steps_are_stored_and_the_dashboard_reads_them(tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    store = SQLiteStore.for_run(artifacts, "run1")
    # two evals recorded concurrently (two evaluators of one run): each in its own transaction
    await asyncio.gather(store.record_eval(record(0, 0.0, artifacts)), store.record_eval(record(10, 1.0, artifacts)))
    await store.record_eval(record(20, 0.0, artifacts))
    again = record(20, 1.0, tmp_path / "again")
    await store.record_eval(again.model_copy(update={"job_dir": artifacts / "jobs" / "ev-step20"}))  # step 20 re-evaluated
    db = sqlite3.connect(store.path)
    evals = db.execute("SELECT run_id, step, benchmark, job_dir, metrics_json FROM evals ORDER BY step").fetchall()
    assert [(r[0], r[1], r[2], r[3]) for r in evals] == [("run1", s, "evalkit-smoke@1.0", f"jobs/ev-step{s}") for s in (0, 10, 20)]
    assert orjson.loads(evals[0][4])["mean_reward"] == 0.5
    rows = db.execute("SELECT task, attempt, reward, error_kind, trajectory_path, rewards_json, error_type, input_tokens, "
                      "output_tokens, token_ids_json, logprobs_json FROM rollouts JOIN evals ON evals.id = eval_id "
                      "WHERE step = 0 ORDER BY task").fetchall()
    db.close()
    assert rows == [("a", 0, 1.0, None, "jobs/ev-step0/a__0/agent/litellm-trajectory.jsonl", '{"reward":1.0}', None, 10, 3,
                     "[[1,2,3]]", "[[-0.1,-0.2,-0.3]]"),
                    ("b", 0, 0.0, "agent", None, '{"reward":0.0}', "AgentTimeoutError", 0, 0, None, None)]
    async with Served(artifacts) as server:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/api/training") as response:
                runs = await response.json()
            async with http.get(f"{server.url}/api/training/run1") as response:
                run = await response.json()
    assert runs["problems"] == [] and [r["run"] for r in runs["runs"]] == ["run1"]
    series = run["series"]["evalkit-smoke@1.0"]["mean_reward"]
    assert [(p["step"], p["value"], p["ci_low"], p["ci_high"]) for p in series] == [(0, 0.5, 0.0, 1.0), (10, 1.0, 0.0, 1.0),
                                                                                    (20, 1.0, 0.0, 1.0)]
    first = run["evals"][0]
    assert first["n_rollouts"] == 2 and first["job_dir"] == "jobs/ev-step0"
    assert first["rollouts"][0]["trajectory"] == "jobs/ev-step0/a__0/agent/litellm-trajectory.jsonl"
    assert "pass_rate" in first["metrics"]  # computed with its interval from the rollouts, as documented


async def test_a_store_outside_artifacts_keeps_absolute_paths(tmp_path: Path):
    store = SQLiteStore(tmp_path / "elsewhere" / "r.sqlite", artifacts_dir=tmp_path / "artifacts")
    rec = record(1, 1.0, tmp_path / "other")
    await store.record_eval(rec)
    db = sqlite3.connect(store.path)
    (job_dir,) = db.execute("SELECT job_dir FROM evals").fetchone()
    db.close()
    assert job_dir == str(rec.job_dir)
