"""Minimal containers with a runtime tree mounted read-only: `debian:bookworm-slim`, network `none`,
nothing installed; what a trial's container looks like to an in-container agent."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiodocker

from evalkit.runtimes import RUNTIME_MOUNT

SCRATCH = "/tmp"
"""A tmpfs in every test container: HOME and XDG dirs go there (OpenCode writes state even for --version),
so the filesystem diff shows only what was written elsewhere."""
SCRATCH_ENV = [f"HOME={SCRATCH}/home", f"XDG_CONFIG_HOME={SCRATCH}/config", f"XDG_DATA_HOME={SCRATCH}/data",
               f"XDG_STATE_HOME={SCRATCH}/state", f"XDG_CACHE_HOME={SCRATCH}/cache"]
MOUNT_POINTS = {"/opt", "/opt/evalkit", RUNTIME_MOUNT, "/usr", "/usr/sbin", "/usr/sbin/docker-init"}
"""What Docker itself adds to the container's filesystem: the tree's mount point and the init it mounts."""


@contextlib.asynccontextmanager
async def minimal_container(
    client: aiodocker.Docker, tree: Path, cmd: list[str], *, binds: Sequence[str] = (), env: Sequence[str] = ()
) -> AsyncIterator[aiodocker.containers.DockerContainer]:
    """A started container running `cmd`; removed on exit."""
    container = await client.containers.create(
        {
            "Image": "debian:bookworm-slim",
            "Cmd": cmd,
            "Env": [*SCRATCH_ENV, *env],
            "Labels": {"evalkit.test": "runtimes"},
            "HostConfig": {
                "Init": True,
                "NetworkMode": "none",
                "Binds": [f"{tree}:{RUNTIME_MOUNT}:ro", *binds],
                "Tmpfs": {SCRATCH: "rw,exec"},
            },
        },
        name=f"runtimes-test-{uuid.uuid4().hex[:12]}",
    )
    try:
        await container.start()
        yield container
    finally:
        await container.delete(force=True)


async def run_to_end(container: aiodocker.containers.DockerContainer, timeout: float = 120) -> tuple[int, str, str]:
    """Wait for the container's command; its exit code, stdout and stderr."""
    status = await asyncio.wait_for(container.wait(), timeout)
    stdout = "".join(await container.log(stdout=True))
    stderr = "".join(await container.log(stderr=True))
    return status["StatusCode"], stdout, stderr


async def changed_paths(container: aiodocker.containers.DockerContainer) -> set[str]:
    """`GET /containers/{id}/changes`: every path added, changed or deleted in the container's own layer."""
    changes = await container.docker._query_json(f"containers/{container.id}/changes")
    return {change["Path"] for change in changes or []}
