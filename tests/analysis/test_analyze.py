"""`analyze_job` on real jobs: every file's content, causes that match the injected failures, tiers that match
pass rates, and a job that is damaged or whose gold dataset cannot be built still analysed."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from evalkit.analysis.analyze import analyze_job, load_analysis_config
from tests.analysis.conftest import EXPECTED_CAUSES, FAULT_TASKS, SCRIPTED_TASKS
from tests.conftest import read_json, run_cli

FILES = ["report_failed.json", "report_resolved.json", "report_task_analysis.json", "traj_analysis/score_comparison.json",
         "instance_analysis/summary.json", "instance_analysis/correlations.json", "instances.jsonl",
         "analysis_config.yaml", "status.json"]


def analysis(job: Path, name: str) -> dict:
    return read_json(job / "analysis" / name)


def test_failure_causes_match_the_injected_failures(jobs, job_copy):
    job = job_copy(jobs.scripted)
    result = analyze_job(job)
    assert (result.ok, result.errors, result.files) == (True, [], FILES)
    failed = analysis(job, "report_failed.json")
    assert failed["schema_version"] == 1 and failed["job_name"] == job.name
    assert failed["n_trials"] == len(SCRIPTED_TASKS) + len(FAULT_TASKS)
    assert failed["n_failed"] == len(EXPECTED_CAUSES)
    assert {t["task"]: t["cause"] for t in failed["trials"]} == EXPECTED_CAUSES
    for cause, count in failed["causes"].items():
        assert count["items"] == sorted(f"{task}__0" for task, c in EXPECTED_CAUSES.items() if c == cause)
        assert count["fraction"] == count["count"] / len(EXPECTED_CAUSES)
        assert failed["cause_descriptions"][cause]
    assert {k: v["count"] for k, v in failed["by_kind"].items()} == {"agent": 4, "model": 3, "verifier": 2, "task": 1}
    assert {k: v["count"] for k, v in failed["axes"]["phase"].items()} == {"agent": 4, "verifier": 5, "environment": 1}
    assert failed["axes"]["error_type"]["AgentExitError"]["items"] == ["context-exceeded__0", "rate-limited__0"]
    assert set(failed["axes"]["failing_test"]) == {"tests/test_out.py::test_content", "tests/test_out.py::test_newline"}
    by_task = {t["task"]: t for t in failed["trials"]}
    assert by_task["rate-limited"]["last_model_error"].startswith("429:")
    assert "maximum context length" in by_task["context-exceeded"]["last_model_error"]
    assert by_task["wrong-answer"]["reward"] == 0.25 and by_task["crashes"]["error_message"] == "scripted crash"
    assert failed["judge"] is None and failed["unreadable"] == []

    resolved = analysis(job, "report_resolved.json")
    assert (resolved["n_resolved"], resolved["trials"], resolved["resolved_with_errors"]) == (1, ["solved__0"], [])
    turns = resolved["distributions"]["turns"]
    assert (turns["n"], turns["mean"], turns["median"]) == (1, 1.0, 1.0)
    assert resolved["distributions"]["tool_calls"]["mean"] == 1.0
    assert resolved["distributions"]["input_tokens"]["mean"] > 0 and resolved["distributions"]["cost_usd"]["n"] == 0

    comparison = analysis(job, "traj_analysis/score_comparison.json")
    assert (comparison["n_resolved"], comparison["n_unresolved"]) == (1, len(EXPECTED_CAUSES))  # a failing build is the task's: scored
    calls = {f["feature"]: f for f in comparison["features"]}["model_errors"]
    assert calls["resolved"]["mean"] == 0.0 and calls["unresolved"]["max"] == 1.0
    assert -1.0 <= calls["cliffs_delta"] <= 0.0

    tasks = analysis(job, "report_task_analysis.json")
    tiers = {row["task"]: row["tier"] for row in tasks["tasks"]}
    assert tiers["solved"] == "easy" and tiers["build-fails"] == "unsolved" and tiers["does-nothing"] == "unsolved"
    assert tiers["wrong-answer"] == "unsolved"
    metrics = tasks["metrics"]
    assert metrics["coverage"] == 1.0  # no infrastructure error: a failing build is the task's (architecture.md)
    assert {m["name"]: m["value"] for m in metrics["metrics"]}["pass_rate"] == 1 / 11  # build-fails scores 0


def test_oracle_job_every_file(jobs, job_copy):
    job = job_copy(jobs.oracle)
    assert analyze_job(job).ok
    failed = analysis(job, "report_failed.json")
    assert (failed["n_trials"], failed["n_failed"], failed["causes"]) == (22, 0, {})
    tasks = analysis(job, "report_task_analysis.json")
    assert set(tasks["tiers"]) == {"easy"} and tasks["tiers"]["easy"]["count"] == 11
    assert tasks["gold"]["available"] and tasks["gold"]["n_instances"] == 11 and tasks["gold"]["missing"] == {}
    assert tasks["gold"]["base"] == "evalkit-smoke@1.0"
    gold = read_json(job.parent.parent / "datasets" / "evalkit-smoke@1.0" / "fix-awk-sum" / "tests" / "config.json")
    assert gold["metadata"]["category"] == "debugging" and gold["tags"]["language"][:2] == ["shell", "awk"]
    assert "test.sh" in gold["test_files"] and gold["solution_files"] == ["solve.sh"]
    assert tasks["breakdowns"]["tag:language"]["awk"]["n_tasks"] == 1
    assert tasks["breakdowns"]["difficulty"]["easy"]["pass_rate"] == 1.0
    style = [m for m in tasks["metrics"]["metrics"] if m["reward_key"] == "style"]
    assert {m["name"]: m["value"] for m in style} == {"mean_reward": 0.5, "pass_rate": 0.0}  # multi-reward's second key
    lines = [json.loads(line) for line in (job / "analysis" / "instances.jsonl").read_text().splitlines()]
    assert len(lines) == 11 and all(len(line["trials"]) == 2 and line["tier"] == "easy" and line["gold"] for line in lines)
    summary = analysis(job, "instance_analysis/summary.json")
    assert summary["n_instances"] == 11 and summary["features"]["instruction_chars"]["n"] == 11
    correlations = {c["feature"]: c for c in analysis(job, "instance_analysis/correlations.json")["correlations"]}
    assert correlations["duration_sec"]["n"] == 11 and correlations["duration_sec"]["pearson"] is None  # reward is constant
    config = yaml.safe_load((job / "analysis" / "analysis_config.yaml").read_text())
    assert config["gold_base"] == "evalkit-smoke@1.0" and config["judge"]["enabled"] is False
    again = analyze_job(job, load_analysis_config(job / "analysis" / "analysis_config.yaml"))  # self-contained
    assert again.ok and analysis(job, "report_task_analysis.json")["tiers"] == tasks["tiers"]


def test_nop_job_fails_with_no_change_and_tiers_follow_pass_rates(jobs, job_copy):
    job = job_copy(jobs.nop)
    assert analyze_job(job).ok
    results = read_json(job / "results.json")
    failed = analysis(job, "report_failed.json")
    assert set(failed["causes"]) == {"model/no_change"}
    assert failed["n_failed"] == sum(1 for t in results["tasks"].values() if t["rewards"] != [1.0])
    for row in analysis(job, "report_task_analysis.json")["tasks"]:
        assert row["tier"] == ("easy" if results["tasks"][row["task"]]["rewards"] == [1.0] else "unsolved")


def test_gold_dataset_that_cannot_be_built_is_skipped_and_the_rest_runs(jobs, job_copy):
    job = job_copy(jobs.scripted)
    (job.parent.parent / "datasets").write_text("not a directory\n")  # nothing can be created under it
    result = analyze_job(job)
    assert result.ok and result.files == FILES
    tasks = analysis(job, "report_task_analysis.json")
    assert tasks["gold"]["available"] is False and tasks["gold"]["n_instances"] == 0
    assert all(reason.startswith("could not build:") for reason in tasks["gold"]["missing"].values())
    assert "gold-dependent parts (tagger tags, instance reference features) were skipped" in tasks["gold"]["note"]
    assert any("unavailable" in note for note in tasks["notes"])
    assert not any(key.startswith("tag:") for key in tasks["breakdowns"])
    assert "instruction_chars" not in analysis(job, "instance_analysis/summary.json")["features"]
    assert {t["task"]: t["cause"] for t in analysis(job, "report_failed.json")["trials"]} == EXPECTED_CAUSES


def test_corrupted_result_and_torn_trajectory_are_reported_and_the_rest_analysed(jobs, job_copy):
    job = job_copy(jobs.scripted)
    (job / "solved__0" / "result.json").write_text('{"task_name": "solved", "attem')
    with (job / "tests-fail__0" / "agent" / "litellm-trajectory.jsonl").open("ab") as f:
        f.write(b'{"v": 1, "seq": 1, "usage": {"input_')
    result = analyze_job(job)
    assert result.ok
    failed = analysis(job, "report_failed.json")
    assert failed["n_unreadable"] == 1
    assert failed["unreadable"][0]["dir"] == "solved__0" and failed["unreadable"][0]["reason"].startswith("result.json:")
    assert failed["n_trials"] == len(SCRIPTED_TASKS) + len(FAULT_TASKS) - 1
    assert "tests-fail__0/agent/litellm-trajectory.jsonl: line 2 is not a JSON object (torn: no newline)" in failed["notes"]
    assert {t["task"]: t["cause"] for t in failed["trials"]} == EXPECTED_CAUSES  # the torn trial is still classified
    assert analysis(job, "report_resolved.json")["n_resolved"] == 0


def test_a_failing_step_is_recorded_and_the_other_files_are_written(jobs, job_copy):
    job = job_copy(jobs.scripted)
    (job / "analysis").mkdir()
    (job / "analysis" / "traj_analysis").write_text("in the way\n")
    result = analyze_job(job)
    assert not result.ok
    assert len(result.errors) == 1 and result.errors[0].startswith("score_comparison: ")
    assert "traj_analysis/score_comparison.json" not in result.files
    assert {"report_failed.json", "instances.jsonl", "status.json"} <= set(result.files)
    assert read_json(job / "analysis" / "status.json")["errors"] == result.errors


def test_a_missing_job_directory(tmp_path: Path):
    result = analyze_job(tmp_path / "nope")
    assert (result.ok, result.files) == (False, [])
    assert result.errors == [f"read: FileNotFoundError: job directory not found: {tmp_path / 'nope'}"]
    assert not (tmp_path / "nope").exists()
    cli = run_cli("analyze", str(tmp_path / "nope"))
    assert cli.returncode == 2 and cli.stderr == f"evalkit: error: job directory not found: {tmp_path / 'nope'}\n"
    assert list(tmp_path.iterdir()) == []


def test_analyze_cli_on_a_real_job(jobs, job_copy):
    job = job_copy(jobs.oracle)
    cli = run_cli("analyze", str(job), "--gold-base", "custom-gold")
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith(f"analysis of {job}: 9 file(s)")
    assert (job.parent.parent / "datasets" / "custom-gold" / "hello-file" / "tests" / "config.json").is_file()
    assert yaml.safe_load((job / "analysis" / "analysis_config.yaml").read_text())["gold_base"] == "custom-gold"
