"""An evalkit gateway in its own process, driven by `evalkit loadtest` over a pipe.

The load generator and the gateway under test must not share a CPU-bound event loop (each would measure the
other), and the gateway's CPU must be countable on its own. The child runs the public `Gateway.serve` and
speaks one JSON line per command on stdin/stdout, each answer carrying its command's `id` (commands are
handled concurrently: a thousand trials opening at once must not queue behind one another's round trips):

    → {"id": 0, "llm_api": {...}}     ← {"id": 0, "url": "http://127.0.0.1:PORT"}   (or "error" and "exit_code")
    → {"id": N, "open": "TRIAL"}      ← {"id": N, "key": "ek-…"}  calls go to DIR/trials/TRIAL/agent/litellm-trajectory.jsonl
    → {"id": N, "close": "ek-…"}      ← {"id": N, "ok": true}
    EOF                                 the gateway stops, every trial's file is closed, the process exits.
"""

from __future__ import annotations

import asyncio
import itertools
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

    first = orjson.loads(await reader.readline())
    config = LLMApiConfig.model_validate(first["llm_api"])
    try:
        async with Gateway.serve(config, job_name="loadtest", artifacts_dir=out_dir) as gateway:
            reply({"id": first["id"], "url": gateway.url})
            async with asyncio.TaskGroup() as group:
                while line := await reader.readline():
                    group.create_task(_command(gateway, out_dir, orjson.loads(line), reply))
    except EvalkitError as exc:
        reply({"id": first["id"], "error": str(exc), "exit_code": exc.exit_code})
        return exc.exit_code
    return 0


async def _command(gateway: Gateway, out_dir: Path, command: dict[str, Any], reply: Any) -> None:
    try:
        if "open" in command:
            access = await gateway.open_trial(command["open"], trajectory_of(out_dir, command["open"]))
            reply({"id": command["id"], "key": access.api_key})
        else:
            await gateway.close_trial(command["close"])
            reply({"id": command["id"], "ok": True})
    except (EvalkitError, OSError, ValueError, KeyError) as exc:
        reply({"id": command["id"], "error": f"{type(exc).__name__}: {exc}"})


def main() -> int:
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it (EOF, then SIGTERM)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(Path(sys.argv[1])))


# ------------------------------------------------------------------------------------------ the parent


class GatewayProcess:
    """The parent's end: commands written as they come, answers matched to them by id."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process, self.log = process, log
        self.pid = process.pid
        self.url = ""
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}

    def _lost(self) -> InfrastructureError:
        return InfrastructureError(f"the gateway process stopped answering; its log: {self.log}\n{_tail(self.log)}")

    async def read_answers(self) -> None:
        """Hand each answer to its command; when the process's output ends, every command still waiting fails."""
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            answer = orjson.loads(line)
            future = self._waiting.get(answer.get("id"))
            if future is not None and not future.done():
                future.set_result(answer)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(self._lost())

    async def ask(self, command: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        assert self.process.stdin is not None
        ident = next(self._ids)
        future = self._waiting[ident] = asyncio.get_running_loop().create_future()
        try:
            self.process.stdin.write(orjson.dumps({**command, "id": ident}) + b"\n")
            async with asyncio.timeout(timeout):
                await self.process.stdin.drain()
                answer = await future
        except (TimeoutError, ConnectionError):
            raise self._lost() from None
        finally:
            del self._waiting[ident]
        if "error" in answer and "exit_code" not in answer:
            raise InfrastructureError(f"the gateway refused {command}: {answer['error']}")
        return answer

    async def open(self, trial_id: str) -> str:
        return (await self.ask({"open": trial_id}))["key"]

    async def close(self, key: str) -> None:
        await self.ask({"close": key})


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
    answers = asyncio.create_task(handle.read_answers())  # awaited below, whatever happens
    try:
        answer = await handle.ask({"llm_api": config.model_dump(mode="json")}, timeout=START_TIMEOUT_SEC)
        if "error" in answer:
            error = ConfigError if answer.get("exit_code") == ConfigError.exit_code else InfrastructureError
            raise error(answer["error"])
        handle.url = answer["url"]
        yield handle
    finally:
        await uncancellable(_stop(process))
        answers.cancel()  # a worker the gateway forked could hold the pipe open after the process ended
        await asyncio.gather(answers, return_exceptions=True)


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
