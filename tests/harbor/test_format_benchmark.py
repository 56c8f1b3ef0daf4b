"""`evalkit-harbor-format@1.0` run by the oracle in real containers: every task's outcome is the one Harbor
0.25 gives (`expected.json`), the per-step verdicts, warnings and other facts in `extra` hold, and every
container of every trial (sidecars, pod holders and separate verifiers included) and every compose volume is
gone afterwards."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import aiodocker
import pytest

from evalkit import evaluate
from evalkit.tasks import load_task
from tests.conftest import BENCHMARKS, expected_outcomes, job_containers, read_json, run_cli

pytestmark = pytest.mark.docker
BENCH = BENCHMARKS / "evalkit-harbor-format"
IMAGE_BUILDER_TASKS = {"buildkit-features", "buildkit-heredoc", "changed-base"}
"""Pinned by `test_image_builder.py`: they need the image builder's BuildKit and FROM-digest cache key."""


async def job_volumes(job_name: str) -> list[dict]:
    async with aiodocker.Docker() as docker:
        return (await docker.volumes.list(filters={"label": [f"evalkit.job={job_name}"]})).get("Volumes") or []


def _config(name: str, jobs_dir: Path, tasks: list[str], **extra: object) -> dict:
    # Network `none`: every task here is offline, and the host's loopback ports belong to others.
    return {"job_name": name, "jobs_dir": str(jobs_dir), "n_concurrent": 4, "environment": {"network_mode": "none"},
            "dataset": {"tasks": [{"path": str(BENCH / task)} for task in tasks]}, **extra}


async def test_every_task_is_scored_as_harbor_scores_it(jobs_dir: Path, caplog: pytest.LogCaptureFixture):
    expected = {name: e for name, e in expected_outcomes("evalkit-harbor-format").items() if name not in IMAGE_BUILDER_TASKS}
    name = f"harbor-format-{uuid.uuid4().hex[:6]}"
    with caplog.at_level(logging.WARNING, logger="evalkit"):
        result = await evaluate(_config(name, jobs_dir, list(expected)))

    outcomes = {t.task_name: {"rewards": t.rewards, "error": t.error and t.error.type} for t in result.trials}
    assert outcomes == {task: {"rewards": e["rewards"], "error": e["error"]} for task, e in expected.items()}
    assert result.summary.status == "finished" and result.summary.n_finished == len(expected)
    assert await job_containers(name) == []
    assert await job_volumes(name) == []

    for trial in result.trials:
        extra = expected[trial.task_name].get("extra", {})
        try_dir = result.job_dir / trial.trial_name
        task = load_task(BENCH / trial.task_name)
        assert [{"name": s.name, "rewards": s.rewards} for s in trial.steps] == extra.get("steps", []), trial.task_name
        ran = [s.name for s in trial.steps]
        assert [s.name for s in task.steps if s.name not in ran] == extra.get("steps_not_run", [])
        for step in trial.steps:  # each step's verdict on disk, and what its verifier wrote
            assert read_json(try_dir / "evaluation" / "steps" / step.name / "verdict.json")["rewards"] == step.rewards
            assert (try_dir / "evaluation" / "steps" / step.name / "test-stdout.txt").is_file()
        assert [w.split(":")[0] for w in trial.warnings] == extra.get("warnings", []), trial.task_name
        for text in extra.get("error_message_contains", []):
            assert text in trial.error.message
        if "agent_ran" in extra:
            assert ("agent" in trial.phases) is extra["agent_ran"]
        if "verifier_ran" in extra:
            assert ("verifier" in trial.phases) is extra["verifier_ran"]
        if "oracle_exit_code" in extra:
            assert trial.agent_outcome.exit_code == extra["oracle_exit_code"] and trial.error is None
        for step, sources in extra.get("step_artifacts", {}).items():
            for source in sources:
                assert (try_dir / "artifacts" / "steps" / step / source.lstrip("/")).is_file()

    by_name = {t.task_name: t for t in result.trials}
    # A separate verifier graded from its own image; what it wrote came back from its container.
    separate = result.job_dir / by_name["separate-verifier"].trial_name
    assert (separate / "evaluation" / "test-stdout.txt").is_file()
    assert (separate / "artifacts" / "report.txt").read_text() == "done\n"  # the agent's /logs/artifacts
    assert (separate / "artifacts" / "app" / "result.txt").read_text() == "42\n"  # declared: source mirrored
    assert (separate / "artifacts" / "reports" / "summary.txt").read_text() == "ok\n"  # declared: destination
    # Warnings: in results.json once per job, logged once per job, and in every try's result (above).
    warned = {"unimplemented-key": ["environment.skills_dir"], "unknown-key": ["verifier.timeout"]}
    summary = read_json(result.job_dir / "results.json")
    assert {task: [w.split(":")[0] for w in ws] for task, ws in summary["task_warnings"].items()} == warned
    logged = [r.getMessage() for r in caplog.records if r.name == "evalkit"]
    assert len([m for m in logged if "environment.skills_dir" in m]) == 1
    assert len([m for m in logged if "verifier.timeout" in m]) == 1


async def test_compose_containers_are_labelled_limited_and_cleaned(jobs_dir: Path):
    """A kept pod, inspected: each container has the main one's hardening and envelope, the services join
    the holder's network namespace, which maps service names to 127.0.0.1; `evalkit clean` removes all of it."""
    name = f"harbor-pod-{uuid.uuid4().hex[:6]}"
    config = _config(name, jobs_dir, ["compose-sidecar"])
    config["environment"]["keep_containers"] = True
    result = await evaluate(config)
    assert result.trials[0].rewards == {"reward": 1.0}
    try:
        containers = await job_containers(name)
        async with aiodocker.Docker() as docker:
            details = {c["Labels"]["evalkit.service"]: await (await docker.containers.get(c["Id"])).show() for c in containers}
        assert sorted(details) == ["main", "pod", "sidecar"]
        holder = details["pod"]
        assert sorted(holder["HostConfig"]["ExtraHosts"]) == ["main:127.0.0.1", "sidecar:127.0.0.1"]
        assert holder["HostConfig"]["NetworkMode"] == "none"
        for service, info in details.items():
            host = info["HostConfig"]
            assert (host["Memory"], host["NanoCpus"], host["Init"]) == (2048 * 1024 * 1024, 10**9, True), service
            assert host["PidsLimit"] > 0 and "no-new-privileges" in host["SecurityOpt"]
            assert sorted(host["CapDrop"]) == ["AUDIT_WRITE", "MKNOD", "NET_RAW", "SYS_CHROOT"]
            labels = info["Config"]["Labels"]
            assert labels["evalkit.job"] == name and labels["evalkit.try"] == "compose-sidecar__0"
            if service != "pod":
                assert host["NetworkMode"] == f"container:{holder['Id']}"
        assert details["main"]["Config"]["Cmd"] == ["sh", "-c", "exec sleep infinity"]
        assert len(await job_volumes(name)) == 1
    finally:
        cleaned = run_cli("clean", "--job", name)
    assert cleaned.returncode == 0, cleaned.stderr
    assert await job_containers(name) == []
    assert await job_volumes(name) == []
