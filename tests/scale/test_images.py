"""Images off the critical path, in real Docker: pulls that fail are retried and typed, a failing `RUN` is the
task's and never retried, eviction keeps what pending trials need, BuildKit features build (and a feature
the builder lacks is named), and a changed base image is never silently reused."""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
from pathlib import Path

import aiodocker
import pytest

from evalkit import evaluate
from evalkit.environments.images import build_image, dockerfile_bases, dockerfile_features, parse_reference
from tests.conftest import BENCHMARKS, HOST_NETWORK, job_containers, write_task
from tests.conftest import unique
from tests.scale.conftest import BASE, images_labelled, remove_images

pytestmark = pytest.mark.docker


@pytest.mark.parametrize(
    ("text", "repository", "tag", "digest", "pullable"),
    [
        ("debian", "debian", None, None, "debian:latest"),
        ("debian:bookworm-slim", "debian", "bookworm-slim", None, "debian:bookworm-slim"),
        ("registry:5000/img:tag", "registry:5000/img", "tag", None, "registry:5000/img:tag"),
        ("localhost:5000/team/img", "localhost:5000/team/img", None, None, "localhost:5000/team/img:latest"),
        ("img@sha256:" + "a" * 64, "img", None, "sha256:" + "a" * 64, "img@sha256:" + "a" * 64),
        ("ghcr.io/o/r:v1@sha256:" + "b" * 64, "ghcr.io/o/r", "v1", "sha256:" + "b" * 64, "ghcr.io/o/r@sha256:" + "b" * 64),
    ],
)
def test_full_image_references_parse(text: str, repository: str, tag: str | None, digest: str | None, pullable: str):
    ref = parse_reference(text)
    assert (ref.repository, ref.tag, ref.digest, ref.pullable) == (repository, tag, digest, pullable)
    assert str(ref) == text


@pytest.mark.parametrize("text", ["", "UPPER/case", "img:", "img@sha256:xyz", "a b"])
def test_a_malformed_reference_is_refused(text: str):
    with pytest.raises(ValueError, match="is not an image reference"):
        parse_reference(text)


def test_dockerfile_bases_and_features():
    text = (
        "# syntax=docker/dockerfile:1.4\nARG BASE=debian:bookworm-slim\nFROM ${BASE} AS build\nRUN <<EOF\necho\nEOF\n"
        "FROM scratch\nCOPY --from=build /x /x\nCOPY --from=registry:5000/tools:1 /t /t\nCOPY --chmod=755 a /a\n"
    )
    assert dockerfile_bases(text) == ["debian:bookworm-slim", "registry:5000/tools:1"]
    features = dockerfile_features(text)
    assert features[0].startswith("a `# syntax=docker/dockerfile:1.4` frontend (line 1)")
    assert any(f.startswith("a heredoc") and "line 4" in f for f in features)
    assert any(f.startswith("`COPY --chmod=755`") for f in features)


async def tag_after_first_failure(log: Path, base: str) -> None:
    """Make the missing base appear (as a registry that comes back would) once the first pull has failed."""
    while "retrying in" not in (log.read_text() if log.exists() else ""):
        await asyncio.sleep(0.1)
    repository, _, tag = base.partition(":")
    async with aiodocker.Docker() as docker:
        await docker.images.tag(BASE, repository, tag=tag)


async def test_a_base_image_whose_first_pull_fails_is_retried_and_the_trial_passes(tmp_path: Path):
    # No registry is reachable here: the pull of a base that is not present fails for real (DNS), and the
    # test then provides the image, as a registry that comes back would.
    base = f"{unique('base')}:1"
    write_task(tmp_path / "tasks", "late-base", dockerfile=f"FROM {base}\nWORKDIR /app\n")
    name = unique("pull")
    jobs = tmp_path / "jobs"
    try:
        job = asyncio.ensure_future(evaluate({"job_name": name, **HOST_NETWORK, "jobs_dir": str(jobs), "dataset": {"path": str(tmp_path / "tasks")}}))
        await asyncio.wait_for(tag_after_first_failure(jobs / name / "images" / "late-base.log", base), timeout=120)
        result = await asyncio.wait_for(job, timeout=300)
    finally:
        await remove_images(base)
    (trial,) = result.trials
    assert (trial.rewards, trial.error, result.summary.n_tries) == ({"reward": 1.0}, None, 1)
    log = (jobs / name / "images" / "late-base.log").read_text()
    assert f"pulling {base} failed (attempt 1 of 3)" in log and f"pulled {base}" in log
    assert result.summary.images.built == 1
    await remove_images(*(i["Id"] for i in await images_labelled(f"evalkit.built-by={name}")))


async def test_a_base_that_never_comes_is_an_infrastructure_error_retried_by_the_job(tmp_path: Path):
    base = f"{unique('never')}:1"
    write_task(tmp_path / "tasks", "no-base", dockerfile=f"FROM {base}\n")
    result = await evaluate({"job_name": unique("never"), **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"),
                             "retry": {"max_retries": 1, "backoff_sec": 0},
                             "dataset": {"path": str(tmp_path / "tasks")}})
    (trial,) = result.trials
    assert (trial.error.type, trial.error.kind, trial.error.phase) == ("ImagePullError", "infrastructure", "environment")
    assert trial.error.message.startswith(f"pulling base image {base} failed 3 times; last: ")
    assert "no such host" in trial.error.message or "dial tcp" in trial.error.message
    assert result.summary.n_tries == 2  # the job's own retry, as for any infrastructure error


async def test_a_failing_run_step_is_the_tasks_error_and_never_retried(tmp_path: Path):
    marker = unique("run")
    write_task(tmp_path / "tasks", "bad-run", dockerfile=f"FROM {BASE}\nRUN echo {marker} && exit 3\n")
    name = unique("badrun")
    result = await evaluate({"job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_attempts": 3, "n_concurrent": 3, **HOST_NETWORK,
                             "retry": {"max_retries": 2, "backoff_sec": 0},  # the default policy: infrastructure errors only
                             "dataset": {"path": str(tmp_path / "tasks")}})
    assert result.summary.n_tries == 3 and result.summary.errors == {"EnvironmentBuildError": 3}
    for trial in result.trials:
        assert (trial.error.kind, trial.environment) == ("task", None)
        assert "exit code: 3" in trial.error.message
    log = (tmp_path / "jobs" / name / "images" / "bad-run.log").read_text()
    assert log.count("ERROR:") == 1  # built once: the other attempts failed fast on the remembered error
    assert await job_containers(name) == []


async def test_eviction_keeps_every_image_a_pending_trial_needs(tmp_path: Path):
    # A budget of zero: every image is evicted as soon as no pending trial needs it. If one were evicted
    # while a trial still needed it, that trial's start would have to build it again (built > 6).
    marker = unique("evict")
    for i in range(6):
        write_task(tmp_path / "tasks", f"e{i}", dockerfile=f"FROM {BASE}\nRUN echo {marker}-{i} > /id\n")
    name = unique("evict")
    result = await evaluate({"job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_attempts": 3, "n_concurrent": 2,
                             "environment": {"image_cache_gb": 0, "n_concurrent_builds": 2, "network_mode": "host"},
                             "dataset": {"path": str(tmp_path / "tasks")}})
    summary = result.summary
    assert (summary.n_finished, summary.mean_reward, summary.errors) == (18, 1.0, {})
    assert (summary.images.built, summary.images.evicted) == (6, 6)
    assert await images_labelled(f"evalkit.built-by={name}") == []
    assert await job_containers(name) == []


async def test_buildkit_features_build_and_a_missing_feature_is_named(tmp_path: Path):
    tasks = tmp_path / "tasks"
    for task in ("buildkit-features", "buildkit-heredoc"):
        shutil.copytree(BENCHMARKS / "evalkit-harbor-format" / task, tasks / task)
        dockerfile = tasks / task / "environment" / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text() + f"LABEL nonce={unique('bk')}\n")  # built by this run
    result = await evaluate({"job_name": unique("buildkit"), **HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tasks)}})
    by_task = {t.task_name: t for t in result.trials}
    assert (by_task["buildkit-features"].rewards, by_task["buildkit-features"].error) == ({"reward": 1.0}, None)
    heredoc = by_task["buildkit-heredoc"].error
    assert (heredoc.type, heredoc.kind) == ("EnvironmentBuildError", "task")
    assert "heredoc" in heredoc.message and "BuildKit" in heredoc.message and "line 3" in heredoc.message


async def build_base(docker: aiodocker.Docker, tag: str, generation: int) -> None:
    dockerfile = f"FROM {BASE}\nRUN echo {generation} > /etc/evalkit-base-generation\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    assert await build_image(docker, buf.getvalue(), {"t": tag}, lambda _: None, buildkit=True) is None


async def test_a_changed_base_image_is_never_silently_reused(tmp_path: Path):
    base = f"{unique('gen')}:latest"
    task = tmp_path / "tasks" / "changed-base"
    shutil.copytree(BENCHMARKS / "evalkit-harbor-format" / "changed-base", task)
    (task / "environment" / "Dockerfile").write_text(f"FROM {base}\nWORKDIR /app\n")
    config = {**HOST_NETWORK, "jobs_dir": str(tmp_path / "jobs"), "dataset": {"path": str(tmp_path / "tasks")}}
    names = [unique("gen1"), unique("gen2")]
    try:
        async with aiodocker.Docker() as docker:
            await build_base(docker, base, 1)
            first = await evaluate({**config, "job_name": names[0]})
            await build_base(docker, base, 2)
            second = await evaluate({**config, "job_name": names[1]})
    finally:
        await remove_images(base)
        for name in names:
            await remove_images(*(i["Id"] for i in await images_labelled(f"evalkit.built-by={name}")))
    assert [t.rewards for t in first.trials] == [{"reward": 1.0, "base_generation": 1.0}]
    assert [t.rewards for t in second.trials] == [{"reward": 1.0, "base_generation": 2.0}]
    assert (first.summary.images.built, second.summary.images.built) == (1, 1)
