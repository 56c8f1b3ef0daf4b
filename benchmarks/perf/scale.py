"""SWE-bench-shaped load on one machine: many trials over many distinct images, under an image budget.

`--images` tasks, each with its own image (a few-MB layer of its own over the local base, built by the
job itself: a fresh nonce per run, so nothing is cached), run `--attempts` times each with the oracle at
`--concurrency`, with `environment.image_cache_gb` smaller than all images together, so images are built
ahead of their trials and evicted behind them. The floor does the same container work per trial directly
with aiodocker (`trial_overhead.floor_trial`: hardened container, baseline exec, solve, kill exec, tests,
one /logs archive, background removal) over images built before its timing starts. Then a sweep: fixed
concurrencies and `n_concurrent: auto` over `--sweep-trials` trials of prebuilt images.

Prints one JSON document: trials/min for evalkit and the floor and their ratio, images built/evicted,
evalkit CPU seconds per trial and peak RSS (measured before the floor runs, in this process), errors, and
the sweep with auto's share of the best fixed level. About 30-40 minutes with the defaults on 2 cores.

    .venv/bin/python benchmarks/perf/scale.py [--images 100] [--attempts 10] [--concurrency 32]
        [--budget-gb 0.1] [--sweep 4 8 16 32] [--sweep-trials 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiodocker

sys.path.insert(0, str(Path(__file__).parent))
from trial_overhead import SOLVE, TEST, floor_trial  # noqa: E402

from evalkit import evaluate  # noqa: E402
from evalkit.environments.images import build_image, tar_directory  # noqa: E402

LAYER_MB = 3


def make_tasks(root: Path, n: int, nonce: str) -> Path:
    tasks = root / "tasks"
    for i in range(n):
        task = tasks / f"img-{i:03d}"
        for sub in ("environment", "tests", "solution"):
            (task / sub).mkdir(parents=True)
        (task / "task.toml").write_text("[agent]\ntimeout_sec = 120\n[verifier]\ntimeout_sec = 120\n")
        (task / "instruction.md").write_text("Write 'done' to /tmp/out.txt.\n")
        (task / "environment" / "Dockerfile").write_text(
            f"FROM debian:bookworm-slim\nRUN echo {nonce}-{i} > /image-id && head -c {LAYER_MB}M /dev/urandom > /layer.bin\n"
        )
        (task / "solution" / "solve.sh").write_text(SOLVE)
        (task / "tests" / "test.sh").write_text(TEST)
    return tasks


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_evalkit(tasks: Path, jobs: Path, name: str, *, attempts: int, concurrency: int | str,
                      budget_gb: float | None, n_tasks: int | None = None) -> dict:
    config = {
        "job_name": name,
        "jobs_dir": str(jobs),
        "n_attempts": attempts,
        "n_concurrent": concurrency,
        "n_concurrent_max": 64,
        "dataset": {"path": str(tasks), **({"n_tasks": n_tasks} if n_tasks else {})},
        "environment": {"n_concurrent_builds": 2, "network_mode": "host",  # this engine has no bridge network
                        **({"image_cache_gb": budget_gb} if budget_gb is not None else {})},
    }
    cpu, start = cpu_seconds(), time.perf_counter()
    result = await evaluate(config)
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    summary = result.summary
    return {
        "trials": summary.n_trials,
        "seconds": round(elapsed, 1),
        "trials_per_min": round(summary.n_trials / elapsed * 60, 1),
        "errors": summary.errors,
        "mean_reward": summary.mean_reward,
        "cpu_s_per_trial": round(cpu / summary.n_trials, 4),
        "images": summary.images.model_dump() if summary.images else None,
        "concurrency_changes": len(summary.concurrency),
        "concurrency_levels": [c.level for c in summary.concurrency][-12:],
    }


async def prebuild(docker: aiodocker.Docker, tasks: list[Path], tag_prefix: str) -> list[str]:
    tags = []
    for task in tasks:
        tag = f"{tag_prefix}:{task.name}"
        error = await build_image(docker, tar_directory(task / "environment"), {"t": tag}, lambda _: None, buildkit=True)
        assert error is None, error
        tags.append(tag)
    return tags


async def run_floor(docker: aiodocker.Docker, plan: list[tuple[Path, str]], concurrency: int, out: Path) -> dict:
    slots = asyncio.Semaphore(concurrency)
    removals: list[asyncio.Future] = []

    async def one(i: int, task: Path, image: str) -> float:
        async with slots:
            return await floor_trial(docker, image, task, out / f"{task.name}-{i}", removals)

    start = time.perf_counter()
    rewards = await asyncio.gather(*(one(i, task, image) for i, (task, image) in enumerate(plan)), return_exceptions=True)
    await asyncio.gather(*removals, return_exceptions=True)
    elapsed = time.perf_counter() - start
    errors = sum(1 for r in rewards if not isinstance(r, float) or r != 1.0)
    return {"trials": len(plan), "seconds": round(elapsed, 1), "trials_per_min": round(len(plan) / elapsed * 60, 1), "errors": errors}


async def main(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="evalkit-scale-"))
    nonce = uuid.uuid4().hex[:10]
    out: dict = {"benchmark": "scale", "images": args.images, "attempts": args.attempts, "concurrency": args.concurrency,
                 "budget_gb": args.budget_gb, "layer_mb": LAYER_MB, "cpus": os.cpu_count()}
    floor_tags: list[str] = []
    try:
        tasks_dir = make_tasks(root, args.images, nonce)
        tasks = sorted(tasks_dir.iterdir())
        out["evalkit"] = await run_evalkit(tasks_dir, root / "jobs", f"scale-{nonce}", attempts=args.attempts,
                                           concurrency=args.concurrency, budget_gb=args.budget_gb)
        out["evalkit"]["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

        async with aiodocker.Docker() as docker:
            floor_tags = await prebuild(docker, tasks, f"evalkit-scale-floor-{nonce}")
            plan = [(task, tag) for task, tag in zip(tasks, floor_tags) for _ in range(args.attempts)]
            out["floor"] = await run_floor(docker, plan, args.concurrency, root / "floor")
        out["ratio"] = round(out["evalkit"]["seconds"] / out["floor"]["seconds"], 3)

        # The sweep: a fresh job per level over the same prebuilt images (built once by a warm-up job).
        sweep_tasks = max(1, args.sweep_trials // args.attempts)
        await run_evalkit(tasks_dir, root / "jobs", f"scale-warm-{nonce}", attempts=1, concurrency=8, budget_gb=None,
                          n_tasks=sweep_tasks)
        sweep = {}
        for level in [*args.sweep, "auto"]:
            sweep[str(level)] = await run_evalkit(tasks_dir, root / "jobs", f"scale-sweep-{level}-{nonce}",
                                                  attempts=args.attempts, concurrency=level, budget_gb=None, n_tasks=sweep_tasks)
        best = max(v["trials_per_min"] for k, v in sweep.items() if k != "auto")
        out["sweep"] = sweep
        out["auto_share_of_best_fixed"] = round(sweep["auto"]["trials_per_min"] / best, 3)
        out["targets"] = {"errors": 0, "ratio_max": 1.2, "peak_rss_mb_max": 500, "auto_share_min": 0.9}
        return out
    finally:
        async with aiodocker.Docker() as docker:
            for tag in floor_tags:
                try:
                    await docker.images.delete(tag, force=True)
                except aiodocker.DockerError:
                    pass
            built = [f"evalkit.built-by={job}" for job in (f"scale-{nonce}", f"scale-warm-{nonce}")]
            for image in [i for label in built for i in await docker.images.list(filters=json.dumps({"label": [label]}))]:
                try:
                    await docker.images.delete(image["Id"], force=True)
                except aiodocker.DockerError:
                    pass
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--attempts", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--budget-gb", type=float, default=0.1)
    parser.add_argument("--sweep", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--sweep-trials", type=int, default=300)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
