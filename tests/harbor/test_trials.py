"""Harbor's trial semantics beyond the bundled benchmark, in real containers: a real agent's non-zero exit is
its error (the oracle's is not), a step's failure is the step's, healthcheck timeouts as Harbor counts them,
and a task evalkit cannot run faithfully is refused before any container starts."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from evalkit import evaluate
from tests.conftest import BENCHMARKS, job_containers, read_json, run_cli, write_config, write_task

pytestmark = pytest.mark.docker
OK_TEST = "echo 1 > /logs/verifier/reward.txt"


def _multi_step(root: Path, name: str, steps: dict[str, dict[str, str]], task_toml: str = "") -> Path:
    """A multi-step task; per step: `test` (its test.sh), optional `solve`, `setup` (workdir/setup.sh), `solution_dir`."""
    task = root / name
    (task / "environment").mkdir(parents=True)
    (task / "environment" / "Dockerfile").write_text("FROM debian:bookworm-slim\nWORKDIR /app\n")
    toml = task_toml + "".join(f'\n[[steps]]\nname = "{step}"\n' for step in steps)
    (task / "task.toml").write_text(toml)
    for step, files in steps.items():
        base = task / "steps" / step
        (base / "tests").mkdir(parents=True)
        (base / "instruction.md").write_text(f"Step {step}.\n")
        (base / "tests" / "test.sh").write_text("#!/bin/bash\n" + files["test"] + "\n")
        if "solve" in files or "solution_dir" in files:
            (base / "solution").mkdir()
        if "solve" in files:
            (base / "solution" / "solve.sh").write_text("#!/bin/bash\n" + files["solve"] + "\n")
        if "setup" in files:
            (base / "workdir").mkdir()
            (base / "workdir" / "setup.sh").write_text(files["setup"] + "\n")
    return task


async def test_a_real_agents_nonzero_exit_is_its_error_in_a_trial_and_in_a_step(jobs_dir: Path):
    name = f"harbor-exit-{uuid.uuid4().hex[:6]}"
    result = await evaluate({
        "job_name": name, "jobs_dir": str(jobs_dir), "agent": {"name": "tests.harbor.agents:ExitingAgent"},
        "environment": {"network_mode": "none"},
        "dataset": {"tasks": [{"path": str(BENCHMARKS / "evalkit-faults" / "agent-exits-nonzero")},
                              {"path": str(BENCHMARKS / "evalkit-harbor-format" / "multi-step-stops-middle")}]},
    })
    trials = {t.task_name: t for t in result.trials}
    single = trials["agent-exits-nonzero"]
    assert (single.rewards, single.error.type, single.error.kind) == ({"reward": 1.0}, "AgentExitError", "agent")
    assert single.error.message == "the agent exited with code 3"
    # Multi-step: the failure is each step's, the verifier still runs, the try has no error (as in Harbor).
    steps = trials["multi-step-stops-middle"]
    assert steps.error is None and steps.rewards == {"reward": 0.75}
    assert [(s.name, s.rewards, s.error.type, s.agent_outcome.exit_code) for s in steps.steps] == [
        ("alpha", {"reward": 1.0}, "AgentExitError", 3), ("beta", {"reward": 0.5}, "AgentExitError", 3)]
    assert await job_containers(name) == []


async def test_healthcheck_timeouts_and_failing_steps_as_harbor_counts_them(jobs_dir: Path):
    root = jobs_dir.parent / "tasks"
    hc = "[agent]\ntimeout_sec = 60\n[environment.healthcheck]\ninterval_sec = 0.1\nretries = 1\n"
    tasks = [
        # A run outliving its timeout fails the check at once, whatever `retries` says.
        write_task(root, "hc-timeout", test=OK_TEST, task_toml=hc + 'command = "sleep 3"\ntimeout_sec = 1\n'),
        # Harbor truncates the timeout to whole seconds: 0.5 means none, so a 1.2 s run passes.
        write_task(root, "hc-subsecond", test=OK_TEST, task_toml=hc + 'command = "sleep 1.2"\ntimeout_sec = 0.5\n'),
        # setup.sh fails: the step has no agent and no verifier; the steps stop; no reward, no try error.
        _multi_step(root, "setup-fails", {"a": {"setup": "exit 4", "test": OK_TEST, "solve": "true"},
                                          "b": {"test": OK_TEST, "solve": "true"}}),
        # A step's solution/ without solve.sh: the step's error, its verifier still runs, later steps too.
        _multi_step(root, "step-solve-missing", {"a": {"solution_dir": "", "test": "echo 0.5 > /logs/verifier/reward.txt"},
                                                 "b": {"solve": "true", "test": OK_TEST}}),
        # Separate verifiers per step: each grades in a fresh container that sees /logs/artifacts only.
        _multi_step(root, "steps-separate", {
            step: {"solve": f"echo {step} > /app/{step}.txt; mkdir -p /logs/artifacts; echo {step} > /logs/artifacts/{step}.txt",
                   "test": f"[ -f /logs/artifacts/{step}.txt ] && [ ! -e /app/{step}.txt ] && echo 1 > /logs/verifier/reward.txt"}
            for step in ("a", "b")}, task_toml='[verifier]\nenvironment_mode = "separate"\n'),
    ]
    name = f"harbor-steps-{uuid.uuid4().hex[:6]}"
    result = await evaluate({"job_name": name, "jobs_dir": str(jobs_dir), "environment": {"network_mode": "none"},
                             "dataset": {"tasks": [{"path": str(t)} for t in tasks]}})
    trials = {t.task_name: t for t in result.trials}

    timeout = trials["hc-timeout"]
    assert (timeout.rewards, timeout.error.type, timeout.error.kind, timeout.error.phase) == (None, "HealthcheckError", "task", "environment")
    assert timeout.error.message == "a healthcheck run outlived its timeout of 1 s: sleep 3"
    assert "agent" not in timeout.phases
    assert (trials["hc-subsecond"].rewards, trials["hc-subsecond"].error) == ({"reward": 1.0}, None)

    setup = trials["setup-fails"]
    assert (setup.rewards, setup.error) == (None, None)
    (step,) = setup.steps
    assert (step.name, step.rewards, step.error.type, step.error.phase) == ("a", None, "RuntimeError", "setup")
    assert step.error.message == "step 'a': setup.sh exited with code 4: "
    assert "agent" not in step.phases

    missing = trials["step-solve-missing"]
    assert [(s.name, s.rewards, s.error and s.error.type) for s in missing.steps] == [
        ("a", {"reward": 0.5}, "SolutionMissingError"), ("b", {"reward": 1.0}, None)]
    assert missing.rewards == {"reward": 0.75} and missing.error is None
    assert missing.steps[0].error.message == "Solution script not found: steps/a/solution/solve.sh"
    assert read_json(result.job_dir / missing.trial_name / "evaluation" / "steps" / "a" / "verdict.json")["rewards"] == {"reward": 0.5}

    separate = trials["steps-separate"]
    assert [(s.name, s.rewards, s.error) for s in separate.steps] == [("a", {"reward": 1.0}, None), ("b", {"reward": 1.0}, None)]
    assert separate.rewards == {"reward": 1.0} and separate.error is None
    separate_dir = result.job_dir / separate.trial_name
    assert (separate_dir / "evaluation" / "steps" / "b" / "test-stdout.txt").is_file()
    assert sorted(p.name for p in (separate_dir / "artifacts").iterdir()) == ["a.txt", "b.txt"]
    assert all(report.error is None for report in separate.downloads.values()), separate.downloads
    assert await job_containers(name) == []


async def test_a_task_evalkit_cannot_run_faithfully_is_refused_before_any_container(jobs_dir: Path):
    root = jobs_dir.parent / "tasks"
    bind = write_task(root, "compose-bind", test=OK_TEST)
    (bind / "environment" / "docker-compose.yaml").write_text(
        "services:\n  db:\n    image: debian:bookworm-slim\n    volumes:\n      - ./data:/data\n")
    name = f"harbor-refused-{uuid.uuid4().hex[:6]}"
    result = await evaluate({"job_name": name, "jobs_dir": str(jobs_dir), "dataset": {"tasks": [{"path": str(bind)}]}})
    (trial,) = result.trials
    assert (trial.error.type, trial.error.kind, trial.error.phase, trial.environment) == ("TaskUnsupportedError", "task", "load", None)
    assert trial.error.message == (
        f"task 'compose-bind' ({bind}): docker-compose.yaml: services.db.volumes: './data:/data': host bind mounts are "
        "not supported (a container never writes to the host); use a named volume")
    assert result.summary.task_errors == {"compose-bind": f"TaskUnsupportedError: {trial.error.message}"}
    assert sorted(p.name for p in (result.job_dir / trial.trial_name).iterdir()) == ["result.json"]
    assert await job_containers(name) == []


def test_the_cli_shows_a_tasks_ignored_keys_once_per_job(jobs_dir: Path, tmp_path: Path):
    name = f"harbor-cli-{uuid.uuid4().hex[:6]}"
    config = write_config(tmp_path / "config.yaml", {
        "job_name": name, "jobs_dir": str(jobs_dir), "n_attempts": 2, "environment": {"network_mode": "none"},
        "dataset": {"tasks": [{"path": str(BENCHMARKS / "evalkit-harbor-format" / "unknown-key")}]}})
    done = run_cli("run", str(config))
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    assert shown.count("verifier.timeout: not a Harbor task.toml key; ignored (did you mean timeout_sec?)") == 1
    for attempt in (0, 1):
        result = read_json(jobs_dir / name / f"unknown-key__{attempt}" / "result.json")
        assert result["warnings"] == ["verifier.timeout: not a Harbor task.toml key; ignored (did you mean timeout_sec?)"]
