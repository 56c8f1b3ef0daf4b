"""`environment/docker-compose.yaml` → a `ComposeProject`: the services of one task, to run as a pod.

Harbor hands the task's compose file (merged over its own base, which builds `main` from
`environment/Dockerfile` and gives it the command `sh -c "sleep infinity"`) to `docker compose`. evalkit has no
compose CLI and no bridge network: a backend runs the services in one shared network namespace, service
names resolving to 127.0.0.1, started in `depends_on` order (README "Harbor task format" says how that
differs from Compose's own network). This module only reads and checks the file; it imports no engine
client. Keys that would change how a task behaves and are not implemented are refused
(`TaskUnsupportedError`); keys that cannot matter in a pod are named in warnings.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evalkit.errors import TaskConfigError, TaskUnsupportedError

MAIN = "main"
"""The service the agent works in (Harbor's `constants.MAIN_SERVICE_NAME`)."""
KEEP_ALIVE = ("sh", "-c", "exec sleep infinity")
"""Harbor's command for `main` (`sh -c "sleep infinity"`): the image's ENTRYPOINT stays and runs this. The
`exec` makes the shell become the sleep (same pid, same start time): a shell that forks its sleep leaves a
moment where the process baseline sees the shell but not yet the sleep, and the kill before the verifier then
takes the keep-alive, and the container, with it."""
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")

_SUPPORTED = {"build", "image", "command", "entrypoint", "environment", "volumes", "depends_on", "healthcheck",
              "working_dir", "user"}
_IGNORED = {
    "ports": "nothing is published; services reach each other on 127.0.0.1",
    "expose": "every port is reachable inside the pod",
    "networks": "services share one network namespace",
    "hostname": "service names resolve to 127.0.0.1",
    "container_name": "evalkit names containers per try",
    "restart": "services are not restarted",
    "labels": "evalkit labels its containers itself",
    "deploy": "every container gets the task's resource limits",
    "cpus": "every container gets the task's resource limits",
    "mem_limit": "every container gets the task's resource limits",
    "pids_limit": "every container gets the job's pids limit",
    "init": "every container runs with an init process",
    "tty": "no terminal is attached",
    "stdin_open": "no terminal is attached",
    "logging": "container logs are not collected",
    "pull_policy": "images are built or used as present",
    "stop_grace_period": "containers are removed with force",
    "stop_signal": "containers are removed with force",
    "platform": "the engine's platform is used",
    "extra_hosts": "service names resolve to 127.0.0.1",
    "dns": "containers have no bridge network",
    "shm_size": "the engine's default applies",
    "ulimits": "the engine's defaults apply",
}
_TOP_LEVEL = {"services", "volumes", "version", "name", "networks"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Healthcheck:
    """A compose `healthcheck:` as the engine's HEALTHCHECK (Docker runs and counts it)."""

    test: tuple[str, ...]
    """`CMD …` or `CMD-SHELL …` (Docker's format)."""
    interval_sec: float = 30.0
    timeout_sec: float = 30.0
    retries: int = 3
    start_period_sec: float = 0.0


@dataclass(frozen=True)
class VolumeMount:
    source: str | None
    """A named volume of the project, or None for an anonymous one."""
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Service:
    name: str
    build_context: Path | None = None
    """Build from this directory (its `Dockerfile`); None with `image`, or for `main` (built as the task)."""
    image: str | None = None
    command: tuple[str, ...] | None = None
    """None: the image's CMD (for `main`: Harbor's keep-alive)."""
    entrypoint: tuple[str, ...] | None = None
    """None: the image's ENTRYPOINT."""
    environment: dict[str, str] = field(default_factory=dict)
    volumes: tuple[VolumeMount, ...] = ()
    depends_on: dict[str, str] = field(default_factory=dict)
    """Service → condition (`service_started`, `service_healthy`, `service_completed_successfully`)."""
    healthcheck: Healthcheck | None = None
    working_dir: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class ComposeProject:
    services: dict[str, Service]
    """Every service, `main` included, in start order (dependencies first)."""
    volumes: tuple[str, ...] = ()
    """Named volumes, created per try."""
    warnings: tuple[str, ...] = ()

    @property
    def sidecars(self) -> list[Service]:
        return [s for s in self.services.values() if s.name != MAIN]


def load_compose(path: Path, *, where: str, pass_env: Collection[str] = (), main_has_dockerfile: bool = True) -> ComposeProject:
    """Read and check a task's compose file. Raises TaskConfigError (malformed, dependency cycles, unknown
    services, variables the job does not pass) or TaskUnsupportedError (what would run differently)."""
    label = f"{where}: {path.name}"
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TaskConfigError(f"{label}: malformed YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), dict):
        raise TaskConfigError(f"{label}: needs a `services:` mapping")
    raw = _interpolate(raw, label, pass_env)
    warnings: list[str] = []
    for key in raw:
        if key.startswith("x-") or key in ("version", "name"):
            continue
        if key == "networks":
            warnings.append(f"{path.name}: networks: not implemented by evalkit; ignored (services share one network namespace)")
        elif key not in _TOP_LEVEL:
            raise TaskUnsupportedError(f"{label}: top-level `{key}` is not supported")
    volumes = _volumes(raw.get("volumes") or {}, label)
    services = {}
    for name, spec in raw["services"].items():
        services[name] = _service(str(name), spec or {}, path.parent, volumes, label, warnings, path.name)
    if MAIN not in services:
        services[MAIN] = Service(name=MAIN)
    if not main_has_dockerfile:
        raise TaskConfigError(f"{where}: missing environment/Dockerfile for the `main` service (or set [environment] docker_image)")
    for service in services.values():
        for dependency in service.depends_on:
            if dependency not in services:
                raise TaskConfigError(f"{label}: services.{service.name}.depends_on names {dependency!r}, which is not a service")
            if service.depends_on[dependency] == "service_healthy" and services[dependency].healthcheck is None:
                raise TaskConfigError(
                    f"{label}: services.{service.name} waits for {dependency!r} to be healthy, but {dependency!r} has no healthcheck"
                )
    ordered = _start_order(services, label)
    return ComposeProject(services={n: services[n] for n in ordered}, volumes=tuple(volumes), warnings=tuple(warnings))


def _service(name: str, spec: Any, project_dir: Path, volumes: list[str], label: str, warnings: list[str], file: str) -> Service:
    key = f"services.{name}"
    if not isinstance(spec, dict):
        raise TaskConfigError(f"{label}: {key} must be a mapping")
    for option in spec:
        if option in _SUPPORTED:
            continue
        if option in _IGNORED:
            warnings.append(f"{file}: {key}.{option}: not implemented by evalkit; ignored ({_IGNORED[option]})")
        elif str(option).startswith("x-"):
            continue
        else:
            raise TaskUnsupportedError(f"{label}: {key}.{option} is not supported")
    build_context = image = None
    if "build" in spec:
        if name == MAIN:
            raise TaskUnsupportedError(f"{label}: {key}.build: `main` is always built from environment/Dockerfile")
        build = spec["build"] if isinstance(spec["build"], dict) else {"context": spec["build"]}
        for option in build:
            if option != "context" and not (option == "dockerfile" and build[option] == "Dockerfile"):
                raise TaskUnsupportedError(f"{label}: {key}.build.{option} is not supported (only `context` with its Dockerfile)")
        build_context = (project_dir / str(build.get("context", "."))).resolve()
        if not build_context.is_relative_to(project_dir.resolve()) or not (build_context / "Dockerfile").is_file():
            raise TaskConfigError(f"{label}: {key}.build.context must be a directory with a Dockerfile inside environment/")
    if "image" in spec:
        if name == MAIN:
            raise TaskUnsupportedError(f"{label}: {key}.image: set [environment] docker_image in task.toml instead")
        if build_context is not None:
            raise TaskUnsupportedError(f"{label}: {key}: naming the image a build produces (`build` with `image`) is not supported")
        image = str(spec["image"])
    if name != MAIN and build_context is None and image is None:
        raise TaskConfigError(f"{label}: {key} needs `build` or `image`")
    return Service(
        name=name,
        build_context=build_context,
        image=image,
        command=_words(spec.get("command"), f"{label}: {key}.command"),
        entrypoint=_words(spec.get("entrypoint"), f"{label}: {key}.entrypoint"),
        environment=_environment(spec.get("environment"), f"{label}: {key}.environment"),
        volumes=tuple(_mount(v, volumes, f"{label}: {key}.volumes") for v in spec.get("volumes") or ()),
        depends_on=_depends_on(spec.get("depends_on"), f"{label}: {key}.depends_on"),
        healthcheck=_healthcheck(spec.get("healthcheck"), f"{label}: {key}.healthcheck"),
        working_dir=spec.get("working_dir"),
        user=None if spec.get("user") is None else str(spec["user"]),
    )


def _volumes(raw: Any, label: str) -> list[str]:
    if not isinstance(raw, dict):
        raise TaskConfigError(f"{label}: volumes must be a mapping")
    for name, options in raw.items():
        if options:
            raise TaskUnsupportedError(f"{label}: volumes.{name}: volume options ({', '.join(options)}) are not supported")
    return [str(n) for n in raw]


def _words(value: Any, label: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    raise TaskConfigError(f"{label} must be a string or a list")


def _environment(value: Any, label: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else _scalar(v) for k, v in value.items()}
    if isinstance(value, list):
        out = {}
        for item in value:
            name, sep, text = str(item).partition("=")
            if sep:  # `NAME` alone passes the host's value: never here
                out[name] = text
        return out
    raise TaskConfigError(f"{label} must be a mapping or a list")


def _scalar(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _mount(value: Any, volumes: list[str], label: str) -> VolumeMount:
    if isinstance(value, dict):
        if value.get("type", "volume") != "volume":
            raise TaskUnsupportedError(f"{label}: {value.get('type')} mounts are not supported (only named volumes)")
        source, target, read_only = value.get("source"), value.get("target"), bool(value.get("read_only"))
    else:
        parts = str(value).split(":")
        if len(parts) == 1:
            source, target, read_only = None, parts[0], False
        else:
            source, target, read_only = parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")
    if not isinstance(target, str) or not target.startswith("/"):
        raise TaskConfigError(f"{label}: {value!r} needs an absolute target path")
    if source is not None and source not in volumes:
        raise TaskUnsupportedError(
            f"{label}: {value!r}: host bind mounts are not supported (a container never writes to the host); use a named volume"
        )
    return VolumeMount(source=source, target=target, read_only=read_only)


def _depends_on(value: Any, label: str) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, list):
        return {str(name): "service_started" for name in value}
    if isinstance(value, dict):
        out = {}
        for name, options in value.items():
            condition = (options or {}).get("condition", "service_started")
            if condition not in CONDITIONS:
                raise TaskConfigError(f"{label}.{name}.condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")
            out[str(name)] = condition
        return out
    raise TaskConfigError(f"{label} must be a list or a mapping")


def _healthcheck(value: Any, label: str) -> Healthcheck | None:
    if value is None or (isinstance(value, dict) and value.get("disable")):
        return None
    if not isinstance(value, dict) or "test" not in value:
        raise TaskConfigError(f"{label} needs `test`")
    test = value["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if not isinstance(test, list) or not test or test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise TaskConfigError(f"{label}.test must be a string or a list starting with CMD or CMD-SHELL")
    if test[0] == "NONE":
        return None
    for option in value:
        if option not in ("test", "interval", "timeout", "retries", "start_period", "disable"):
            raise TaskUnsupportedError(f"{label}.{option} is not supported")
    return Healthcheck(
        test=tuple(str(t) for t in test),
        interval_sec=_duration(value.get("interval", "30s"), f"{label}.interval"),
        timeout_sec=_duration(value.get("timeout", "30s"), f"{label}.timeout"),
        retries=int(value.get("retries", 3)),
        start_period_sec=_duration(value.get("start_period", "0s"), f"{label}.start_period"),
    )


def _duration(value: Any, label: str) -> float:
    """Compose durations: `1m30s`, `500ms`, `2s` (or a bare number of seconds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if not text or _DURATION.sub("", text):
        raise TaskConfigError(f"{label} must be a duration like '5s' or '1m30s', got {value!r}")
    return sum(float(n) * _SECONDS[unit] for n, unit in _DURATION.findall(text))


def _start_order(services: dict[str, Service], label: str) -> list[str]:
    """Dependencies first, otherwise in file order; a cycle is a config error."""
    ordered: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise TaskConfigError(f"{label}: depends_on forms a cycle: {' -> '.join(visiting[visiting.index(name):] + [name])}")
        visiting.append(name)
        for dependency in services[name].depends_on:
            visit(dependency)
        visiting.pop()
        ordered.append(name)

    for name in services:
        visit(name)
    return ordered


def _interpolate(value: Any, label: str, pass_env: Collection[str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `$VAR` and `$$`, from the host's environment but only for
    variables the job passes (as in task.toml env tables)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, label, pass_env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, label, pass_env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, default = match.group(2), match.group(3)
        current = os.environ.get(name) if name in pass_env else None
        if current is not None and not (operator == ":-" and current == ""):
            return current
        if operator is not None:
            return default or ""
        if name not in pass_env:
            raise TaskConfigError(
                f"{label} refers to ${{{name}}}, which environment.pass_env does not list; a task reads only host variables the job passes"
            )
        raise TaskConfigError(f"{label}: environment variable {name} is not set")

    return _VARIABLE.sub(replace, value)
