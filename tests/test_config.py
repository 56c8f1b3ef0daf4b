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
    assert f"{path}:2: n_concurrent: Value error, expected a whole number ≥ 1 or 'auto' (got 'four')" in str(info.value)
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


SECRETS = {"agent": {"name": "oracle", "kwargs": {
    "api_key": "sk-123", "headers": {"Authorization": "Bearer tok-1", "X-Trace": "plain"},
    "note": "Bearer tok-2", "endpoint": "https://user:pw@host/v1", "cookie": "sid=1", "model": "m",
}}}


def test_secrets_are_redacted_in_snapshots():
    from evalkit.config import config_from_dict

    config = config_from_dict({"job_name": "x", "dataset": {"name": "d"}, **SECRETS})
    kwargs = config.redacted()["agent"]["kwargs"]
    assert kwargs == {"api_key": "***", "headers": {"Authorization": "***", "X-Trace": "***"}, "note": "***",
                      "endpoint": "***", "cookie": "***", "model": "m"}


def test_identity_holds_secrets_as_salted_hashes():
    from evalkit.config import SECRET_MARK, config_from_dict

    config = config_from_dict({"job_name": "x", "dataset": {"name": "d"}, **SECRETS})
    kwargs = config.identity("salt-a")["agent"]["kwargs"]
    assert kwargs["model"] == "m"
    hashed = [kwargs["api_key"], kwargs["headers"]["Authorization"], kwargs["note"], kwargs["endpoint"], kwargs["cookie"]]
    assert all(v.startswith(SECRET_MARK) for v in hashed) and len(set(hashed)) == 5
    assert "sk-123" not in str(config.identity("salt-a")) and "tok-1" not in str(config.identity("salt-a"))
    assert config.identity("salt-a") == config.identity("salt-a")
    assert config.identity("salt-b")["agent"]["kwargs"]["api_key"] != kwargs["api_key"]
    changed = config_from_dict({"job_name": "x", "dataset": {"name": "d"},
                                "agent": {**SECRETS["agent"], "kwargs": {**SECRETS["agent"]["kwargs"], "api_key": "sk-456"}}})
    assert changed.identity("salt-a")["agent"]["kwargs"]["api_key"] != kwargs["api_key"]


def test_pass_env_names_are_checked(tmp_path: Path):
    path = tmp_path / "cfg.yaml"
    path.write_text("job_name: x\ndataset:\n  name: d\nenvironment:\n  pass_env: [GOOD_1, 'bad name']\n")
    with pytest.raises(ConfigError, match=rf"{path}:5: environment.pass_env\[1\]: String should match pattern"):
        load_config(path)


@pytest.mark.parametrize(
    ("error_type", "kind", "retried"),
    [
        ("EnvironmentStartError", "infrastructure", True),
        ("DockerUnavailableError", "infrastructure", True),
        ("AgentSetupError", "infrastructure", True),
        ("RuntimeError", "infrastructure", False),  # unexpected: a bug, not a hiccup
        ("AgentTimeoutError", "agent", False),
        ("ContainerLostError", "agent", False),
        ("RewardParseError", "verifier", False),
        ("EnvironmentBuildError", "task", False),
        ("TaskConfigError", "task", False),
    ],
)
def test_default_retry_policy_is_known_infrastructure_errors_only(error_type: str, kind: str, retried: bool):
    from evalkit.config import RetryConfig
    from evalkit.results import ErrorInfo

    error = ErrorInfo(type=error_type, kind=kind, phase="environment", message="m")
    assert RetryConfig().should_retry(error) is retried
    assert RetryConfig(include_errors=["AgentTimeoutError"]).should_retry(error) is (error_type == "AgentTimeoutError")
    assert RetryConfig(exclude_errors=["EnvironmentStartError"]).should_retry(error) is (retried and error_type != "EnvironmentStartError")
