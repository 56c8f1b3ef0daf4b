"""Per-trial Unix-socket routes: the way into the gateway from a container on network `none`.

Each open trial gets a socket of its own, `<base>/<gateway>/<trial>/gateway.sock`, served by the gateway
process that owns the trial. `<gateway>` is `<pid>-<random>`, the pid of the process that runs the gateway
(the job's): a directory whose pid is gone (a job killed with SIGKILL) is removed when the next gateway starts. The engine bind-mounts the trial's directory (not the socket file, which a restart
would replace) read-only at `CONTAINER_DIR`; the container can connect but neither delete nor replace it.
A request arriving on a trial's socket is that trial's: anything but that trial's key gets a 401, so one
trial cannot speak as another even with a key it learned. Closing the trial stops the listener, closes its
connections and removes the socket; the empty directory goes with `Gateway.release_route` (once the container
that mounts it is gone) or when the gateway stops.

Where and with which permissions, and why:
- `<base>` is `$XDG_RUNTIME_DIR/evalkit` when that is set and yields a short path, else `/tmp/evalkit-<uid>`:
  AF_UNIX paths are limited to 107 bytes, so not under a deep job directory. `<base>` and `<base>/<gateway>`
  are 0700 and must be owned by the user evalkit runs as (a directory someone else made in /tmp is refused):
  no other host user can reach a socket. Docker's bind mount needs no access along that path.
- `<trial>` is 0755 and the socket 0666, so that a container running as any user (tasks often use a
  non-root one) can search the mounted directory and connect; inside the container, the key still decides.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath

from aiohttp import web

from evalkit.errors import InfrastructureError

CONTAINER_DIR = PurePosixPath("/run/evalkit/model")
"""Where the engine mounts a trial's route directory inside its container."""

SOCKET_NAME = "gateway.sock"

MAX_SOCKET_PATH = 107
"""`sizeof(sun_path) - 1` on Linux."""

LISTEN_BACKLOG = 128
CLOSE_GRACE_SEC = 0.5
"""How long a closing route waits for its connections' handlers (already cancelled) to finish."""

_TRIAL_TAIL = len("/0123456789ab/" + SOCKET_NAME)
"""What follows a gateway's route directory in a socket path."""

_GATEWAY_DIR = re.compile(r"^(\d+)-[0-9a-f]{8}$")


def base_dir() -> Path:
    """`$XDG_RUNTIME_DIR/evalkit` if that is short enough for socket paths, else `/tmp/evalkit-<uid>`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    short = len(runtime) + len("/evalkit/4194304-01234567") + _TRIAL_TAIL <= MAX_SOCKET_PATH
    if runtime.startswith("/") and short and os.path.isdir(runtime):
        return Path(runtime) / "evalkit"
    return Path(f"/tmp/evalkit-{os.getuid()}")


def _private_dir(path: Path) -> None:
    """Create `path` 0700, or accept it if it is already a real directory of ours; refuse anything else."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise InfrastructureError(f"cannot create {path} for the model routes: {exc.strerror}") from None
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise InfrastructureError(
            f"refusing {path} for the model routes: it is not a directory owned by uid {os.getuid()}"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700, follow_symlinks=False)


class RouteDirs:
    """One gateway's directory of trial routes: `<base>/<random>/`, removed when the gateway stops."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, base: Path | None = None) -> RouteDirs:
        """Blocking: call it in a thread."""
        base = base or base_dir()
        _private_dir(base)
        root = base / f"{os.getpid()}-{secrets.token_hex(4)}"
        os.mkdir(root, 0o700)
        if len(str(root)) + _TRIAL_TAIL > MAX_SOCKET_PATH:
            os.rmdir(root)
            raise InfrastructureError(
                f"socket paths under {root} would exceed {MAX_SOCKET_PATH} bytes: set XDG_RUNTIME_DIR to a short path"
            )
        return cls(root)

    def bind(self) -> tuple[Path, socket.socket]:
        """A fresh trial directory (0755) with a listening-ready socket (0666) in it. Blocking."""
        directory = self.root / secrets.token_hex(6)
        os.mkdir(directory)
        os.chmod(directory, 0o755)  # not through mkdir's mode, which the process umask narrows
        path = directory / SOCKET_NAME
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o666)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return path, sock

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def sweep_stale(base: Path | None = None) -> list[Path]:
    """Remove the route directories of gateways whose process is gone (blocking). Only `<pid>-<random>`
    directories owned by this user whose pid no longer runs are touched; returns what was removed."""
    base = base or base_dir()
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        match = _GATEWAY_DIR.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        if entry.stat(follow_symlinks=False).st_uid != os.getuid() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process has that pid now: leave the directory alone
    return True


class TrialRoute:
    """One trial's listening socket and the HTTP server on it."""

    def __init__(self, socket_path: Path, server: asyncio.Server, http: web.Server) -> None:
        self.socket_path = socket_path
        self._server, self._http = server, http

    @classmethod
    async def open(
        cls, dirs: RouteDirs, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
    ) -> TrialRoute:
        path, sock = await asyncio.to_thread(dirs.bind)
        http = web.Server(handler, handler_cancellation=True, access_log=None)
        try:
            server = await asyncio.get_running_loop().create_unix_server(http, sock=sock, backlog=LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            await asyncio.to_thread(shutil.rmtree, path.parent, True)
            raise
        return cls(path, server, http)

    def stop_listening(self) -> None:
        """No new connections from now on (the ones open are closed by `close`)."""
        self._server.close()

    async def close(self) -> None:
        """Stop serving and remove the socket. The (now empty) directory stays until `release`: a container
        may still have it mounted, and Docker resolves bind sources again on every archive request, so a
        missing one fails the copies that follow (the verifier's upload)."""
        self._server.close()
        await self._http.shutdown(CLOSE_GRACE_SEC)
        await asyncio.to_thread(_unlink, self.socket_path)


def release(socket_path: Path) -> None:
    """Remove a closed route's directory, once no container mounts it any more. Blocking."""
    shutil.rmtree(socket_path.parent, ignore_errors=True)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
