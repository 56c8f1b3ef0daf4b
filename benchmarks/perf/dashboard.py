"""The dashboard on a generated job of 10,000 trials, one of whose trajectories has 5,000 model calls: API
response times and page load times in headless Chromium, against floors measured in the same run. Prints one
JSON document.

    python benchmarks/perf/dashboard.py [--trials 10000] [--calls 5000]

Floors: a bare pass that reads and parses every `result.json` once (what any cold job index pays), reading and
parsing the first 50 trajectory lines (what a first page pays), and a static file over the same HTTP server
(the round-trip floor). Target: the job page and the trajectory's first page load in under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ERRORS = [None] * 10 + ["AgentTimeoutError", "AgentExitError", "EnvironmentStartError", "RewardFileMissingError"]
PHASES = ("environment", "agent_setup", "agent", "verifier")


def _iso(t: datetime) -> str:
    return t.isoformat()


def make_job(root: Path, n_trials: int, n_calls: int, rng: random.Random) -> tuple[Path, str]:
    """A job directory of `n_trials` results (4 attempts per task, 16 in flight), and one 5,000-call trajectory."""
    job = root / "artifacts" / "jobs" / "perf-dashboard"
    job.mkdir(parents=True)
    t0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
    n_tasks = n_trials // 4
    slots = [t0] * 16
    for i in range(n_trials):
        task, attempt = f"task-{i % n_tasks:05d}", i // n_tasks
        trial = job / f"{task}__{attempt}"
        trial.mkdir()
        error = rng.choice(ERRORS)
        reward = None if error in ("EnvironmentStartError", "RewardFileMissingError") else float(rng.random() < 0.4)
        slot = min(range(16), key=lambda s: slots[s])
        start = slots[slot]
        phases, at = {}, start
        for name in PHASES:
            end = at + timedelta(seconds=rng.uniform(0.2, 30 if name == "agent" else 3))
            phases[name] = {"started_at": _iso(at), "finished_at": _iso(end)}
            at = end
        slots[slot] = at
        (trial / "result.json").write_bytes(orjson.dumps({
            "schema_version": 1, "job_name": "perf-dashboard", "trial_name": trial.name, "task_name": task,
            "attempt": attempt, "agent": "synthetic", "task_source": {"path": f"/nonexistent/{task}"},
            "rewards": None if reward is None else {"reward": reward},
            "error": error and {"type": error, "message": error, "kind": None},
            "agent_outcome": {"exit_code": 0, "usage": {"n_calls": 8, "input_tokens": rng.randint(1000, 90000),
                                                        "output_tokens": rng.randint(100, 9000), "cost_usd": None}},
            "phases": phases, "started_at": _iso(start), "finished_at": _iso(at)}))
    (job / "results.json").write_bytes(orjson.dumps({"job_name": "perf-dashboard", "status": "finished",
                                                     "n_trials": n_trials, "started_at": _iso(t0)}))
    (job / "config.yaml").write_text("dataset:\n  name: perf@1.0\nagent:\n  name: synthetic\nn_attempts: 4\n")
    big = "task-00000__0"
    (job / big / "agent").mkdir()
    with (job / big / "agent" / "litellm-trajectory.jsonl").open("wb") as f:
        history: list[dict] = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Fix the bug."}]
        for seq in range(n_calls):
            answer = {"role": "assistant", "content": f"Step {seq}.", "tool_calls": [
                {"id": f"c{seq}", "type": "function", "function": {"name": "bash", "arguments": json.dumps({"cmd": f"ls /src/{seq}"})}}]}
            f.write(orjson.dumps({
                "v": 1, "seq": seq, "endpoint": "/v1/chat/completions", "protocol": "openai_chat", "route": "passthrough",
                "deployment": f"hosted_vllm/m@http://127.0.0.1:{8000 + seq % 2}/v1", "status": 200, "error": None,
                "usage": {"input_tokens": 900 + 10 * seq, "output_tokens": 40, "cache_read_tokens": 0},
                "timing": {"start": 1764000000.0 + seq, "first_byte": 1764000000.1 + seq, "end": 1764000000.6 + seq},
                "request": {"model": "m", "messages": history[-6:]},  # a windowed agent: bounded requests
                "response": {"choices": [{"message": answer, "finish_reason": "tool_calls"}]},
            }, option=orjson.OPT_APPEND_NEWLINE))
            history += [answer, {"role": "tool", "tool_call_id": f"c{seq}", "content": f"file-{seq}.py\n" * 5}]
    return job, big


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def floors(job: Path, big: str) -> dict[str, float]:
    def read_results() -> None:
        for entry in os.scandir(job):
            if entry.is_dir():
                orjson.loads(Path(entry.path, "result.json").read_bytes())

    def first_lines() -> None:
        with (job / big / "agent" / "litellm-trajectory.jsonl").open("rb") as f:
            for _, line in zip(range(51), f):
                orjson.loads(line)

    return {"bare_read_results_sec": timed(read_results)[0], "bare_first_50_lines_sec": timed(first_lines)[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=5_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="evalkit-perf-dashboard-"))
    proc = None
    try:
        job, big = make_job(root, args.trials, args.calls, random.Random(0))
        floor = floors(job, big)
        proc = subprocess.Popen([sys.executable, "-m", "evalkit", "view", str(root / "artifacts"), "--port", "0"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = re.search(r"at (http://\S+/)", proc.stdout.readline())[1]  # type: ignore[union-attr,index]
        api, sizes = {}, {}
        traj = f"api/jobs/perf-dashboard/trials/{big}"
        for name, path in [("static_file_floor", "static/style.css"), ("jobs_first_request", "api/jobs"), ("jobs_warm", "api/jobs"),
                           ("job_detail_first", "api/jobs/perf-dashboard"), ("job_detail_warm", "api/jobs/perf-dashboard"),
                           ("trajectory_first_page", f"{traj}/trajectory?offset=0&limit=50"),
                           ("trajectory_last_page", f"{traj}/trajectory?offset={args.calls - 50}&limit=50"),
                           ("trajectory_stats_cold", f"{traj}/stats"), ("trajectory_stats_warm", f"{traj}/stats"),
                           ("search_job", "api/jobs/perf-dashboard/search?q=ls+/src/4999$")]:
            api[name], body = timed(lambda p=path: fetch(base + p))
            sizes[name] = len(body)  # type: ignore[arg-type]
        pages = browser_loads(base, big)
        job_page, first_page = pages["job_page_median"], pages["trial_page_first_calls_median"]
        print(json.dumps({
            "benchmark": "dashboard", "trials": args.trials, "trajectory_calls": args.calls,
            "floors_sec": {k: round(v, 4) for k, v in floor.items()},
            "api_sec": {k: round(v, 4) for k, v in api.items()},
            "api_bytes": sizes,
            "pages_sec": {k: round(v, 3) for k, v in pages.items()},
            "ratios": {
                "jobs_first_request_to_bare_read": round(api["jobs_first_request"] / floor["bare_read_results_sec"], 2),
                "job_detail_warm_to_static_file": round(api["job_detail_warm"] / api["static_file_floor"], 1),
                "trajectory_first_page_to_bare_50_lines": round(api["trajectory_first_page"] / floor["bare_first_50_lines_sec"], 1),
            },
            "target_job_page_under_1s": job_page < 1.0,
            "target_trajectory_first_page_under_1s": first_page < 1.0,
        }, indent=2))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
            proc.stdout.close()  # type: ignore[union-attr]
        shutil.rmtree(root, ignore_errors=True)


def browser_loads(base: str, big: str) -> dict[str, float]:
    """Seconds from navigation until the page has rendered (charts drawn, calls shown): the first load (the
    browser's cache empty), and the median of three more."""
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for name, route, selector in [
            ("jobs_page", "#/", "[data-table=jobs] tbody tr"),
            ("job_page", "#/job/perf-dashboard", "canvas[data-chart=concurrency]"),
            ("trial_page_first_calls", f"#/trial/perf-dashboard/{big}", "article.call[data-call='49']"),
            ("trial_page_last_calls", f"#/trial/perf-dashboard/{big}?offset=4950", "article.call[data-call='4999']"),
        ]:
            times = []
            for _ in range(4):
                page.goto("about:blank")
                start = time.perf_counter()
                page.goto(base + route)
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                page.wait_for_selector(selector, timeout=120_000)
                times.append(time.perf_counter() - start)
            out[f"{name}_first"], out[f"{name}_median"] = times[0], statistics.median(times[1:])
        browser.close()
    return out


if __name__ == "__main__":
    main()
