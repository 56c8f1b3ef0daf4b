"""The `Task` the engine runs, loaded from a Harbor task directory (`task.toml` and friends).

`task.toml` is read leniently where Harbor is lenient (unknown keys, legacy keys) and strictly where a wrong
value would silently change a run (types of known keys). Errors name the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evalkit.envvars import expand_env_vars, referenced_names
from evalkit.errors import TaskConfigError, TaskUnsupportedError


class _Section(BaseModel):
    # Harbor adds keys over time; unknown ones must not break loading.
    model_config = ConfigDict(extra="allow")


class TaskAgentConfig(_Section):
    timeout_sec: float | None = Field(default=None, gt=0)
    """None means no limit (unless the job config sets one)."""
    user: str | None = None
    network_mode: str | None = None


class TaskVerifierConfig(_Section):
    timeout_sec: float = Field(default=600.0, gt=0)
    env: dict[str, str] = {}
    user: str | None = None
    network_mode: str | None = None


class TaskEnvironmentConfig(_Section):
    build_timeout_sec: float = Field(default=600.0, gt=0)
    docker_image: str | None = None
    """A prebuilt image: no build happens."""
    cpus: float = Field(default=1.0, gt=0)
    """Harbor's defaults (1 CPU, 2 GB memory, 10 GB storage) apply when a task names none: container
    resources move scores, so they are never left unlimited."""
    memory_mb: int = Field(default=2048, gt=0)
    storage_mb: int = Field(default=10240, gt=0)
    gpus: int | None = Field(default=None, ge=0)
    env: dict[str, str] = {}
    workdir: str | None = None
    network_mode: Literal["public", "no-network", "allowlist"] = "public"
    allowed_hosts: list[str] = []
    healthcheck: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """Map Harbor's legacy `allow_internet`, `memory = "2G"`, `storage = "10G"` onto current keys."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "allow_internet" in data and "network_mode" not in data:
            allow = data.pop("allow_internet")
            if not isinstance(allow, bool):
                raise ValueError(f"allow_internet must be true or false, got {allow!r}")
            data["network_mode"] = "public" if allow else "no-network"
        for legacy, key in (("memory", "memory_mb"), ("storage", "storage_mb")):
            if legacy in data and key not in data:
                data[key] = _megabytes(data.pop(legacy), legacy)
        return data


class TaskSolutionConfig(_Section):
    env: dict[str, str] = {}


class TaskConfig(_Section):
    schema_version: str = "1.0"
    source: str | None = None
    metadata: dict[str, Any] = {}
    agent: TaskAgentConfig = TaskAgentConfig()
    verifier: TaskVerifierConfig = TaskVerifierConfig()
    environment: TaskEnvironmentConfig = TaskEnvironmentConfig()
    solution: TaskSolutionConfig = TaskSolutionConfig()

    @model_validator(mode="before")
    @classmethod
    def _legacy_version(cls, data: Any) -> Any:
        if isinstance(data, dict) and "version" in data and "schema_version" not in data:
            data = {**data, "schema_version": str(data.pop("version"))}
        return data


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_MB_PER_UNIT = {"": 1 / 1024**2, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}


def _megabytes(value: Any, key: str) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{key} must be a size like '2G' or '512M', got {value!r}")
    return max(1, int(float(match.group(1)) * _MB_PER_UNIT[match.group(2).upper()]))


class Task(BaseModel):
    """A task ready to run: its directory, parsed config and instruction."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: Path
    config: TaskConfig
    instruction: str

    @property
    def environment_dir(self) -> Path:
        return self.path / "environment"

    @property
    def tests_dir(self) -> Path:
        return self.path / "tests"

    @property
    def solution_dir(self) -> Path:
        return self.path / "solution"


def load_task(path: Path, name: str | None = None, *, pass_env: Collection[str] = ()) -> Task:
    """Load and check a task directory; raises TaskConfigError saying which file and key is wrong, or
    TaskUnsupportedError. `${VAR}` in its env tables may name only variables in `pass_env`."""
    path = Path(path)
    name = name or path.name
    where = f"task {name!r} ({path})"
    if not path.is_dir():
        raise TaskConfigError(f"{where}: task directory does not exist")
    toml_path = path / "task.toml"
    try:
        raw = tomllib.loads(toml_path.read_text())
    except FileNotFoundError:
        raise TaskConfigError(f"{where}: missing task.toml") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TaskConfigError(f"{toml_path}: malformed TOML: {exc}") from None
    try:
        config = TaskConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"])
            got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
            problems.append(f"{key}: {err['msg']}{got}")
        raise TaskConfigError(f"{toml_path}: invalid task config:\n  " + "\n  ".join(problems)) from None
    instruction_path = path / "instruction.md"
    if not instruction_path.is_file():
        raise TaskConfigError(f"{where}: missing instruction.md")
    if not (path / "tests" / "test.sh").is_file():
        raise TaskConfigError(f"{where}: missing tests/test.sh (the verifier)")
    if config.environment.docker_image is None:
        if any((path / "environment" / f).is_file() for f in ("docker-compose.yaml", "docker-compose.yml")):
            raise TaskUnsupportedError(f"{where}: docker-compose environments are not supported yet")
        if not (path / "environment" / "Dockerfile").is_file():
            raise TaskConfigError(
                f"{where}: missing environment/Dockerfile (or set [environment] docker_image in task.toml)"
            )
    if config.environment.gpus:
        raise TaskUnsupportedError(f"{where}: environment.gpus = {config.environment.gpus}: GPUs are not supported yet")
    _expand_env(config, toml_path, name, pass_env)
    return Task(name=name, path=path.resolve(), config=config, instruction=instruction_path.read_text())


def _expand_env(config: TaskConfig, toml_path: Path, name: str, pass_env: Collection[str]) -> None:
    """`${VAR}` / `${VAR:-default}` in env tables, from the host's environment, but only for variables the
    job passes: a task from a registry must not copy your API key into its container."""
    allowed = {key: os.environ[key] for key in pass_env if key in os.environ}
    for section_name, section in (("environment", config.environment), ("verifier", config.verifier),
                                  ("solution", config.solution)):
        for key, value in section.env.items():
            for variable in referenced_names(value):
                if variable not in pass_env:
                    raise TaskConfigError(
                        f"task {name!r}: {section_name}.env.{key} refers to ${{{variable}}}, which "
                        "environment.pass_env does not list; a task reads only host variables the job passes"
                    )
            try:
                section.env[key] = expand_env_vars(value, allowed)
            except KeyError as exc:
                raise TaskConfigError(
                    f"{toml_path}: {section_name}.env.{key}: environment variable {exc.args[0]} is not set"
                ) from None
