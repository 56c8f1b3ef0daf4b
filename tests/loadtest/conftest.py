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


async def loadtest_cli(*args: str, out: Path, env: dict[str, str] | None = None, timeout: float = 240) -> CliRun:
    """`evalkit loadtest ARGS --out OUT`, awaited without blocking the loop that serves the endpoints."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evalkit", "loadtest", *args, "--out", str(out),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return CliRun(process.returncode or 0, stdout.decode(), stderr.decode(), out)


def gateway_hosts(marker: Path) -> list[int]:
    """PIDs of gateway host processes serving under `marker` (none may outlive a load test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"evalkit.loadtest.gateway_host" in argv and any(str(marker).encode() in a for a in argv):
            pids.append(int(entry.name))
    return pids
