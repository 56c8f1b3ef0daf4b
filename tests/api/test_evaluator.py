"""`BenchmarkEvaluator` inside a training loop: the built-in agent driven by a scripted in-process sampler (the
live-sampler path) or reaching a fake OpenAI upstream through the job's gateway (`engine="harbor"`), verifiers in
real containers. Two evaluations at once in one loop, a cancelled evaluation that cleans up and resumes, stores
that fail without failing the evaluation, and the dashboard reading what the SQLite store recorded."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from pathlib import Path

import aiohttp
import pytest

from evalkit import Benchmark, BenchmarkEvaluator, SQLiteStore
from evalkit.analysis.reader import read_trajectory
from evalkit.training import EvalRecord
from tests.api.policy import SMOKE_TASKS, SYSTEM, USER, ScriptedSampler, reply
from tests.conftest import BENCHMARKS, job_containers, read_json
from tests.dashboard.conftest import Served
from tests.gateway.fake_upstream import FakeUpstream

SMOKE = Benchmark("evalkit-smoke", path=BENCHMARKS / "evalkit-smoke", version="1.0", include=SMOKE_TASKS)
KEYS = {f"{m}{s}" for m in ("mean_reward", "pass_rate") for s in ("", "/se", "/ci_low", "/ci_high")} | {"coverage"}
TEMPLATE = {"system_prompt": SYSTEM, "user_template": USER, "enable_thinking": False}


def evaluator(tmp_path: Path, name: str, **extra) -> BenchmarkEvaluator:
    run_id = f"{name}-{uuid.uuid4().hex[:6]}"
    return BenchmarkEvaluator(**{
        "name": "api-" + name, "benchmark": SMOKE, "tokenizer": None, "chat_template": TEMPLATE,
        "workspace_dir": tmp_path / "artifacts", "run_id": run_id, "n_concurrent": 3,
        "store": SQLiteStore.for_run(tmp_path / "artifacts", run_id), "job": {"environment": {"network_mode": "none"}},
        **extra})


def harbor(upstream: FakeUpstream) -> dict:
    return {"engine": "harbor",
            "llm_api": {"model": "policy", "deployments": [{"model": "hosted_vllm/policy", "api_base": upstream.url}]}}


def job_name(ev: BenchmarkEvaluator, step: int) -> str:
    return f"{ev.name}-{ev.run_id}-step{step}"


def check_two_of_three(metrics: dict[str, float]) -> None:
    assert set(metrics) == KEYS
    assert metrics["mean_reward"] == pytest.approx(2 / 3) and metrics["pass_rate"] == pytest.approx(2 / 3)
    assert metrics["coverage"] == 1.0
    assert 0.0 <= metrics["pass_rate/ci_low"] < 2 / 3 < metrics["pass_rate/ci_high"] <= 1.0


async def test_training_loop_evaluates_every_run_every_steps_with_a_live_sampler(tmp_path: Path):
    ev = evaluator(tmp_path, "loop", run_every=2)
    sampler = ScriptedSampler()
    assert not BenchmarkEvaluator(name="off", benchmark="x", tokenizer=None).is_due(4)  # run_every=0 never fires
    results: dict[int, dict[str, float]] = {}
    for step in range(1, 5):
        await asyncio.sleep(0.01)  # a training step
        if ev.is_due(step):
            results[step] = await ev.evaluate(sampler, step=step)
    assert sorted(results) == [2, 4]
    for metrics in results.values():
        check_two_of_three(metrics)
    # the chat template and the sampling settings reached the sampler
    messages, sampling = sampler.calls[0]
    assert messages[0] == {"role": "system", "content": SYSTEM}
    assert messages[1]["role"] == "user" and messages[1]["content"].startswith("Solve this task:\n")
    assert (sampling.max_tokens, sampling.temperature, sampling.chat_template_kwargs) == (256, 0.0, {"enable_thinking": False})
    # every sampler call is in its trial's trajectory, in the gateway's schema
    job_dir = tmp_path / "artifacts" / "jobs" / job_name(ev, 2)
    calls = list(read_trajectory(job_dir / "hello-file__0" / "agent" / "litellm-trajectory.jsonl"))
    assert [c["status"] for c in calls] == [200, 200] and calls[0]["request"]["messages"][0]["content"] == SYSTEM
    assert calls[0]["response"]["choices"][0]["token_ids"] == [1, 2, 3]
    assert read_json(job_dir / "hello-file__0" / "result.json")["agent_outcome"]["usage"]["output_tokens"] == 5
    # the store has one eval per step, with what a trainer needs of each rollout
    db = sqlite3.connect(ev.store.path)
    assert db.execute("SELECT step, benchmark, job_dir FROM evals ORDER BY step").fetchall() == [
        (s, "evalkit-smoke@1.0", f"jobs/{job_name(ev, s)}") for s in (2, 4)]
    rows = db.execute("SELECT task, reward, input_tokens, output_tokens, token_ids_json, logprobs_json, trajectory_path "
                      "FROM rollouts JOIN evals ON evals.id = eval_id WHERE step = 2 ORDER BY task").fetchall()
    db.close()
    assert [(r[0], r[1]) for r in rows] == [("fix-bash-max", 0.0), ("hello-file", 1.0), ("word-freq", 1.0)]
    assert rows[1][2:6] == (70, 5, "[[1,2,3],[7,8]]", "[[-0.1,-0.2,-0.3],[-0.5,-0.25]]")
    assert rows[0][4:6] == ("[[7,8]]", "[[-0.5,-0.25]]")  # gave up at once: one call, no command
    assert rows[1][6] == f"jobs/{job_name(ev, 2)}/hello-file__0/agent/litellm-trajectory.jsonl"
    # the dashboard's Training runs page reads it: a series over the steps, rollouts linked to their trajectories
    async with Served(tmp_path / "artifacts") as server, aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/api/training/{ev.run_id}") as response:
            run = await response.json()
    points = run["series"]["evalkit-smoke@1.0"]["pass_rate"]
    assert [(p["step"], round(p["value"], 3)) for p in points] == [(2, 0.667), (4, 0.667)]
    assert run["evals"][0]["rollouts"][1]["trajectory"] == rows[1][6]


class FailingStore:
    async def record_eval(self, record: EvalRecord) -> None:
        raise OSError(28, "No space left on device")


class HangingStore:
    async def record_eval(self, record: EvalRecord) -> None:
        await asyncio.Event().wait()


async def test_two_evaluations_at_once_in_one_loop_and_stores_that_fail(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    left = evaluator(tmp_path, "left", store=FailingStore())
    right = evaluator(tmp_path, "right", store=HangingStore(), store_timeout_sec=0.5)
    samplers = ScriptedSampler(delay=0.5), ScriptedSampler(delay=0.5)
    with caplog.at_level(logging.ERROR, logger="evalkit"):
        a, b = await asyncio.gather(left.evaluate(samplers[0], step=7), right.evaluate(samplers[1], step=7))
    check_two_of_three(a)
    check_two_of_three(b)
    assert len(samplers[0].calls) == len(samplers[1].calls) == 5  # each sampler served only its own evaluation
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "evaluator api-left: the store did not record step 7: OSError: [Errno 28] No space left on device" in errors
    assert "evaluator api-right: the store did not record step 7: TimeoutError: " in errors
    for ev in (left, right):
        assert await job_containers(job_name(ev, 7)) == []


async def test_a_cancelled_evaluation_leaves_no_container_and_resumes(tmp_path: Path):
    ev = evaluator(tmp_path, "cancel", n_concurrent=1)
    name = job_name(ev, 3)
    job_dir = tmp_path / "artifacts" / "jobs" / name
    task = asyncio.create_task(ev.evaluate(ScriptedSampler(delay=1.0), step=3))
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
    metrics = await ev.evaluate(ScriptedSampler(), step=3)  # the same step again: resumed, not restarted
    check_two_of_three(metrics)
    assert done.read_bytes() == kept
    assert read_json(job_dir / "results.json")["n_tries"] == 3
    assert await job_containers(name) == []


async def test_harbor_engine_scores_the_checkpoint_through_the_gateway(tmp_path: Path):
    async with FakeUpstream("policy") as upstream:
        upstream.default = reply
        ev = evaluator(tmp_path, "harbor", model_name="policy", metrics=["avg", "pass_rate"], **harbor(upstream))
        metrics = await ev.evaluate(None, model_path="/checkpoints/step-5", step=5)
    check_two_of_three(metrics)
    first = upstream.received[0].body  # the same prompt shape as on the live-sampler path
    assert first["messages"][0] == {"role": "system", "content": SYSTEM}
    assert first["messages"][1]["content"].startswith("Solve this task:\n")
    assert (first["max_tokens"], first["temperature"], first["chat_template_kwargs"]) == (256, 0.0, {"enable_thinking": False})
    calls = list(read_trajectory(tmp_path / "artifacts" / "jobs" / job_name(ev, 5) / "hello-file__0" / "agent" /
                                 "litellm-trajectory.jsonl"))
    assert [c["status"] for c in calls] == [200, 200] and calls[0]["request"]["messages"][0]["content"] == SYSTEM
    db = sqlite3.connect(ev.store.path)
    assert db.execute("SELECT COUNT(*) FROM rollouts WHERE input_tokens > 0").fetchone() == (3,)
    db.close()


async def test_harbor_engine_with_another_agent(tmp_path: Path):
    async with FakeUpstream("policy") as upstream:
        upstream.default = reply
        ev = evaluator(tmp_path, "chat", chat_template={}, agent={"name": "tests.api.agents:ChatAgent"}, **harbor(upstream))
        check_two_of_three(await ev.evaluate(None, step=1))
    assert upstream.received[0].body["messages"][0]["content"] == "You are the policy under evaluation."


def test_evaluator_config_and_mistakes():
    with pytest.raises(ValueError, match=r"chat_template.user_template must contain \{instruction\}"):
        BenchmarkEvaluator(name="x", benchmark="b", tokenizer=None, chat_template={"user_template": "no slot"})
    with pytest.raises(ValueError, match="evaluator 'x': agent 'my:Agent': chat_template and the live-sampler path drive "
                       "the built-in evalkit agent; another agent needs engine='harbor' and no chat_template"):
        BenchmarkEvaluator(name="x", benchmark="b", tokenizer=None, agent={"name": "my:Agent"})
    with pytest.raises(ValueError, match="evaluator 'x': engine='harbor' needs model_path"):
        BenchmarkEvaluator(name="x", benchmark="b@1.0", tokenizer=None, engine="harbor").job_config(step=1)
    config = BenchmarkEvaluator(name="x", benchmark="evalkit-smoke@1.0", tokenizer=None, engine="harbor", limit=2,
                                num_samples=3, metrics=["pass@3"], run_id="r 1").job_config(model_path="/ckpt/model.gguf", step=4)
    assert (config.job_name, config.n_attempts, config.dataset.name, config.dataset.version, config.dataset.n_tasks) == (
        "x-r-1-step4", 3, "evalkit-smoke", "1.0", 2)
    assert (config.llm_api.serve.engine, config.llm_api.serve.model, config.metrics) == ("llama_cpp", "/ckpt/model.gguf", ["pass@3"])
    assert (config.agent.name, config.agent.model.max_tokens, config.agent.model.temperature) == ("evalkit", 256, 0.0)
