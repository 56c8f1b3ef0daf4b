"""Running `evalkit loadtest` as a user does (a subprocess) while this test's event loop serves its endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import REPO


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str
    out: Path

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.out / "loadtest.json").read_text())


MARKER_ENV = "EVALKIT_LOADTEST_TEST_OUT"
"""Set in every `evalkit loadtest` a test starts: the gateway processes it starts inherit it, so a test finds
the ones its run started (and only those) among every process of the machine."""


def cli_env(out: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", MARKER_ENV: str(out), **(env or {})}


async def loadtest_cli(*args: str, out: Path, env: dict[str, str] | None = None, timeout: float = 240) -> CliRun:
    """`evalkit loadtest ARGS --out OUT`, awaited without blocking the loop that serves the endpoints."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evalkit", "loadtest", *args, "--out", str(out),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=cli_env(out, env),
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return CliRun(process.returncode or 0, stdout.decode(), stderr.decode(), out)


def gateway_processes(out: Path) -> list[int]:
    """PIDs of the gateway processes (`evalkit.gateway.process`) of the load test writing to `out`: none may
    outlive it."""
    marker = f"{MARKER_ENV}={out}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"evalkit.gateway.process" in argv and marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids
