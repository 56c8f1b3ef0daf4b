"""Run archives numbered safely under concurrent runs, the status snapshot, and clean-up that keeps archives."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from evalkit.analysis.archives import clean_outputs, create_archive, status_snapshot
from evalkit.lock import lock_held
from tests.conftest import REPO, run_cli

ARCHIVE = """
import sys
from pathlib import Path
from evalkit.analysis.archives import create_archive
sys.stdin.readline()  # start together
print(create_archive(Path(sys.argv[1]), Path(sys.argv[2])).run)
"""


def test_two_concurrent_runs_get_distinct_numbers_and_both_index_entries(jobs, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    job = artifacts / "jobs" / jobs.oracle.name
    shutil.copytree(jobs.oracle, job)
    procs = [subprocess.Popen([sys.executable, "-c", ARCHIVE, str(artifacts), str(job)], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert sorted(out.strip() for out, _ in outputs) == ["run_001", "run_002"]
    index = yaml.safe_load((artifacts / "index.yaml").read_text())
    assert sorted(r["run"] for r in index["runs"]) == ["run_001", "run_002"]
    run = artifacts / "archives" / "run_001"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "inputs", "metadata.yaml", "monitor.md", "scripts", "session.log"]
    meta = yaml.safe_load((run / "metadata.yaml").read_text())
    job_id = yaml.safe_load((job / "job.json").read_text()).get("job_id")
    assert meta["job_name"] == jobs.oracle.name and meta["run_id"] == (job_id or f"{jobs.oracle.name}/{meta['run']}")
    assert meta["results"]["mean_reward"] == 1.0 and meta["results"]["n_trials"] == 22
    assert set(meta["inputs"]) == {"inputs/config.yaml", "inputs/job.json", "inputs/tasks.lock.json", "inputs/results.json"}
    assert meta["task_commits"] == []  # local tasks only
    assert (run / "config.yaml").read_bytes() == (job / "config.yaml").read_bytes()
    assert "| mean reward | 1.0 |" in (run / "monitor.md").read_text()
    assert not [p for p in (artifacts / "archives").rglob(".*.tmp")]


def test_archive_records_the_repo_commit_scripts_and_session_log(jobs, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    (tmp_path / "run.sh").write_text("evalkit run config.yaml\n")
    (tmp_path / "session.log").write_text("started\nfinished\n")
    entry = create_archive(artifacts, jobs.nop, scripts=[tmp_path / "run.sh"], session_log=tmp_path / "session.log",
                           monitor="# monitor\n", repo_dir=REPO)
    run = artifacts / "archives" / entry.run
    meta = yaml.safe_load((run / "metadata.yaml").read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert meta["repo_commit"] == head and meta["scripts"] == ["run.sh"]
    assert (run / "scripts" / "run.sh").read_text() == "evalkit run config.yaml\n"
    assert (run / "session.log").read_text() == "started\nfinished\n" and (run / "monitor.md").read_text() == "# monitor\n"


def test_status_and_clean_skip_a_running_job_and_never_touch_archives(jobs, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    for job in (jobs.oracle, jobs.nop):
        shutil.copytree(jobs.oracle if job == jobs.oracle else jobs.nop, artifacts / "jobs" / job.name)
    running = artifacts / "jobs" / jobs.nop.name
    create_archive(artifacts, artifacts / "jobs" / jobs.oracle.name)
    for name in ("litellm/" + jobs.nop.name + "/config.yaml", "litellm/other/config.yaml", "logs/run.log"):
        (artifacts / name).parent.mkdir(parents=True, exist_ok=True)
        (artifacts / name).write_text("x\n")
    holder = os.open(running / ".lock", os.O_RDWR | os.O_CREAT)  # a runner holds the job's lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert lock_held(running / ".lock") and not lock_held(artifacts / "jobs" / jobs.oracle.name / ".lock")
        status = status_snapshot(artifacts)
        assert {j.job_name: j.running for j in status.jobs} == {jobs.oracle.name: False, jobs.nop.name: True}
        assert [r["run"] for r in status.last_runs] == ["run_001"] and status.disk_bytes["jobs"] > 0
        cli = run_cli("status", "--artifacts-dir", str(artifacts))
        assert cli.returncode == 0 and f"* {jobs.nop.name}" in cli.stdout and "run_001" in cli.stdout
        report = clean_outputs(artifacts)
    finally:
        os.close(holder)
    assert report.skipped == {str(running): "running (its .lock is held)",
                              str(artifacts / "litellm" / jobs.nop.name): "the gateway directory of a running job"}
    assert sorted(p.name for p in (artifacts / "jobs").iterdir()) == [jobs.nop.name]
    assert not (artifacts / "litellm" / "other").exists() and not (artifacts / "logs" / "run.log").exists()
    assert (artifacts / "archives" / "run_001" / "metadata.yaml").is_file() and (artifacts / "index.yaml").is_file()
    assert clean_outputs(artifacts).removed == [str(running), str(artifacts / "litellm" / jobs.nop.name)]  # lock released


def test_clean_never_follows_symlinks(tmp_path: Path):
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "jobs").symlink_to(outside)
    (artifacts / "logs").mkdir()
    (artifacts / "logs" / "link").symlink_to(outside / "keep")
    report = clean_outputs(artifacts)
    assert report.skipped == {str(artifacts / "jobs"): "a symlink; not followed"}
    assert report.removed == [str(artifacts / "logs" / "link")]
    assert (outside / "keep").is_dir()
