"""`BenchmarkEvaluator` inside a training loop, `engine="harbor"`: the agent reaches a fake OpenAI upstream
(speaking the real wire protocol) through the job's gateway, verifiers run in real containers. Two evaluations at
once in one loop, a cancelled evaluation that cleans up and resumes, stores that fail without failing the
evaluation, and the dashboard reading what the SQLite store recorded."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from evalkit import Benchmark, BenchmarkEvaluator, SQLiteStore
from evalkit.analysis.reader import read_trajectory
from evalkit.training import EvalRecord
from tests.api.policy import SMOKE_TASKS, reply
from tests.conftest import BENCHMARKS, job_containers, read_json
from tests.dashboard.conftest import Served
from tests.gateway.fake_upstream import FakeUpstream

SMOKE = Benchmark("evalkit-smoke", path=BENCHMARKS / "evalkit-smoke", version="1.0", include=SMOKE_TASKS)
KEYS = {f"{m}{s}" for m in ("mean_reward", "pass_rate") for s in ("", "/se", "/ci_low", "/ci_high")} | {"coverage"}
AGENT = {"name": "tests.api.agents:ChatAgent"}


def evaluator(tmp_path: Path, name: str, upstream: FakeUpstream, **extra) -> BenchmarkEvaluator:
    run_id = f"{name}-{uuid.uuid4().hex[:6]}"
    return BenchmarkEvaluator(**{
        "name": "api-" + name, "benchmark": SMOKE, "tokenizer": None, "engine": "harbor", "agent": AGENT,
        "workspace_dir": tmp_path / "artifacts", "run_id": run_id, "n_concurrent": 3,
        "store": SQLiteStore.for_run(tmp_path / "artifacts", run_id), "job": {"environment": {"network_mode": "none"}},
        "llm_api": {"model": "policy", "deployments": [{"model": "hosted_vllm/policy", "api_base": upstream.url}]},
        **extra})


def job_name(ev: BenchmarkEvaluator, step: int) -> str:
    return f"{ev.name}-{ev.run_id}-step{step}"


def check_two_of_three(metrics: dict[str, float]) -> None:
    assert set(metrics) == KEYS
    assert metrics["mean_reward"] == pytest.approx(2 / 3) and metrics["pass_rate"] == pytest.approx(2 / 3)
    assert metrics["coverage"] == 1.0
    assert 0.0 <= metrics["pass_rate/ci_low"] < 2 / 3 < metrics["pass_rate/ci_high"] <= 1.0


async def test_training_loop_evaluates_every_run_every_steps_and_the_dashboard_shows_it(tmp_path: Path):
    async with FakeUpstream("policy") as upstream:
        upstream.default = reply
        ev = evaluator(tmp_path, "loop", upstream, run_every=2)
        assert not BenchmarkEvaluator(name="off", benchmark="x", tokenizer=None).is_due(4)  # run_every=0 never fires
        results: dict[int, dict[str, float]] = {}
        for step in range(1, 5):
            await asyncio.sleep(0.01)  # a training step
            if ev.is_due(step):
                results[step] = await ev.evaluate(None, model_path="/checkpoints/current", step=step)
    assert sorted(results) == [2, 4]
    for metrics in results.values():
        check_two_of_three(metrics)
    job_dir = tmp_path / "artifacts" / "jobs" / job_name(ev, 2)
    calls = list(read_trajectory(job_dir / "hello-file__0" / "agent" / "litellm-trajectory.jsonl"))
    assert [c["status"] for c in calls] == [200, 200]
    assert calls[0]["request"]["messages"][1]["content"].startswith("Create the file `/app/hello.txt`")
    db = sqlite3.connect(ev.store.path)
    assert db.execute("SELECT step, benchmark, job_dir FROM evals ORDER BY step").fetchall() == [
        (s, "evalkit-smoke@1.0", f"jobs/{job_name(ev, s)}") for s in (2, 4)]
    rows = db.execute("SELECT task, reward, error_kind, input_tokens > 0, output_tokens > 0, trajectory_path FROM rollouts "
                      "JOIN evals ON evals.id = eval_id WHERE step = 2 ORDER BY task").fetchall()
    db.close()
    assert [r[:5] for r in rows] == [("fix-bash-max", 0.0, None, 1, 1), ("hello-file", 1.0, None, 1, 1), ("word-freq", 1.0, None, 1, 1)]
    assert rows[1][5] == f"jobs/{job_name(ev, 2)}/hello-file__0/agent/litellm-trajectory.jsonl"
    # the dashboard's Training runs page reads it: a series over the steps, rollouts linked to their trajectories
    async with Served(tmp_path / "artifacts") as server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/training/{ev.run_id}") as response:
            run = await response.json()
    points = run["series"]["evalkit-smoke@1.0"]["pass_rate"]
    assert [(p["step"], round(p["value"], 3)) for p in points] == [(2, 0.667), (4, 0.667)]
    assert run["evals"][0]["rollouts"][1]["trajectory"] == rows[1][5]


class FailingStore:
    async def record_eval(self, record: EvalRecord) -> None:
        raise OSError(28, "No space left on device")


class HangingStore:
    async def record_eval(self, record: EvalRecord) -> None:
        await asyncio.Event().wait()


async def test_two_evaluations_at_once_in_one_loop_and_stores_that_fail(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    async with FakeUpstream("left") as one, FakeUpstream("right") as two:
        one.default = two.default = lambda body: replace(reply(body), delay=0.5)
        left = evaluator(tmp_path, "left", one, store=FailingStore())
        right = evaluator(tmp_path, "right", two, store=HangingStore(), store_timeout_sec=0.5)
        with caplog.at_level(logging.ERROR, logger="evalkit"):
            a, b = await asyncio.gather(left.evaluate(None, step=7), right.evaluate(None, step=7))
    check_two_of_three(a)
    check_two_of_three(b)
    assert len(one.received) == len(two.received) == 5  # each upstream served only its own evaluation
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "evaluator api-left: the store did not record step 7: OSError: [Errno 28] No space left on device" in errors
    assert "evaluator api-right: the store did not record step 7: TimeoutError: " in errors
    for ev in (left, right):
        assert await job_containers(job_name(ev, 7)) == []


async def test_a_cancelled_evaluation_leaves_no_container_and_resumes(tmp_path: Path):
    async with FakeUpstream("slow") as upstream:
        upstream.default = lambda body: replace(reply(body), delay=1.0)
        ev = evaluator(tmp_path, "cancel", upstream, n_concurrent=1)
        name = job_name(ev, 3)
        job_dir = tmp_path / "artifacts" / "jobs" / name
        task = asyncio.create_task(ev.evaluate(None, step=3))
        while not list(job_dir.glob("*/result.json")) and not task.done():
            await asyncio.sleep(0.1)
        while not task.done() and not await job_containers(name):  # the second trial is running
            await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await job_containers(name) == []
        summary = read_json(job_dir / "results.json")
        assert summary["status"] == "interrupted" and summary["n_finished"] == 1
        (done,) = job_dir.glob("*/result.json")
        kept = done.read_bytes()
        metrics = await ev.evaluate(None, step=3)  # the same step again: resumed, not restarted
    check_two_of_three(metrics)
    assert done.read_bytes() == kept
    assert read_json(job_dir / "results.json")["n_tries"] == 3
    assert await job_containers(name) == []


def test_evaluator_config_and_mistakes():
    with pytest.raises(ValueError, match="evaluator 'x': chat_template shapes the built-in evalkit agent's prompts"):
        BenchmarkEvaluator(name="x", benchmark="b", tokenizer=None, chat_template={"system_prompt": "hi"})
    with pytest.raises(ValueError, match="evaluator 'x': engine='harbor' needs model_path"):
        BenchmarkEvaluator(name="x", benchmark="b@1.0", tokenizer=None, engine="harbor").job_config(step=1)
    with pytest.raises(ValueError, match=r"evaluator 'x': the live-sampler path \(engine=''\) drives the built-in"):
        asyncio.run(BenchmarkEvaluator(name="x", benchmark="b@1.0", tokenizer=None).evaluate(object(), step=1))
    config = BenchmarkEvaluator(name="x", benchmark="evalkit-smoke@1.0", tokenizer=None, engine="harbor", limit=2,
                                num_samples=3, metrics=["pass@3"], run_id="r 1").job_config(model_path="/ckpt/model.gguf", step=4)
    assert (config.job_name, config.n_attempts, config.dataset.name, config.dataset.version, config.dataset.n_tasks) == (
        "x-r-1-step4", 3, "evalkit-smoke", "1.0", 2)
    assert (config.llm_api.serve.engine, config.llm_api.serve.model, config.metrics) == ("llama_cpp", "/ckpt/model.gguf", ["pass@3"])
