"""Loading Harbor task directories: legacy keys and unknown keys load; wrong types and missing files don't."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.errors import TaskConfigError, TaskUnsupportedError
from evalkit.tasks import load_task
from tests.conftest import BENCHMARKS, write_task


def test_legacy_and_unknown_keys_load():
    task = load_task(BENCHMARKS / "evalkit-smoke" / "legacy-keys")
    env = task.config.environment
    assert task.config.schema_version == "1.0"
    assert env.network_mode == "no-network"
    assert env.memory_mb == 1024
    assert task.config.metadata


def test_defaults_follow_harbor(tmp_path: Path):
    task = load_task(write_task(tmp_path, "bare", task_toml=""))
    env = task.config.environment
    assert (env.cpus, env.memory_mb, env.storage_mb) == (1.0, 2048, 10240)
    assert (task.config.verifier.timeout_sec, task.config.agent.timeout_sec, env.build_timeout_sec) == (600, None, 600)


def test_wrong_types_name_the_file_and_key(tmp_path: Path):
    task = write_task(tmp_path, "t", task_toml='[agent]\ntimeout_sec = "soon"\n[environment]\ncpus = "many"\n')
    with pytest.raises(TaskConfigError) as info:
        load_task(task)
    assert str(info.value) == (
        f"{task / 'task.toml'}: invalid task config:\n"
        "  agent.timeout_sec: Input should be a valid number, unable to parse string as a number (got 'soon')\n"
        "  environment.cpus: Input should be a valid number, unable to parse string as a number (got 'many')"
    )


def test_malformed_toml(tmp_path: Path):
    task = write_task(tmp_path, "t", task_toml="[agent\n")
    with pytest.raises(TaskConfigError, match=rf"^{task / 'task.toml'}: malformed TOML: "):
        load_task(task)


def test_missing_test_script(tmp_path: Path):
    task = write_task(tmp_path, "t")
    (task / "tests" / "test.sh").unlink()
    with pytest.raises(TaskConfigError) as info:
        load_task(task)
    assert str(info.value) == f"task 't' ({task}): missing tests/test.sh (the verifier)"


def test_missing_dockerfile_without_prebuilt_image(tmp_path: Path):
    task = write_task(tmp_path, "t", dockerfile=None)
    with pytest.raises(TaskConfigError, match=r"missing environment/Dockerfile \(or set \[environment\] docker_image"):
        load_task(task)


def test_env_tables_expand_only_variables_the_job_passes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("EVALKIT_TEST_TOKEN", "abc")
    monkeypatch.setenv("EVALKIT_TEST_SECRET", "sk-never")
    task = write_task(tmp_path, "t", task_toml='[verifier.env]\nA = "${EVALKIT_TEST_TOKEN}"\nB = "${EVALKIT_NOPE:-dflt}"\n')
    assert load_task(task, pass_env=["EVALKIT_TEST_TOKEN", "EVALKIT_NOPE"]).config.verifier.env == {"A": "abc", "B": "dflt"}
    with pytest.raises(TaskConfigError) as caught:
        load_task(task, pass_env=["EVALKIT_TEST_TOKEN"])
    assert str(caught.value) == (
        "task 't': verifier.env.B refers to ${EVALKIT_NOPE}, which environment.pass_env does not list; "
        "a task reads only host variables the job passes"
    )
    write_task(tmp_path, "s", task_toml='[environment.env]\nX = "key=${EVALKIT_TEST_SECRET}"\n')
    with pytest.raises(TaskConfigError, match=r"^task 's': environment.env.X refers to \$\{EVALKIT_TEST_SECRET\}"):
        load_task(tmp_path / "s")
    write_task(tmp_path, "u", task_toml='[solution.env]\nA = "${EVALKIT_NOPE}"\n')
    with pytest.raises(TaskConfigError, match=r"solution.env.A: environment variable EVALKIT_NOPE is not set"):
        load_task(tmp_path / "u", pass_env=["EVALKIT_NOPE"])


def test_unsupported_features_are_their_own_error(tmp_path: Path):
    windows = write_task(tmp_path, "windows", task_toml='[environment]\nos = "windows"\n')
    with pytest.raises(TaskUnsupportedError) as caught:
        load_task(windows)
    assert str(caught.value) == f"task 'windows' ({windows}): environment.os = 'windows': only Linux environments are supported"
    gpu = write_task(tmp_path, "gpu", task_toml="[environment]\ngpus = 1\n")
    with pytest.raises(TaskUnsupportedError, match=r"environment.gpus = 1: GPUs are not supported yet$"):
        load_task(gpu)
