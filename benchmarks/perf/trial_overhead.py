"""Per-trial overhead of evalkit against the floor: the same Docker work done directly with aiodocker.

Both sides run N trivial tasks (write a file, check it) at each concurrency, doing the same container work
per try, so the ratio measures evalkit's orchestration alone: create + start a hardened container (init,
host network, limits, dropped capabilities; the image's ENTRYPOINT kept, Harbor's keep-alive command), one
root exec that makes `/logs` and records the process baseline, upload solution/ (solve.sh executable in the
upload), exec solve.sh, one root exec that kills what the agent left and empties `/tests` and
`/logs/verifier`, upload tests/ (test.sh executable), exec test.sh, one archive GET of `/logs` unpacked on
the host (the reward read from that copy), and the container removed in the background. A second floor ("bare")
does what evalkit did before its trust boundary: bind-mounted `/logs`, no baseline or kill execs, the
reward read on the host; the difference is what the security steps cost per try. The image is built
before timing starts (every side reuses it). Prints JSON; `ratio` is evalkit wall time / floor wall time
measured in the same run, so machine speed cancels out; each side runs `--repeat` times, alternating, and
the best time of each counts (noise only ever adds time).

    .venv/bin/python benchmarks/perf/trial_overhead.py [--tasks 20] [--concurrency 1 4 8] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import aiodocker

from evalkit import evaluate
from evalkit.environments.compose import KEEP_ALIVE
from evalkit.environments.docker import _KILL, _START, CAP_DROP
from evalkit.environments.images import build_tag, context_hash, tar_directory

SOLVE = "echo done > /tmp/out.txt\n"
TEST = 'if grep -q done /tmp/out.txt; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi\n'
LOG_DIRS = ("/logs/agent", "/logs/verifier", "/logs/artifacts")


def make_tasks(root: Path, n: int) -> Path:
    tasks = root / "tasks"
    for i in range(n):
        task = tasks / f"trivial-{i:02d}"
        for sub in ("environment", "tests", "solution"):
            (task / sub).mkdir(parents=True)
        (task / "task.toml").write_text('schema_version = "1.1"\n[agent]\ntimeout_sec = 60\n[verifier]\ntimeout_sec = 60\n')
        (task / "instruction.md").write_text("Write 'done' to /tmp/out.txt.\n")
        (task / "environment" / "Dockerfile").write_text("FROM debian:bookworm-slim\nWORKDIR /app\n")
        (task / "solution" / "solve.sh").write_text(SOLVE)
        (task / "tests" / "test.sh").write_text(TEST)
    return tasks


async def run_exec(container: aiodocker.containers.DockerContainer, *args: str, user: str = "") -> tuple[int, str]:
    execution = await container.exec(list(args), stdout=True, stderr=True, user=user)
    chunks = []
    async with execution.start(detach=False) as stream:
        while (message := await stream.read_out()) is not None:
            chunks.append(message.data)
    return (await execution.inspect())["ExitCode"], b"".join(chunks).decode()


def container_config(image: str, **host_config: object) -> dict:
    return {
        "Image": image,
        "Cmd": list(KEEP_ALIVE),
        "Labels": {"evalkit-perf": "floor"},  # not an evalkit job's label: `evalkit clean` leaves it alone
        "HostConfig": {"Init": True, "NetworkMode": "host", "NanoCpus": 10**9, "Memory": 2048 << 20, **host_config},
    }


async def floor_trial(docker: aiodocker.Docker, image: str, task: Path, trial_dir: Path, removals: list) -> float:
    """evalkit's container work for one try, in the order evalkit does it."""
    container = await docker.containers.create(
        container_config(image, PidsLimit=4096, CapDrop=list(CAP_DROP), SecurityOpt=["no-new-privileges"])
    )
    try:
        await container.start()
        _, baseline = await run_exec(container, "bash", "-c", _START, "bash", "0", *LOG_DIRS, user="0")
        await container.put_archive("/", await asyncio.to_thread(tar_directory, task / "solution", "solution", ("solve.sh",)))
        await run_exec(container, "bash", "-c", "(/solution/solve.sh) > /logs/agent/oracle.txt 2>&1")
        await run_exec(container, "bash", "-c", _KILL, "bash", *baseline.split(), "/tests", "/logs/verifier", user="0")
        await container.put_archive("/", await asyncio.to_thread(tar_directory, task / "tests", "tests", ("test.sh",)))
        await run_exec(container, "bash", "-c", "(/tests/test.sh) > /logs/verifier/test-stdout.txt 2>&1")
        archive = await container.get_archive("/logs")  # one GET, read whole (the logs here are tiny)
        return await asyncio.to_thread(unpack_logs, archive, trial_dir)
    finally:
        removals.append(asyncio.ensure_future(container.delete(force=True)))


def unpack_logs(tar: tarfile.TarFile, trial_dir: Path) -> float:
    """The /logs archive into trial_dir (regular files only), then the reward from the copy."""
    for member in tar:
        if member.isreg():
            target = trial_dir / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return float((trial_dir / "logs" / "verifier" / "reward.txt").read_text())


async def bare_trial(docker: aiodocker.Docker, image: str, task: Path, trial_dir: Path, removals: list) -> float:
    """What a try did before the trust boundary: /logs bind-mounted from the host, reward read there."""
    binds = []
    for sub, target in (("agent", "/logs/agent"), ("evaluation", "/logs/verifier"), ("artifacts", "/logs/artifacts")):
        (trial_dir / sub).mkdir(parents=True)
        (trial_dir / sub).chmod(0o777)
        binds.append(f"{trial_dir / sub}:{target}")
    container = await docker.containers.create(container_config(image, Binds=binds))
    try:
        await container.start()
        for source, target, script, command in (
            (task / "solution", "solution", "solve.sh", "(/solution/solve.sh) > /logs/agent/oracle.txt 2>&1"),
            (task / "tests", "tests", "test.sh", "(/tests/test.sh) > /logs/verifier/test-stdout.txt 2>&1"),
        ):
            await container.put_archive("/", await asyncio.to_thread(tar_directory, source, target, (script,)))
            await run_exec(container, "bash", "-c", command)
        return float((trial_dir / "evaluation" / "reward.txt").read_text())
    finally:
        removals.append(asyncio.ensure_future(container.delete(force=True)))


async def run_floor(trial, tasks: list[Path], image: str, concurrency: int, out: Path) -> float:
    slots = asyncio.Semaphore(concurrency)
    removals: list[asyncio.Future] = []
    async with aiodocker.Docker() as docker:

        async def one(task: Path) -> float:
            async with slots:
                return await trial(docker, image, task, out / task.name, removals)

        start = time.perf_counter()
        rewards = await asyncio.gather(*(one(t) for t in tasks))
        await asyncio.gather(*removals)  # evalkit waits for its removals before it returns, too
        elapsed = time.perf_counter() - start
    assert all(r == 1.0 for r in rewards), rewards
    return elapsed


async def run_evalkit(tasks_dir: Path, concurrency: int, jobs_dir: Path) -> float:
    config = {
        "job_name": jobs_dir.name,
        "jobs_dir": str(jobs_dir),
        "n_concurrent": concurrency,
        "dataset": {"path": str(tasks_dir)},
        "agent": {"name": "oracle"},
        "environment": {"network_mode": "host"},  # as the floor's containers (this engine has no bridge)
    }
    start = time.perf_counter()
    result = await evaluate(config)
    elapsed = time.perf_counter() - start
    assert result.summary.n_finished == result.summary.n_trials and result.summary.mean_reward == 1.0, result.summary
    return elapsed


async def main(n_tasks: int, levels: list[int], repeat: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="evalkit-perf-"))
    try:
        tasks_dir = make_tasks(root, n_tasks)
        tasks = sorted(tasks_dir.iterdir())
        # Build the shared image once, outside the timings (evalkit names images by context hash).
        await evaluate({"job_name": "warmup", "jobs_dir": str(root / "warmup"), "dataset": {"path": str(tasks_dir), "n_tasks": 1},
                        "environment": {"network_mode": "host"}})
        async with aiodocker.Docker() as docker:  # evalkit's tag: the context's hash and the FROM image's id
            base = (await docker.images.inspect("debian:bookworm-slim"))["Id"]
        image = build_tag(context_hash(tasks[0] / "environment"), [("debian:bookworm-slim", base)])
        figures = []
        for c in levels:
            floors, bares, ours_runs = [], [], []
            for i in range(repeat):
                floors.append(await run_floor(floor_trial, tasks, image, c, root / f"floor-c{c}-{i}"))
                bares.append(await run_floor(bare_trial, tasks, image, c, root / f"bare-c{c}-{i}"))
                ours_runs.append(await run_evalkit(tasks_dir, c, root / "jobs" / f"perf-c{c}-{i}"))
            floor, bare, ours = min(floors), min(bares), min(ours_runs)
            figures.append(
                {
                    "concurrency": c,
                    "floor_s": round(floor, 2),
                    "evalkit_s": round(ours, 2),
                    "ratio": round(ours / floor, 3),
                    "evalkit_s_per_trial": round(ours / n_tasks, 3),
                    "bare_floor_s": round(bare, 2),
                    "security_steps_s_per_try": round((floor - bare) / n_tasks, 3),
                }
            )
        return {"benchmark": "trial_overhead", "n_tasks": n_tasks, "repeat": repeat, "target_ratio": 1.3, "results": figures}
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.tasks, args.concurrency, args.repeat)), indent=2))
