"""Loading Harbor task directories: legacy keys and unknown keys load; wrong types and missing files don't."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.errors import ConfigError
from evalkit.tasks import load_task
from tests.conftest import BENCHMARKS, write_task


def test_legacy_and_unknown_keys_load():
    task = load_task(BENCHMARKS / "evalkit-smoke" / "legacy-keys")
    env = task.config.environment
    assert task.config.schema_version == "1.0"
    assert env.network_mode == "no-network"
    assert env.memory_mb == 1024
    assert task.config.metadata


def test_defaults_follow_harbor():
    task = load_task(BENCHMARKS / "evalkit-smoke" / "hello-file")
    assert task.config.verifier.timeout_sec > 0
    assert task.config.environment.build_timeout_sec == 600


def test_wrong_types_name_the_file_and_key(tmp_path: Path):
    task = write_task(tmp_path, "t", task_toml='[agent]\ntimeout_sec = "soon"\n[environment]\ncpus = "many"\n')
    with pytest.raises(ConfigError) as info:
        load_task(task)
    assert str(info.value) == (
        f"{task / 'task.toml'}: invalid task config:\n"
        "  agent.timeout_sec: Input should be a valid number, unable to parse string as a number (got 'soon')\n"
        "  environment.cpus: Input should be a valid number, unable to parse string as a number (got 'many')"
    )


def test_malformed_toml(tmp_path: Path):
    task = write_task(tmp_path, "t", task_toml="[agent\n")
    with pytest.raises(ConfigError, match=rf"^{task / 'task.toml'}: malformed TOML: "):
        load_task(task)


def test_missing_test_script(tmp_path: Path):
    task = write_task(tmp_path, "t")
    (task / "tests" / "test.sh").unlink()
    with pytest.raises(ConfigError) as info:
        load_task(task)
    assert str(info.value) == f"task 't' ({task}): missing tests/test.sh (the verifier)"


def test_missing_dockerfile_without_prebuilt_image(tmp_path: Path):
    task = write_task(tmp_path, "t", dockerfile=None)
    with pytest.raises(ConfigError, match=r"missing environment/Dockerfile \(or set \[environment\] docker_image"):
        load_task(task)


def test_env_tables_expand_host_variables(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("EVALKIT_TEST_TOKEN", "abc")
    task = write_task(tmp_path, "t", task_toml='[verifier.env]\nA = "${EVALKIT_TEST_TOKEN}"\nB = "${EVALKIT_NOPE:-dflt}"\n')
    assert load_task(task).config.verifier.env == {"A": "abc", "B": "dflt"}
    write_task(tmp_path, "u", task_toml='[solution.env]\nA = "${EVALKIT_NOPE}"\n')
    with pytest.raises(ConfigError, match=r"solution.env.A: environment variable EVALKIT_NOPE is not set"):
        load_task(tmp_path / "u")
