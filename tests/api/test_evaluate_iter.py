"""`evaluate_iter` yields each trial's result as it finishes; evaluations share one event loop without
shared state; a cancelled evaluation removes its containers and leaves a resumable job directory."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path

from evalkit import TrialResult, evaluate, evaluate_iter
from tests.conftest import job_containers, read_json, slow_tasks, unique


def config(tmp_path: Path, name: str, tasks: Path, **extra) -> dict:
    return {"job_name": name, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tasks)},
            "environment": {"network_mode": "none"}, "n_concurrent": 1, **extra}


async def test_results_arrive_one_by_one_and_a_finished_job_resumes_to_the_same_results(tmp_path: Path):
    name = unique("iter")
    cfg = config(tmp_path, name, slow_tasks(tmp_path / "tasks", 3), metrics=["avg"])
    seen: list[TrialResult] = []
    async with aclosing(evaluate_iter(cfg)) as results:
        async for result in results:
            seen.append(result)
            done = read_json(tmp_path / "jobs" / name / f"{result.trial_name}" / "result.json")
            assert done["rewards"] == {"reward": 1.0}  # yielded after its result is on disk
    assert sorted(r.trial_name for r in seen) == ["slow-00__0", "slow-01__0", "slow-02__0"]
    again = [r async for r in evaluate_iter(cfg)]  # resumed: nothing left to run, the stored results come back
    assert sorted(r.trial_name for r in again) == sorted(r.trial_name for r in seen)
    final = await evaluate(cfg)
    assert final.summary.status == "finished" and final.summary.n_tries == 3
    assert final.summary.metrics.metrics[0].value == 1.0


async def test_two_evaluations_run_concurrently_in_one_loop(tmp_path: Path):
    names = [unique("left"), unique("right")]
    events: list[str] = []

    async def consume(name: str) -> int:
        cfg = config(tmp_path, name, slow_tasks(tmp_path / name, 3, seconds=2.0))
        count = 0
        async for _ in evaluate_iter(cfg):
            events.append(name)
            count += 1
        return count

    async def training_steps() -> int:
        steps = 0
        while len(events) < 6:
            await asyncio.sleep(0.05)  # the loop stays free for the host's own work
            steps += 1
        return steps

    counts = await asyncio.gather(consume(names[0]), consume(names[1]), training_steps())
    assert counts[:2] == [3, 3] and counts[2] > 0
    # one trial at a time per job: interleaved results mean both jobs ran at once
    first_done = {name: events.index(name) for name in names}
    last_done = {name: len(events) - 1 - events[::-1].index(name) for name in names}
    assert first_done[names[0]] < last_done[names[1]] and first_done[names[1]] < last_done[names[0]], events
    for name in names:
        assert read_json(tmp_path / "jobs" / name / "results.json")["status"] == "finished"
        assert await job_containers(name) == []


async def test_cancelled_evaluation_removes_its_containers_and_resumes(tmp_path: Path):
    name = unique("cancel")
    cfg = config(tmp_path, name, slow_tasks(tmp_path / "tasks", 4, seconds=3.0))
    job_dir = tmp_path / "jobs" / name
    first = asyncio.get_running_loop().create_future()

    async def consume() -> None:
        async for result in evaluate_iter(cfg):
            if not first.done():
                first.set_result(result)

    task = asyncio.create_task(consume())
    kept = await first
    while not task.done() and not await job_containers(name):  # the next trial's container is up
        await asyncio.sleep(0.1)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert task.cancelled()
    assert await job_containers(name) == []
    summary = read_json(job_dir / "results.json")
    assert summary["status"] == "interrupted" and summary["n_finished"] == 1
    metrics = summary["metrics"]  # the stopped trials are not failures: not scored, they lower coverage
    assert (metrics["n_cancelled"], metrics["n_scored"], metrics["coverage"]) == (3, 1, 0.25)
    assert metrics["metrics"][0]["value"] == 1.0
    kept_bytes = (job_dir / kept.trial_name / "result.json").read_bytes()

    resumed = await evaluate(cfg)
    assert resumed.summary.status == "finished" and len(resumed.trials) == 4
    assert (job_dir / kept.trial_name / "result.json").read_bytes() == kept_bytes  # not run again
    assert resumed.summary.metrics.coverage == 1.0 and resumed.summary.metrics.n_cancelled == 0
    assert await job_containers(name) == []
