"""The dashboard's JSON API on a real socket: bad input named exactly, bounded search, pagination of damaged
trajectories, an index that re-reads only what changed, job states from the runner's lock, live updates,
tolerant training stores, and the `evalkit view` command's errors."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from evalkit.analysis.compare import compare_jobs
from evalkit.dashboard import trajectory as traj
from evalkit.dashboard.index import Catalog
from tests.conftest import REPO, run_cli
from tests.dashboard.conftest import Jobs, Served, write_training_store


async def _get(server: Served, path: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.get(server.url + path) as response:
        return response.status, orjson.loads(await response.read())


@pytest.fixture
def artifacts(jobs: Jobs, tmp_path: Path) -> Path:
    target = tmp_path / "artifacts"
    shutil.copytree(jobs.artifacts, target, symlinks=True)
    return target


@pytest.mark.parametrize(("path", "status", "error"), [
    ("/api/jobs/{s}/trials/multi-step__0/trajectory?offset=abc", 400, "offset: expected an integer, got 'abc'"),
    ("/api/jobs/{s}/trials/multi-step__0/trajectory?limit=0", 400, "limit: must be between 1 and 200, got 0"),
    ("/api/jobs/{s}/trials/multi-step__0/trajectory?offset=-1", 400, "offset: must be between 0 and 1000000000, got -1"),
    ("/api/jobs/{s}/trials/nope__0", 404, "not found: nope__0"),
    ("/api/jobs/{s}/search?q=", 400, "search: the pattern is empty"),
    ("/api/jobs/{s}/search?q=(", 400, "search: invalid regular expression: missing ) at position 1"),
    ("/api/jobs/{s}/search?q=" + "a" * 501, 400, "search: the pattern is longer than 500 characters"),
    ("/api/compare?a={s}", 400, "b: missing query parameter"),
    ("/api/compare?a=nope&b={s}", 404, "not found: jobs/nope"),
    ("/api/compare?a={s}&b={b}&k=0", 400, "k: must be between 1 and 1000, got 0"),
    ("/api/compare/trajectories?a={s}&b={b}", 400, "task: missing query parameter"),
    ("/api/training/nope", 404, "not found: training/nope.sqlite"),
    ("/api/nothing-here", 404, "not found: /api/nothing-here"),
])
async def test_bad_requests_are_answered_with_the_reason(jobs: Jobs, path: str, status: int, error: str) -> None:
    async with Served(jobs.artifacts) as server:
        got = await _get(server, path.replace("{s}", jobs.scripted.name).replace("{b}", jobs.better.name))
    assert got == (status, {"error": error})


async def test_comparing_jobs_without_common_tasks_says_so(jobs: Jobs) -> None:
    async with Served(jobs.artifacts) as server:
        status, body = await _get(server, f"/api/compare?a={jobs.oracle.name}&b={jobs.scripted.name}")
    assert (status, body) == (422, {"error": f"{jobs.oracle} and {jobs.scripted} have no scored task in common; nothing to compare"})


async def test_compare_returns_evalkit_compare_s_statistics(jobs: Jobs) -> None:
    async with Served(jobs.artifacts) as server:
        status, body = await _get(server, f"/api/compare?a={jobs.oracle.name}&b={jobs.nop.name}&k=1&bootstrap=2000")
    expected = orjson.loads(orjson.dumps(compare_jobs(jobs.oracle, jobs.nop, k=1, n_bootstrap=2000).model_dump(), default=str))
    assert status == 200 and body == expected | {"a": jobs.oracle.name, "b": jobs.nop.name}


async def test_search_finds_matches_in_order_and_is_bounded(jobs: Jobs, artifacts: Path) -> None:
    async with Served(jobs.artifacts) as server:
        status, found = await _get(server, f"/api/jobs/{jobs.scripted.name}/search?q=echo+step+[12]")
    assert status == 200 and not found["truncated"] and not found["timed_out"]
    assert [(m["try"], m["index"], m["match"]) for m in found["matches"] if m["try"].startswith("multi-step__0")] == [
        ("multi-step__0", 0, "echo step 1"), ("multi-step__0", 1, "echo step 2")]
    assert found["searched_trials"] == 8 and found["searched_calls"] == 30
    targets = [(p.parent.parent.name, p) for p in sorted((jobs.scripted).glob("*/agent/litellm-trajectory.jsonl"))]
    capped = traj.search(targets, traj.compile_pattern("step", True), max_matches=3)
    assert len(capped["matches"]) == 3 and capped["truncated"]
    # a catastrophically backtracking pattern is cut off by the time bound, not left running
    path = artifacts / "jobs" / jobs.scripted.name / "multi-step__0" / "agent" / "litellm-trajectory.jsonl"
    call = orjson.loads(path.read_bytes().splitlines()[0])
    call["request"]["messages"] = [{"role": "user", "content": "a" * 40 + "!"}]
    path.write_bytes(orjson.dumps(call) + b"\n")
    slow = traj.search([("multi-step__0", path)], traj.compile_pattern("(a|aa)+$", False), seconds=0.5)
    assert slow["timed_out"] and slow["matches"] == []


async def test_trajectory_pages_skip_a_torn_last_line_and_say_so(jobs: Jobs, artifacts: Path) -> None:
    path = artifacts / "jobs" / jobs.scripted.name / "multi-step__0" / "agent" / "litellm-trajectory.jsonl"
    with path.open("ab") as f:
        f.write(b'{"seq": 4, "request": {"mess')
    async with Served(artifacts) as server:
        base = f"/api/jobs/{jobs.scripted.name}/trials/multi-step__0"
        status, page = await _get(server, f"{base}/trajectory?offset=2&limit=1")
        _, rest = await _get(server, f"{base}/trajectory?offset=3&limit=10")
        _, stats = await _get(server, f"{base}/stats")
    assert status == 200 and [c["index"] for c in page["calls"]] == [2] and page["has_more"]
    assert page["calls"][0]["n_earlier"] == 3  # the messages of call 1 are not repeated
    assert [c["index"] for c in rest["calls"]] == [3] and not rest["has_more"]
    assert rest["problems"] == ["multi-step__0/agent/litellm-trajectory.jsonl: line 5 is not a JSON object (torn: no newline)"]
    assert stats["n_calls"] == 4 and stats["problems"] == rest["problems"]


def test_the_index_rereads_only_changed_results(jobs: Jobs, artifacts: Path) -> None:
    job = artifacts / "jobs" / jobs.oracle.name
    catalog = Catalog(artifacts)
    index = catalog.job(jobs.oracle.name)
    assert index.summary()["mean_reward"]["value"] == 1.0
    before = {name: index.try_info(name) for name in ("hello-file__0", "hello-file__1")}
    result = orjson.loads((job / "hello-file__0" / "result.json").read_bytes())
    (job / "hello-file__0" / "result.json").write_bytes(orjson.dumps(result | {"rewards": {"reward": 0.0}}))
    (job / "word-freq__1" / "result.json").write_bytes(b"{not json")
    shutil.rmtree(job / "sed-config__1")
    index.refresh(force=True)
    summary = index.summary()
    assert index.try_info("hello-file__1") is before["hello-file__1"]  # unchanged: not read again
    assert index.try_info("hello-file__0") is not before["hello-file__0"]
    assert summary["n_done"] == 20 and summary["mean_reward"]["value"] < 1.0
    with pytest.raises(orjson.JSONDecodeError) as parse_error:
        orjson.loads(b"{not json")
    reason = f"result.json: {parse_error.value}"
    assert summary["problems"] == [f"word-freq__1: {reason}"]
    assert index.detail()["unreadable"] == [{"dir": "word-freq__1", "reason": reason}]


def test_job_state_follows_the_runner_s_lock_and_results(jobs: Jobs, artifacts: Path) -> None:
    job = artifacts / "jobs" / jobs.nop.name
    catalog = Catalog(artifacts)
    fd = os.open(job / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        catalog.job(jobs.nop.name).refresh(force=True)
        assert catalog.job(jobs.nop.name).summary()["state"] == "running"
    finally:
        os.close(fd)
    index = catalog.job(jobs.nop.name)
    index.refresh(force=True)
    assert (index.summary()["state"], index.summary()["state_note"]) == ("finished", None)
    results = orjson.loads((job / "results.json").read_bytes())
    (job / "results.json").write_bytes(orjson.dumps(results | {"status": "running"}))
    index.refresh(force=True)
    assert (index.summary()["state"], index.summary()["state_note"]) == (
        "interrupted", "results.json says running, but no runner holds the job's lock")
    (job / "results.json").unlink()
    index.refresh(force=True)
    assert (index.summary()["state"], index.summary()["state_note"], index.summary()["n_trials"]) == ("interrupted", "no results.json", 11)


async def test_live_updates_stream_changes_until_the_job_stops(jobs: Jobs, artifacts: Path) -> None:
    job = artifacts / "jobs" / jobs.nop.name
    fd = os.open(job / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    events: list[bytes] = []
    try:
        async with Served(artifacts) as server, aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/api/jobs/{jobs.nop.name}/events") as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                assert await response.content.readuntil(b"\n\n") == b"retry: 2000\n\n"
                (job / "results.json").write_bytes((job / "results.json").read_bytes() + b" ")
                while not (events and events[-1].startswith(b"event: change")):
                    events.append(await response.content.readuntil(b"\n\n"))
                assert events[-1] == b'event: change\ndata: {"running":true}\n\n'
                os.close(fd)
                fd = -1
                while not events[-1].endswith(b'{"running":false}\n\n'):
                    events.append(await response.content.readuntil(b"\n\n"))
                assert await response.content.read() == b""  # the stream ends when the job stops
    finally:
        if fd >= 0:
            os.close(fd)
    assert set(events[:-2]) <= {b": idle\n\n"}


async def test_training_stores_are_read_tolerantly(jobs: Jobs, artifacts: Path) -> None:
    write_training_store(artifacts, "full", artifacts / "jobs" / jobs.scripted.name)
    minimal = sqlite3.connect(artifacts / "training" / "minimal.sqlite")
    minimal.executescript("""CREATE TABLE evals (id INTEGER PRIMARY KEY, run_id TEXT, step INTEGER, benchmark TEXT,
                                                 metrics_json TEXT, created_at TEXT, future_column TEXT);
                             INSERT INTO evals VALUES (1, 'minimal', 5, 'b', '{"pass@1": 0.5, "bad": "x"}', 'now', 'y');
                             INSERT INTO evals VALUES (2, 'minimal', 9, 'b', 'not json', 'now', 'y');""")
    minimal.close()
    (artifacts / "training" / "broken.sqlite").write_bytes(b"not a database at all")
    (artifacts / "training" / "linked.sqlite").symlink_to(artifacts / "training" / "full.sqlite")
    async with Served(artifacts) as server:
        status, runs = await _get(server, "/api/training")
        _, small = await _get(server, "/api/training/minimal")
        broken = await _get(server, "/api/training/broken")
        linked = await _get(server, "/api/training/linked")
        _, full = await _get(server, "/api/training/full")
    assert status == 200 and [r["run"] for r in runs["runs"]] == ["full", "minimal"]
    assert runs["problems"] == ["training run broken: not a readable training store (file is not a database)"]
    assert broken == (422, {"error": "training run broken: not a readable training store (file is not a database)"})
    assert linked == (403, {"error": "path refused: symlinks are not followed"})
    assert small["series"] == {"b": {"pass@1": [{"step": 5, "value": 0.5, "ci_low": None, "ci_high": None}]}}
    assert [e["metrics"] for e in small["evals"]] == [{"pass@1": 0.5}, {}]
    rollout = full["evals"][0]["rollouts"][0]
    assert rollout["trajectory"].startswith(f"jobs/{jobs.scripted.name}/") and rollout["reward"] == 1.0
    assert [round(p["ci_low"], 3) for p in full["series"]["evalkit-smoke@1.0"]["mean_reward"]] == [0.2, 0.3, 0.4]


def test_view_command_errors_and_a_clean_stop(tmp_path: Path, jobs: Jobs) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_cli("view", str(not_a_dir))
    assert (result.returncode, result.stderr) == (2, f"evalkit: error: artifacts directory is not a directory: {not_a_dir}\n")
    result = run_cli("view", str(tmp_path), "--port", "70000")
    assert (result.returncode, result.stderr) == (2, "evalkit: error: --port: must be between 0 and 65535, got 70000\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("view", str(tmp_path), "--port", str(port))
    assert result.returncode == 3
    assert result.stderr.startswith(f"evalkit: error: cannot listen on 127.0.0.1:{port}: ")
    proc = subprocess.Popen([sys.executable, "-m", "evalkit", "view", str(jobs.artifacts), "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith(f"evalkit view: {jobs.artifacts} at http://127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
