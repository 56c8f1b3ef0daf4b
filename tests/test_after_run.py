"""After `evalkit run`: the job is analysed and archived from its files, a failing analysis never changes the
job's exit code or results, both steps can be switched off, and `evalkit clean` removes runtime outputs but
never archives."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import job_containers, read_json, run_cli, write_config, write_task

pytestmark = pytest.mark.docker


def small_job(tmp_path: Path, **extra) -> tuple[Path, str]:
    for name in ("one", "two"):
        write_task(tmp_path / "tasks", name)
    name = f"after-run-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path / "config.yaml", {
        "job_name": name, "jobs_dir": "artifacts/jobs", "dataset": {"path": "tasks"},
        "environment": {"network_mode": "host"}, **extra,
    })
    return config, name


def test_a_run_is_analysed_and_archived(tmp_path: Path):
    config, name = small_job(tmp_path)
    result = run_cli("run", str(config))
    assert result.returncode == 0, result.stderr
    job_dir = tmp_path / "artifacts" / "jobs" / name
    assert f"analysis: {job_dir / 'analysis'} (written)" in result.stderr
    assert f"archive: {tmp_path / 'artifacts' / 'archives' / 'run_001'}" in result.stderr
    assert read_json(job_dir / "analysis" / "report_task_analysis.json")
    archive = tmp_path / "artifacts" / "archives" / "run_001"
    metadata = yaml.safe_load((archive / "metadata.yaml").read_text())
    assert (metadata["job_name"], metadata["status"], metadata["mean_reward"]) == (name, "finished", 1.0)
    assert (archive / "session.log").read_text() == (job_dir / "session.log").read_text()
    index = yaml.safe_load((tmp_path / "artifacts" / "index.yaml").read_text())
    assert [run["run"] for run in index["runs"]] == ["run_001"]


def test_a_failing_analysis_changes_neither_exit_code_nor_results(tmp_path: Path):
    config, name = small_job(tmp_path, after_run={"archive": False})
    assert run_cli("run", str(config)).returncode == 0
    job_dir = tmp_path / "artifacts" / "jobs" / name
    summary = read_json(job_dir / "results.json")
    analysis = job_dir / "analysis"
    for child in sorted(analysis.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    analysis.rmdir()
    analysis.write_text("not a directory")  # every analysis step now fails to write

    again = run_cli("run", str(config))  # resumes a finished job: nothing runs, analysis runs again
    assert again.returncode == 0, again.stderr
    assert "analysis: " in again.stderr and "(written)" not in again.stderr
    after = read_json(job_dir / "results.json")
    assert {k: after[k] for k in ("status", "n_finished", "mean_reward", "errors")} == {
        k: summary[k] for k in ("status", "n_finished", "mean_reward", "errors")
    }
    assert analysis.read_text() == "not a directory"
    assert not (tmp_path / "artifacts" / "archives").exists()


def test_both_steps_can_be_switched_off(tmp_path: Path):
    config, name = small_job(tmp_path, after_run={"analyze": False, "archive": False})
    result = run_cli("run", str(config))
    assert result.returncode == 0, result.stderr
    assert "analysis:" not in result.stderr and "archive:" not in result.stderr
    assert not (tmp_path / "artifacts" / "jobs" / name / "analysis").exists()
    assert not (tmp_path / "artifacts" / "archives").exists()


async def test_clean_removes_outputs_and_keeps_archives(tmp_path: Path):
    config, name = small_job(tmp_path)
    assert run_cli("run", str(config)).returncode == 0
    artifacts = tmp_path / "artifacts"
    (artifacts / "logs").mkdir()
    (artifacts / "logs" / "old.log").write_text("x")

    cleaned = run_cli("clean", "--artifacts-dir", str(artifacts))
    assert cleaned.returncode == 0, cleaned.stderr
    lines = cleaned.stdout.splitlines()
    # other lines may name leftovers of dead jobs, or running jobs' containers kept, on a shared engine
    assert any(re.fullmatch(r"removed \d+ container\(s\)", line) for line in lines), lines
    assert any(re.fullmatch(rf"removed \d+ path\(s\) under {re.escape(str(artifacts))}", line) for line in lines), lines
    assert not (artifacts / "jobs" / name).exists()
    assert not (artifacts / "logs" / "old.log").exists()
    assert (artifacts / "archives" / "run_001" / "metadata.yaml").is_file()
    assert (artifacts / "index.yaml").is_file()
    assert await job_containers(name) == []
