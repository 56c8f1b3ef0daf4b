"""Bad config input: each mistake names the file, the line and the key, and exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalkit.config import load_config
from evalkit.errors import ConfigError
from tests.conftest import REPO, run_cli, write_config


def test_default_config_loads_and_resolves_paths_against_its_directory():
    config = load_config(REPO / "config.yaml")
    assert config.job_name == "smoke"
    assert config.job_dir == REPO / "artifacts" / "jobs" / "smoke"
    assert config.dataset.name == "evalkit-smoke@1.0"


def test_malformed_yaml_names_file_line_and_column(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("job_name: x\ndataset:\n  name: [unclosed\n")
    result = run_cli("run", str(path))
    assert result.returncode == 2
    assert f"evalkit: error: {path}:4:1: malformed YAML: expected ',' or ']', but got '<stream end>'" in result.stderr


def test_unknown_key_is_refused_with_a_suggestion(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text("job_name: x\ndataset:\n  name: evalkit-smoke\nagent:\n  nme: oracle\n")
    result = run_cli("run", str(path))
    assert result.returncode == 2
    assert f"{path}:5: agent.nme: unknown key; did you mean 'name'?" in result.stderr
    assert not (tmp_path / "artifacts").exists()


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text("job_name: x\nn_concurrent: four\ndataset:\n  name: evalkit-smoke\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"{path}:2: n_concurrent: Input should be a valid integer, unable to parse string as an integer (got 'four')" in str(info.value)
    result = run_cli("run", str(path))
    assert result.returncode == 2 and "n_concurrent" in result.stderr


def test_missing_required_key(tmp_path: Path):
    path = write_config(tmp_path / "cfg.yaml", {"dataset": {"name": "evalkit-smoke"}})
    with pytest.raises(ConfigError, match=rf"{path}: job_name: required key is missing"):
        load_config(path)


def test_missing_config_file(tmp_path: Path):
    result = run_cli("run", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert f"evalkit: error: config file not found: {tmp_path / 'nope.yaml'}" in result.stderr


def test_env_interpolation_and_missing_variable(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text("job_name: ${JOB:-fallback}\ndataset:\n  name: ${DATASET}\n")
    assert load_config(path, environ={"DATASET": "evalkit-smoke"}).job_name == "fallback"
    with pytest.raises(ConfigError, match=rf"{path}:3: dataset.name: environment variable DATASET is not set"):
        load_config(path, environ={})


def test_unknown_retry_error_type(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text("job_name: x\ndataset:\n  name: evalkit-smoke\nretry:\n  include_errors: [AgentTimeout]\n")
    with pytest.raises(ConfigError, match=rf"{path}:5: retry.include_errors: Value error, unknown error type 'AgentTimeout'"):
        load_config(path)


def test_cli_overrides_apply(tmp_path: Path):
    config = load_config(REPO / "config.yaml", {"n_concurrent": 7, "dataset.n_tasks": 2, "agent.name": "nop"})
    assert (config.n_concurrent, config.dataset.n_tasks, config.agent.name) == (7, 2, "nop")


def test_secrets_are_redacted_in_snapshots():
    from evalkit.config import config_from_dict

    config = config_from_dict(
        {"job_name": "x", "dataset": {"name": "d"}, "agent": {"name": "oracle", "kwargs": {"api_key": "sk-123"}}}
    )
    assert config.redacted()["agent"]["kwargs"]["api_key"] == "***"
