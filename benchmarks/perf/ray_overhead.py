"""What running on Ray adds per trial: the same trivial trials through the local Docker backend, a one-node
and a two-node Ray cluster started on this machine (separate raylets, one shared Docker engine), same run.

Every trial does the same Docker work (start a container, upload solution/ and tests/, run them, read the
reward, copy the logs out, remove the container); on Ray every `Environment` call is also a call to the
node's actor and every file comes back through the driver. Figures per path: wall time, mean try duration
(`result.json` started → finished) and its median; `added_ms_per_trial` is the Ray path's mean try
duration minus the local one's, measured in the same run (machine speed cancels out); each path runs
`--repeat` times, alternating, and the best of each counts (noise only ever adds time). The image is built
before timing starts. Cluster start-up is not timed; an actor's start (once per node and job) is in the
wall time. On a machine shared with other work the try durations are noisy, so the run also measures what
the Ray path adds in isolation: `actor_calls_per_try` (counted) × the round trip of a no-op actor call on
the other node (`call_rtt_ms`, median of 200) = `estimated_added_ms_per_trial`.

    .venv/bin/python benchmarks/perf/ray_overhead.py [--tasks 200] [--concurrency 4] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from trial_overhead import make_tasks  # noqa: E402

from evalkit import evaluate  # noqa: E402
from evalkit.environments import ray_cluster  # noqa: E402

OBJECT_STORE = 80 * 1024 * 1024


def paths(concurrency: int) -> dict[str, dict]:
    """The three paths. Two nodes get half the slots each: images follow the tries, so with room to spare
    one node would take every try of a one-image dataset and the second would idle."""
    per_node = max(1, (concurrency + 1) // 2)
    return {
        "local": {"backend": "docker", "network_mode": "host"},
        "ray_1_node": {"backend": "ray", "network_mode": "host", "ray": {"resources": {"bench_node_a": 1}, "max_trials_per_node": concurrency}},
        "ray_2_nodes": {"backend": "ray", "network_mode": "host", "ray": {"resources": {"docker": 1}, "max_trials_per_node": per_node}},
    }


async def run_path(tasks_dir: Path, environment: dict, concurrency: int, jobs_dir: Path) -> dict:
    start = time.perf_counter()
    result = await evaluate({"job_name": jobs_dir.name, "jobs_dir": str(jobs_dir.parent), "n_concurrent": concurrency,
                             "dataset": {"path": str(tasks_dir)}, "environment": environment})
    wall = time.perf_counter() - start
    summary = result.summary
    assert summary.n_finished == summary.n_trials == summary.n_tries and summary.mean_reward == 1.0, summary
    durations = [(t.finished_at - t.started_at).total_seconds() for t in result.trials if t.finished_at]
    nodes = {k: n.tries for k, n in (summary.nodes or {}).items()}
    return {"wall_s": wall, "try_mean_s": statistics.fmean(durations), "try_median_s": statistics.median(durations), "tries_per_node": nodes}


def count_actor_calls() -> list[str]:
    """Every actor call a try makes through the backend (`RayBackend.call_raw`: the environment's calls, and
    a model route's when there is one), by method (the benchmark's own instrument)."""
    calls: list[str] = []
    forward = ray_cluster.RayBackend.call_raw

    async def counted(self, node, method, doing, *args):  # type: ignore[no-untyped-def]
        calls.append(method)
        return await forward(self, node, method, doing, *args)

    ray_cluster.RayBackend.call_raw = counted  # type: ignore[method-assign]
    return calls


async def call_rtt_ms(node_resource: str, n: int = 200) -> float:
    import ray

    @ray.remote(num_cpus=0, resources={node_resource: 0.01})
    class Echo:
        async def echo(self, value: bytes) -> bytes:
            return value

    echo = Echo.remote()
    await echo.echo.remote(b"")
    times = []
    for _ in range(n):
        start = time.perf_counter()
        await echo.echo.remote(b"x" * 256)
        times.append(time.perf_counter() - start)
    ray.kill(echo)
    return statistics.median(times) * 1000


async def measure(tasks_dir: Path, root: Path, concurrency: int, repeat: int) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in paths(concurrency)}
    calls = count_actor_calls()
    for i in range(repeat):
        for name, environment in paths(concurrency).items():
            before = len(calls)
            runs[name].append(await run_path(tasks_dir, environment, concurrency, root / "jobs" / f"{name}-{i}"))
            runs[name][-1]["calls"] = len(calls) - before
    best = {name: min(values, key=lambda r: r["try_mean_s"]) for name, values in runs.items()}
    local = best["local"]
    figures = {}
    for name, figure in best.items():
        figures[name] = {
            "wall_s": round(figure["wall_s"], 2),
            "try_mean_ms": round(figure["try_mean_s"] * 1000, 1),
            "try_median_ms": round(figure["try_median_s"] * 1000, 1),
            "tries_per_node": figure["tries_per_node"],
        }
        if name != "local":
            figures[name]["added_ms_per_trial"] = round((figure["try_mean_s"] - local["try_mean_s"]) * 1000, 1)
            figures[name]["added_median_ms_per_trial"] = round((figure["try_median_s"] - local["try_median_s"]) * 1000, 1)
            figures[name]["wall_ratio"] = round(figure["wall_s"] / local["wall_s"], 3)
    rtt = await call_rtt_ms("bench_node_b")
    per_try = best["ray_2_nodes"]["calls"] / len(list(tasks_dir.iterdir()))
    figures["isolated"] = {"call_rtt_ms": round(rtt, 2), "actor_calls_per_try": round(per_try, 1),
                           "estimated_added_ms_per_trial": round(rtt * per_try, 1)}
    return figures


def main(n_tasks: int, concurrency: int, repeat: int) -> dict:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would otherwise report to a public address
    import ray
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="evalkit-perf-ray-"))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"docker": 1, "bench_node_a": 1}, "include_dashboard": False,
        "object_store_memory": OBJECT_STORE,
    })
    try:
        cluster.add_node(num_cpus=1, resources={"docker": 1, "bench_node_b": 1}, object_store_memory=OBJECT_STORE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
        tasks_dir = make_tasks(root, n_tasks)
        # The shared image is built once, outside the timings (evalkit names images by context hash).
        asyncio.run(evaluate({"job_name": "warmup", "jobs_dir": str(root / "warmup"), "dataset": {"path": str(tasks_dir), "n_tasks": 1},
                              "environment": {"network_mode": "host"}}))
        figures = asyncio.run(measure(tasks_dir, root, concurrency, repeat))
        return {"benchmark": "ray_overhead", "n_tasks": n_tasks, "concurrency": concurrency, "repeat": repeat,
                "target_added_ms_per_trial": 50, "results": figures}
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(main(args.tasks, args.concurrency, args.repeat), indent=2))
