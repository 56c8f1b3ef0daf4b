"""The `Environment` protocol: the only thing trials and agents know about where a task runs.

Docker is one implementation; a cloud sandbox or a Kubernetes pod would be another module with these
same few methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    """None when the command was killed on timeout."""
    output: str
    """stdout and stderr, interleaved, capped (redirect large logs to a file under /logs instead)."""
    timed_out: bool = False


class Environment(Protocol):
    async def start(self) -> None:
        """Make the environment ready to run commands (build or fetch its image, start it)."""

    async def exec(
        self,
        command: str,
        *,
        timeout_sec: float | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
    ) -> ExecResult:
        """Run `bash -c command`; on timeout kill its whole process group and return `timed_out=True`."""

    async def put(self, source: Path, target: str) -> None:
        """Copy a host directory's contents into `target` (created if missing)."""

    async def stop(self) -> None:
        """Remove the environment; idempotent and safe to call on every path, cancelled or not."""
