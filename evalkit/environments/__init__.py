from evalkit.environments.base import Environment, ExecResult
from evalkit.environments.docker import DockerEngine, DockerEnvironment

__all__ = ["DockerEngine", "DockerEnvironment", "Environment", "ExecResult"]
