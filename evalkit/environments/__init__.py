"""Where tasks run. The protocols live in `base`; backends are imported only when a job connects to
one, so agents and tools that import `Environment` never load a container client."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from evalkit.environments.base import (
    BackendHealth,
    Environment,
    EnvironmentBackend,
    DownloadTarget,
    EnvironmentSpec,
    ExecResult,
    FileMissingError,
    FileReadError,
    FileReader,
    FileTooLargeError,
    JobIdentity,
    Mount,
    NotARegularFileError,
    Resources,
)

if TYPE_CHECKING:
    from evalkit.config import EnvironmentConfig


BACKENDS = {
    "docker": "evalkit.environments.docker:DockerBackend",
    "ray": "evalkit.environments.ray_cluster:RayBackend",
}
"""`environment.backend` → the class that implements it (a classmethod `connect(config, job)`)."""


async def connect_backend(config: EnvironmentConfig, job: JobIdentity) -> EnvironmentBackend:
    """The backend `environment.backend` names, connected and checked; InfrastructureError if its engine
    does not answer."""
    module, _, name = BACKENDS[config.backend].partition(":")
    backend: EnvironmentBackend = await getattr(import_module(module), name).connect(config, job)
    return backend


__all__ = [
    "BackendHealth",
    "BACKENDS",
    "Environment",
    "EnvironmentBackend",
    "DownloadTarget",
    "EnvironmentSpec",
    "ExecResult",
    "FileMissingError",
    "FileReadError",
    "FileReader",
    "FileTooLargeError",
    "JobIdentity",
    "Mount",
    "NotARegularFileError",
    "Resources",
    "connect_backend",
]
