"""The `Task` the engine runs, loaded from a Harbor task directory (`task.toml` and friends).

`task.toml` is read as Harbor 0.25 reads it (its keys, defaults and legacy spellings; see
`docs/harbor-task-format.md` §2), strictly where a wrong value would silently change a run (types of known
keys). Harbor ignores keys it does not know; evalkit runs such a task too but names every key it ignores in a
warning, and refuses (`TaskUnsupportedError`) a task that needs something it does not implement where that
would change the score. Errors name the file and the key.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evalkit.envvars import expand_env_vars, referenced_names
from evalkit.errors import TaskConfigError, TaskUnsupportedError

NetworkPolicy = Literal["public", "no-network", "allowlist"]
_STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_IGNORED = "ignored"
"""Marks a key Harbor knows and evalkit accepts without implementing it (it cannot change an oracle's or a
verifier's result): setting it earns a warning."""


def _ignored(why: str) -> Any:
    return {"evalkit": _IGNORED, "why": why}


class _Section(BaseModel):
    # Harbor ignores keys it does not know; evalkit does too, but names them (`warnings`).
    model_config = ConfigDict(extra="allow")


class HealthcheckConfig(_Section):
    """`[environment.healthcheck]` / `[[steps]] healthcheck`: a command run in the main container until it
    passes, before the agent (not Docker's HEALTHCHECK: it never runs again once it passed)."""

    command: str
    """Run with `bash -c` as the default user; exit 0 means healthy."""
    interval_sec: float = Field(default=5.0, ge=0)
    """Pause after a counted failure."""
    timeout_sec: float = Field(default=30.0, ge=0)
    """Per run, truncated to whole seconds as Harbor does (below 1 s: no limit); a run that outlives it
    fails the check at once."""
    start_period_sec: float = Field(default=0.0, ge=0)
    """Failures this long after the first run do not count."""
    start_interval_sec: float = Field(default=5.0, ge=0)
    """Pause after a failure inside the start period."""
    retries: int = Field(default=3, ge=1)
    """Consecutive counted failures that fail the check."""


class ArtifactConfig(_Section):
    """A file or directory collected from the agent's container after the agent (Harbor's `artifacts`)."""

    source: str
    """Absolute path in the container."""
    destination: str | None = None
    """Where the copy lands under the try's `artifacts/`, relative; default: `source` mirrored there."""
    exclude: list[str] = []
    """tar exclude patterns (not implemented: a warning, or refused where they change grading)."""
    service: str | None = None
    """The compose service to collect from; only `main` is implemented."""

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError(f"artifact source must not contain '..', got {value!r}")
        return value

    @field_validator("destination")
    @classmethod
    def _destination(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in value.split("/") or value.strip("/") in ("", "manifest.json")):
            raise ValueError(f"artifact destination must be a relative path without '..', not manifest.json; got {value!r}")
        return value


class CollectConfig(_Section):
    """`[[verifier.collect]]`: a command run after the agent, before artifacts are collected."""

    command: str
    service: str = "main"
    timeout_sec: float = Field(default=60.0, gt=0)
    user: str | int | None = None


class TaskAgentConfig(_Section):
    timeout_sec: float | None = Field(default=None, gt=0)
    """None means no limit (unless the job config sets one)."""
    user: str | int | None = None
    network_mode: NetworkPolicy | None = None
    """A phase override of `[environment].network_mode`; only the same policy is implemented."""
    allowed_hosts: list[str] = []


class TaskEnvironmentConfig(_Section):
    build_timeout_sec: float = Field(default=600.0, gt=0)
    docker_image: str | None = None
    """A prebuilt image: no build happens (Harbor uses it even when environment/Dockerfile exists)."""
    os: Literal["linux", "windows"] = "linux"
    cpus: float = Field(default=1.0, gt=0)
    """Harbor's defaults (1 CPU, 2 GB memory, 10 GB storage) apply when a task names none: container
    resources move scores, so they are never left unlimited."""
    memory_mb: int = Field(default=2048, gt=0)
    storage_mb: int = Field(default=10240, gt=0)
    gpus: int | None = Field(default=None, ge=0)
    gpu_types: list[str] | None = None
    tpu: dict[str, Any] | None = None
    env: dict[str, str] = {}
    workdir: str | None = None
    network_mode: NetworkPolicy = "public"
    allowed_hosts: list[str] = []
    healthcheck: HealthcheckConfig | None = None
    skills_dir: str | None = Field(default=None, json_schema_extra=_ignored("no agent skills are injected"))
    mcp_servers: list[dict[str, Any]] = Field(default=[], json_schema_extra=_ignored("evalkit's agents get no MCP servers"))

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


class TaskVerifierConfig(_Section):
    timeout_sec: float = Field(default=600.0, gt=0)
    env: dict[str, str] = {}
    user: str | int | None = None
    network_mode: NetworkPolicy | None = None
    allowed_hosts: list[str] = []
    environment_mode: Literal["shared", "separate"] | None = None
    """None: `separate` when `environment` is set, else `shared`."""
    environment: TaskEnvironmentConfig | None = None
    """The separate verifier's environment (an `[environment]`-shaped table)."""
    collect: list[CollectConfig] = []


class TaskSolutionConfig(_Section):
    env: dict[str, str] = {}


class TaskIdentity(_Section):
    """`[task]`: package identity (name, version, description, authors, keywords): descriptive only here;
    the dataset entry names the task."""


class StepConfig(_Section):
    """One `[[steps]]` entry; its files are under `steps/<name>/`."""

    name: str
    min_reward: float | dict[str, float] | None = None
    """Stop after this step when its reward (a float gates `reward`; a table gates each key) is below."""
    healthcheck: HealthcheckConfig | None = None
    artifacts: list[str | ArtifactConfig] = []
    agent: TaskAgentConfig = TaskAgentConfig()
    verifier: TaskVerifierConfig = TaskVerifierConfig()
    """`timeout_sec` defaults to 600 here, never to the task's `[verifier] timeout_sec` (as in Harbor)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _STEP_NAME.match(value):
            raise ValueError(f"step names are portable directory names (letters, digits, '.', '_', '-'), got {value!r}")
        return value


class TaskConfig(_Section):
    schema_version: str = "1.0"
    source: str | None = None
    task: TaskIdentity | None = None
    metadata: dict[str, Any] = {}
    multi_step_reward_strategy: Literal["mean", "final"] = "mean"
    artifacts: list[str | ArtifactConfig] = []
    agent: TaskAgentConfig = TaskAgentConfig()
    verifier: TaskVerifierConfig = TaskVerifierConfig()
    environment: TaskEnvironmentConfig = TaskEnvironmentConfig()
    solution: TaskSolutionConfig = TaskSolutionConfig()
    steps: list[StepConfig] = []

    @model_validator(mode="before")
    @classmethod
    def _legacy_version(cls, data: Any) -> Any:
        if isinstance(data, dict) and "version" in data and "schema_version" not in data:
            data = dict(data)
            data["schema_version"] = str(data.pop("version"))
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


def artifact_configs(entries: list[str | ArtifactConfig]) -> list[ArtifactConfig]:
    """Harbor's shorthand: a string is `{source = …}`."""
    return [ArtifactConfig(source=e) if isinstance(e, str) else e for e in entries]


class TaskStep(BaseModel):
    """One step of a multi-step task, with its files."""

    model_config = ConfigDict(frozen=True)

    config: StepConfig
    instruction: str
    path: Path
    """`steps/<name>/`."""

    @property
    def name(self) -> str:
        return self.config.name


class VerifierPlan(BaseModel):
    """Where and how one verification runs (the task's, or one step's)."""

    model_config = ConfigDict(frozen=True)

    separate: bool
    """True: in a fresh environment of its own, receiving only `/logs/artifacts` and declared artifacts."""
    image_context: Path | None = None
    """A separate verifier's own image, built from this directory (`tests/` with its Dockerfile)."""
    docker_image: str | None = None
    """A separate verifier's own prebuilt image."""
    environment: TaskEnvironmentConfig | None = None
    """A separate verifier's environment settings."""
    tests_dirs: tuple[Path, ...] = ()
    """Uploaded to `/tests` in order, later files winning; empty when the verifier's image bundles them."""
    timeout_sec: float = 600.0
    env: dict[str, str] = {}
    user: str | int | None = None
    collect: tuple[CollectConfig, ...] = ()
    artifacts: tuple[ArtifactConfig, ...] = ()
    """Declared artifacts (task, then step), collected after the agent."""

    @property
    def bundled(self) -> bool:
        """The verifier's image carries `/tests/test.sh` itself: nothing is uploaded."""
        return self.image_context is not None or self.docker_image is not None


class Task(BaseModel):
    """A task ready to run: its directory, parsed config, instruction(s) and what evalkit ignores in it."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: Path
    config: TaskConfig
    instruction: str
    """The root instruction; for a view of one step (`for_step`), that step's."""
    steps: tuple[TaskStep, ...] = ()
    warnings: tuple[str, ...] = ()
    """Keys and files of this task that evalkit does not implement, each named (recorded in every try)."""
    compose: Any = None
    """The parsed `environment/docker-compose.yaml` (`evalkit.environments.compose.ComposeProject`), if any."""
    step: str | None = None
    """Set on the view `for_step` returns: the step whose solution and instruction this is."""
    image_context: Path | None = None
    """Build the image from this directory instead of `environment/` (a verifier's or a sidecar's view)."""

    @property
    def environment_dir(self) -> Path:
        return self.image_context or self.path / "environment"

    @property
    def tests_dir(self) -> Path:
        return self.path / "tests"

    @property
    def solution_dir(self) -> Path:
        """Per step: `steps/<name>/solution/` when that directory exists, else the task's (as Harbor)."""
        if self.step is not None:
            own = self.path / "steps" / self.step / "solution"
            if own.is_dir():
                return own
        return self.path / "solution"

    def for_step(self, step: TaskStep) -> Task:
        """This task as the agent sees it during `step`: the step's instruction and solution."""
        return self.model_copy(update={"instruction": step.instruction, "step": step.name})

    def with_image(self, *, context: Path | None = None, docker_image: str | None = None,
                   environment: TaskEnvironmentConfig | None = None) -> Task:
        """This task with another image definition (a separate verifier's, a compose sidecar's), so the
        image builder treats it like any task environment."""
        env = (environment or self.config.environment).model_copy(update={"docker_image": docker_image})
        return self.model_copy(update={"image_context": context, "config": self.config.model_copy(update={"environment": env}),
                                       "compose": None})

    def verifier_plan(self, step: TaskStep | None = None) -> VerifierPlan:
        """How the task's verifier (or `step`'s) runs, resolved as Harbor resolves it: mode, image, tests,
        timeout, env, user, collect hooks and artifacts."""
        task_v = self.config.verifier
        step_v = step.config.verifier if step else None
        environment = (step_v and step_v.environment) or task_v.environment
        mode = (step_v and step_v.environment_mode) or ("separate" if step_v and step_v.environment else None) \
            or task_v.environment_mode or ("separate" if task_v.environment else "shared")
        tests = [self.tests_dir] if self.tests_dir.is_dir() else []
        if step is not None and (step.path / "tests").is_dir():
            tests.append(step.path / "tests")
        plan: dict[str, Any] = {
            "separate": mode == "separate",
            "tests_dirs": tuple(tests),
            "timeout_sec": step_v.timeout_sec if step_v else task_v.timeout_sec,
            "env": {**task_v.env, **(step_v.env if step_v else {})},
            "user": step_v.user if step_v and step_v.user is not None else task_v.user,
            "collect": tuple(task_v.collect) + tuple(step_v.collect if step_v else ()),
            "artifacts": tuple(artifact_configs(self.config.artifacts)
                               + artifact_configs(step.config.artifacts if step else [])),
        }
        if mode == "separate":
            plan["environment"] = environment or self.config.environment
            for image, context in ((step_v and step_v.environment and step_v.environment.docker_image, None),
                                   (None, step and _verifier_dockerfile(step.path / "tests")),
                                   (task_v.environment and task_v.environment.docker_image, None),
                                   (None, _verifier_dockerfile(self.tests_dir))):
                if image or context:
                    plan.update(docker_image=image or None, image_context=context, tests_dirs=())
                    break
            else:  # a fresh container of the task's own image: prebuilt, or built from environment/
                plan.update(docker_image=self.config.environment.docker_image)
        return VerifierPlan(**plan)


def _verifier_dockerfile(tests: Path) -> Path | None:
    return tests if (tests / "Dockerfile").is_file() else None


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
    steps = _load_steps(path, config, where)
    instruction = ""
    if not steps:
        instruction_path = path / "instruction.md"
        if not instruction_path.is_file():
            raise TaskConfigError(f"{where}: missing instruction.md")
        instruction = strip_canary(instruction_path.read_text())
    warnings = [*_key_warnings(config), *_file_warnings(path, steps)]
    _check_supported(path, config, steps, where)
    compose = None
    env_dir = path / "environment"
    compose_file = next((env_dir / f for f in ("docker-compose.yaml", "docker-compose.yml") if (env_dir / f).is_file()), None)
    if compose_file is not None:
        from evalkit.environments.compose import load_compose  # parsing only: no engine client is imported

        compose = load_compose(compose_file, where=where, pass_env=pass_env,
                               main_has_dockerfile=(env_dir / "Dockerfile").is_file() or bool(config.environment.docker_image))
        warnings += compose.warnings
    elif config.environment.docker_image is None and not (env_dir / "Dockerfile").is_file():
        raise TaskConfigError(f"{where}: missing environment/Dockerfile (or set [environment] docker_image in task.toml)")
    task = Task(name=name, path=path.resolve(), config=config, instruction=instruction, steps=tuple(steps),
                warnings=tuple(warnings), compose=compose)
    _check_verifiers(task, where)
    _expand_env(config, toml_path, name, pass_env)
    return task


_CANARY = re.compile(r"^\s*(<!--.*canary.*-->|#.*canary.*)\s*$", re.IGNORECASE)


def strip_canary(text: str) -> str:
    """Leading "canary" comment lines (benchmark-contamination markers) are not part of the instruction."""
    lines = text.splitlines(keepends=True)
    while lines and _CANARY.match(lines[0]):
        lines.pop(0)
    return "".join(lines).lstrip("\n")


def _load_steps(path: Path, config: TaskConfig, where: str) -> list[TaskStep]:
    seen: set[str] = set()
    steps = []
    for step in config.steps:
        if step.name.lower() in seen:
            raise TaskConfigError(f"{where}: two steps are named {step.name!r} (names are unique ignoring case)")
        seen.add(step.name.lower())
        step_dir = path / "steps" / step.name
        instruction = step_dir / "instruction.md"
        if not instruction.is_file():
            raise TaskConfigError(f"{where}: missing steps/{step.name}/instruction.md")
        steps.append(TaskStep(config=step, instruction=strip_canary(instruction.read_text()), path=step_dir.resolve()))
    return steps


def _check_verifiers(task: Task, where: str) -> None:
    """Every verification needs a test script: uploaded from tests/ (the step's winning) or in its image."""
    for step in task.steps or (None,):
        plan = task.verifier_plan(step)
        label = f"step {step.name!r}: " if step else ""
        if plan.separate and any((d / "docker-compose.yaml").is_file() for d in (task.tests_dir, step and step.path / "tests") if d):
            raise TaskUnsupportedError(f"{where}: {label}a separate verifier from a docker-compose file is not supported")
        if not plan.bundled and not any((d / "test.sh").is_file() for d in plan.tests_dirs):
            raise TaskConfigError(f"{where}: {label}missing tests/test.sh (the verifier)")
        if plan.separate and any(a.exclude for a in plan.artifacts):
            raise TaskUnsupportedError(
                f"{where}: {label}artifacts with `exclude` in a separate verifier environment: exclusions are not implemented "
                "and would change what grading sees"
            )


def _check_supported(path: Path, config: TaskConfig, steps: list[TaskStep], where: str) -> None:
    """What would change a score if evalkit ran the task without it."""
    env = config.environment
    if env.gpus:
        raise TaskUnsupportedError(f"{where}: environment.gpus = {env.gpus}: GPUs are not supported yet")
    if env.gpu_types or env.tpu:
        raise TaskUnsupportedError(f"{where}: environment.{'gpu_types' if env.gpu_types else 'tpu'}: accelerators are not supported yet")
    if env.os != "linux":
        raise TaskUnsupportedError(f"{where}: environment.os = {env.os!r}: only Linux environments are supported")
    phases = [("agent", config.agent), ("verifier", config.verifier)]
    phases += [(f"steps.{s.name}.{p}", getattr(s.config, p)) for s in steps for p in ("agent", "verifier")]
    for key, phase in phases:
        if phase.network_mode is not None and phase.network_mode != env.network_mode:
            raise TaskUnsupportedError(
                f"{where}: {key}.network_mode = {phase.network_mode!r} differs from environment.network_mode = "
                f"{env.network_mode!r}: changing the network between phases is not supported"
            )
    for key, entries in [("artifacts", config.artifacts)] + [(f"steps.{s.name}.artifacts", s.config.artifacts) for s in steps]:
        for i, artifact in enumerate(artifact_configs(entries)):
            if artifact.service not in (None, "main"):
                raise TaskUnsupportedError(f"{where}: {key}[{i}].service = {artifact.service!r}: collecting from a compose sidecar is not supported")
            if not artifact.source.startswith("/"):
                raise TaskUnsupportedError(f"{where}: {key}[{i}].source = {artifact.source!r}: only absolute artifact paths are supported")
    collects = [("verifier.collect", config.verifier.collect)] + [(f"steps.{s.name}.verifier.collect", s.config.verifier.collect) for s in steps]
    for key, hooks in collects:
        for i, hook in enumerate(hooks):
            if hook.service != "main":
                raise TaskUnsupportedError(f"{where}: {key}[{i}].service = {hook.service!r}: hooks in a compose sidecar are not supported")
    ignores = [p for p in (path / "tests", path / "solution", *(s.path / d for s in steps for d in ("tests", "solution")))
               if (p / ".harborignore").is_file()]
    if ignores:
        raise TaskUnsupportedError(
            f"{where}: {ignores[0].relative_to(path)}/.harborignore: upload filters are not supported (they change which "
            "test or solution files a run sees)"
        )


def _key_warnings(config: TaskConfig) -> Iterator[str]:
    """Every key Harbor does not know (it ignores them silently), and every key evalkit accepts without
    implementing it, each named as a dotted path."""
    for key, field, parent in _walk(config, ""):
        if field is None:
            hint = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(parent.model_fields), n=1)
            yield f"{key}: not a Harbor task.toml key; ignored" + (f" (did you mean {hint[0]}?)" if hint else "")
        elif (field.json_schema_extra or {}).get("evalkit") == _IGNORED:
            yield f"{key}: not implemented by evalkit; ignored ({field.json_schema_extra['why']})"
    for scope, environment in (("environment", config.environment), ("verifier.environment", config.verifier.environment)):
        if environment is not None and environment.network_mode == "allowlist":
            yield f"{scope}.allowed_hosts: allowlists are not implemented; the task runs without network"
    if config.verifier.environment is not None and config.verifier.environment.healthcheck is not None:
        yield "verifier.environment.healthcheck: never run (Harbor accepts it and never runs it either)"


def _walk(model: BaseModel, prefix: str) -> Iterator[tuple[str, Any, type[BaseModel]]]:
    """(dotted key, its pydantic field or None for a key the model does not know, the model's class) for
    every key set in `model`, recursively."""
    if isinstance(model, TaskIdentity):  # free-form package identity
        return
    for key in sorted(model.model_fields_set):
        field = type(model).model_fields.get(key)
        if field is None:
            continue
        dotted = f"{prefix}{key}"
        yield dotted, field, type(model)
        value = getattr(model, key)
        for i, child in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(child, StepConfig):
                yield from _walk(child, f"steps.{child.name}.")
            elif isinstance(child, BaseModel):
                yield from _walk(child, f"{dotted}[{i}]." if isinstance(value, list) else f"{dotted}.")
    for key in sorted(model.model_extra or {}):
        yield f"{prefix}{key}", None, type(model)


def _file_warnings(path: Path, steps: list[TaskStep]) -> Iterator[str]:
    for where in (path, *(s.path for s in steps)):
        if (where / "trajectory.json").is_file():
            yield f"{where.relative_to(path.parent).as_posix()}/trajectory.json: prior agent context is not loaded by evalkit's agents"


def _expand_env(config: TaskConfig, toml_path: Path, name: str, pass_env: Collection[str]) -> None:
    """`${VAR}` / `${VAR:-default}` in env tables, from the host's environment, but only for variables the
    job passes: a task from a registry must not copy your API key into its container."""
    allowed = {key: os.environ[key] for key in pass_env if key in os.environ}
    tables = [("environment", config.environment.env), ("verifier", config.verifier.env), ("solution", config.solution.env)]
    if config.verifier.environment is not None:
        tables.append(("verifier.environment", config.verifier.environment.env))
    for step in config.steps:
        tables.append((f"steps.{step.name}.verifier", step.verifier.env))
        if step.verifier.environment is not None:
            tables.append((f"steps.{step.name}.verifier.environment", step.verifier.environment.env))
    for section_name, table in tables:
        for key, value in table.items():
            for variable in referenced_names(value):
                if variable not in pass_env:
                    raise TaskConfigError(
                        f"task {name!r}: {section_name}.env.{key} refers to ${{{variable}}}, which "
                        "environment.pass_env does not list; a task reads only host variables the job passes"
                    )
            try:
                table[key] = expand_env_vars(value, allowed)
            except KeyError as exc:
                raise TaskConfigError(
                    f"{toml_path}: {section_name}.env.{key}: environment variable {exc.args[0]} is not set"
                ) from None
