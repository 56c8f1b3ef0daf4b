"""Analysis of a synthetic 10,000-trial job: wall time and peak memory, against a bare pass that reads every
file once (the floor any analysis pays). Prints one JSON document.

    python benchmarks/perf/analysis.py [--trials 10000] [--calls 8]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from evalkit.analysis.analyze import analyze_job  # noqa: E402

ERRORS = [None] * 8 + ["AgentTimeoutError", "AgentExitError", "EnvironmentStartError", "RewardFileMissingError"]


def make_job(root: Path, n_trials: int, calls: int, rng: random.Random) -> Path:
    job = root / "artifacts" / "jobs" / "perf-analysis"
    job.mkdir(parents=True)
    (job / "job.json").write_bytes(orjson.dumps({"job_name": "perf-analysis", "job_id": "perf"}))
    n_tasks = n_trials // 4
    for i in range(n_trials):
        task, attempt = f"task-{i % n_tasks:05d}", i // n_tasks
        trial = job / f"{task}__{attempt}"
        (trial / "agent").mkdir(parents=True)
        (trial / "evaluation").mkdir()
        error = rng.choice(ERRORS)
        reward = None if error in ("EnvironmentStartError", "RewardFileMissingError") else float(rng.random() < 0.4)
        (trial / "result.json").write_bytes(orjson.dumps({
            "job_name": "perf-analysis", "trial_name": trial.name, "task_name": task, "attempt": attempt, "agent": "synthetic",
            "task_source": {"path": f"/nonexistent/{task}"}, "rewards": None if reward is None else {"reward": reward},
            "error": error and {"type": error, "message": error}, "agent_outcome": {"exit_code": 0},
            "phases": {"agent": {"started_at": "2026-12-01T00:00:00+00:00", "finished_at": "2026-12-01T00:01:00+00:00"}},
            "started_at": "2026-12-01T00:00:00+00:00", "finished_at": "2026-12-01T00:01:30+00:00"}))
        with (trial / "agent" / "litellm-trajectory.jsonl").open("wb") as f:
            for seq in range(rng.randint(1, calls * 2)):
                f.write(orjson.dumps({
                    "v": 1, "seq": seq, "protocol": "openai_chat", "status": 200, "error": None,
                    "usage": {"input_tokens": 900 + 100 * seq, "output_tokens": 80, "cache_read_tokens": 0},
                    "timing": {"start": 1764000000.0 + seq, "end": 1764000000.8 + seq},
                    "request": {"model": "m", "messages": [{"role": "user", "content": "x" * 400}] * (seq + 1)},
                    "response": {"choices": [{"message": {"role": "assistant", "content": "ok", "tool_calls": [
                        {"id": f"c{seq}", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]}}]},
                }, option=orjson.OPT_APPEND_NEWLINE))
        (trial / "evaluation" / "test-stdout.txt").write_text("FAILED tests/test_a.py::test_x\n" if reward == 0 else "ok\n")
    return job


def bare_pass(job: Path) -> int:
    """Read and parse every result and trajectory line once: the I/O and JSON floor."""
    n = 0
    for trial in job.iterdir():
        if trial.is_dir() and (trial / "result.json").exists():
            orjson.loads((trial / "result.json").read_bytes())
            with (trial / "agent" / "litellm-trajectory.jsonl").open("rb") as f:
                for line in f:
                    orjson.loads(line)
                    n += 1
    return n


def measure(fn) -> tuple[float, float]:
    """Wall time, and how far the process's peak RSS rose (MB): bounded memory means no growth with job size."""
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    return elapsed, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=8, help="mean model calls per trial (uniform 1..2x)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="evalkit-perf-analysis-"))
    try:
        job = make_job(root, args.trials, args.calls, random.Random(0))
        size = sum(p.stat().st_size for p in job.rglob("*") if p.is_file())
        bare_sec, bare_peak = measure(lambda: bare_pass(job))
        result = {}
        analysis_sec, analysis_peak = measure(lambda: result.setdefault("r", analyze_job(job)))
        r = result["r"]
        print(json.dumps({
            "benchmark": "analysis", "trials": args.trials, "job_bytes": size,
            "baseline_bare_read_sec": round(bare_sec, 3), "analysis_sec": round(analysis_sec, 3),
            "ratio_to_bare_read": round(analysis_sec / bare_sec, 2),
            "baseline_peak_rss_growth_mb": round(bare_peak, 1), "analysis_peak_rss_growth_mb": round(analysis_peak, 1),
            "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "analysis_ok": r.ok, "files": len(r.files), "under_30s": analysis_sec < 30,
        }, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
