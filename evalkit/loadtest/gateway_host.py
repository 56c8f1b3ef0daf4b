"""An evalkit gateway in its own process, driven by `evalkit loadtest` over a pipe.

The load generator and the gateway under test must not share a CPU-bound event loop (each would measure the
other), and the gateway's CPU must be countable on its own. The child runs the public `Gateway.serve` and
speaks one JSON line per command on stdin/stdout:

    → {"llm_api": {...}}            ← {"url": "http://127.0.0.1:PORT"}   (or {"error": ..., "exit_code": N})
    → {"open": "TRIAL"}             ← {"key": "ek-…"}   its calls go to DIR/trials/TRIAL/agent/litellm-trajectory.jsonl
    → {"close": "ek-…"}             ← {"ok": true}
    EOF                               the gateway stops, every trial's file is closed, the process exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from evalkit.analysis.reader import TRAJECTORY
from evalkit.cleanup import uncancellable
from evalkit.errors import ConfigError, EvalkitError, InfrastructureError
from evalkit.gateway import Gateway, LLMApiConfig

START_TIMEOUT_SEC = 180.0
"""Starting a gateway imports LiteLLM: seconds on a loaded machine."""
STOP_GRACE_SEC = 10.0
LOG_NAME = "gateway-host.log"


def trajectory_of(out_dir: Path, trial_id: str) -> Path:
    return out_dir / "trials" / trial_id / TRAJECTORY


# ------------------------------------------------------------------------------------------- the child


async def _serve(out_dir: Path) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1024**2)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.buffer.write(orjson.dumps(data) + b"\n")
        sys.stdout.buffer.flush()

    config = LLMApiConfig.model_validate(orjson.loads(await reader.readline())["llm_api"])
    try:
        async with Gateway.serve(config, job_name="loadtest", artifacts_dir=out_dir) as gateway:
            reply({"url": gateway.url})
            while line := await reader.readline():
                command = orjson.loads(line)
                if "open" in command:
                    access = await gateway.open_trial(command["open"], trajectory_of(out_dir, command["open"]))
                    reply({"key": access.api_key})
                else:
                    await gateway.close_trial(command["close"])
                    reply({"ok": True})
    except EvalkitError as exc:
        reply({"error": str(exc), "exit_code": exc.exit_code})
        return exc.exit_code
    return 0


def main() -> int:
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (EOF, then SIGTERM)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(Path(sys.argv[1])))


# ------------------------------------------------------------------------------------------ the parent


class GatewayProcess:
    """The parent's end: open and close trials, one command at a time."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process, self.log = process, log
        self.pid = process.pid
        self.url = ""
        self._lock = asyncio.Lock()

    async def _ask(self, command: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write(orjson.dumps(command) + b"\n")
            try:
                async with asyncio.timeout(timeout):
                    await self.process.stdin.drain()
                    line = await self.process.stdout.readline()
            except (TimeoutError, ConnectionError):
                line = b""
        if not line:
            raise InfrastructureError(f"the gateway process stopped answering; its log: {self.log}\n{_tail(self.log)}")
        return orjson.loads(line)

    async def open(self, trial_id: str) -> str:
        return (await self._ask({"open": trial_id}))["key"]

    async def close(self, key: str) -> None:
        await self._ask({"close": key})


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@asynccontextmanager
async def gateway_process(config: LLMApiConfig, out_dir: Path) -> AsyncIterator[GatewayProcess]:
    """Start the child, hand it the config, wait for its URL; on exit (cancellation included) stop it by PID."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    log = out_dir / LOG_NAME
    with open(log, "ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evalkit.loadtest.gateway_host", str(out_dir),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    handle = GatewayProcess(process, log)
    try:
        answer = await handle._ask({"llm_api": config.model_dump(mode="json")}, timeout=START_TIMEOUT_SEC)
        if "error" in answer:
            error = ConfigError if answer.get("exit_code") == ConfigError.exit_code else InfrastructureError
            raise error(answer["error"])
        handle.url = answer["url"]
        yield handle
    finally:
        await uncancellable(_stop(process))


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None and not process.stdin.is_closing():
        process.stdin.close()  # EOF: the gateway stops and closes every trial's file
    try:
        await asyncio.wait_for(process.wait(), STOP_GRACE_SEC)
        return
    except TimeoutError:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)  # its own session: the group is the gateway and any workers it forked
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_SEC)
            return
        except TimeoutError:
            continue


if __name__ == "__main__":
    sys.exit(main())
