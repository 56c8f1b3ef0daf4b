"""The seam between the engine and where tasks run: `Environment` (one try's sandbox) and
`EnvironmentBackend` (where environments come from). The job, the trial, the verifier and the agents
know only these; Docker is one backend, a remote sandbox would be another module with these methods.

Everything a try produces comes back through the Environment (`read_file`, `download`): nothing the
container can write is shared with the host, so the host never reads or writes through a path a
container made.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from evalkit.results import DownloadReport, ImageSummary, ResourceEnvelope

if TYPE_CHECKING:
    from evalkit.tasks import Task

NetworkMode = Literal["bridge", "host", "none"]
LOG_DIRS = ("/logs/agent", "/logs/verifier", "/logs/artifacts")
"""Created inside every container at start, writable by any user (the task's user may not be root)."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    """None when the command was killed on timeout."""
    output: str
    """stdout and stderr, interleaved, capped (redirect large logs to a file under /logs instead)."""
    timed_out: bool = False


@dataclass(frozen=True)
class Mount:
    """A host path the engine chose to show the container (an agent runtime, a CA bundle). Never one the
    container can write: read-write mounts are not offered."""

    source: Path
    target: str
    read_only: bool = True

    def __post_init__(self) -> None:
        if not self.read_only:
            raise ValueError(f"mount {self.target}: read-write mounts are not offered; download results instead")


@dataclass(frozen=True)
class Resources:
    cpus: float
    memory_mb: int
    storage_mb: int
    pids_limit: int


@dataclass(frozen=True)
class EnvironmentSpec:
    """How one try's environment is made: everything but the task itself."""

    name: str
    """The try's name (`<task>__<attempt>[-try<k>]`), unique within the job."""
    network_mode: NetworkMode
    resources: Resources
    mounts: tuple[Mount, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    """Set in the container on top of the task's `[environment.env]`."""
    labels: dict[str, str] = field(default_factory=dict)
    build_timeout_sec: float | None = None
    start_timeout_sec: float | None = None
    build_log: Path | None = None
    """Where the image build's log goes, if this try builds the image."""
    keep: bool = False
    """Leave the container after the try (debugging); it keeps its labels, so `evalkit clean` finds it."""
    role: str = "agent"
    """`agent`, or `verifier` for a separate verifier's environment of the same try (named and labelled apart)."""


@dataclass(frozen=True)
class DownloadTarget:
    """Where one container directory goes on the host, and how much of it may come."""

    target_dir: Path
    max_bytes: int
    """File data taken at most; what does not fit is listed and left behind."""
    max_files: int
    """Entries (files and directories) taken at most."""
    reserved: frozenset[str] = frozenset()
    """Top-level names that belong to the host (a trajectory, a verdict): never copied."""


class FileReadError(Exception):
    """`read_file` could not return the file's bytes; the message names the path and says why."""


class FileMissingError(FileReadError):
    pass


class NotARegularFileError(FileReadError):
    def __init__(self, path: str, file_type: str) -> None:
        super().__init__(f"{path} is a {file_type}, not a regular file")
        self.file_type = file_type
        """`symbolic link`, `FIFO`, `directory`, `character device`, …"""


class FileTooLargeError(FileReadError):
    def __init__(self, path: str, size: int, max_bytes: int) -> None:
        super().__init__(f"{path} is larger than {max_bytes} bytes ({size})")
        self.size = size


class FileReader(Protocol):
    async def read_file(self, path: str, *, max_bytes: int) -> bytes:
        """One regular file's bytes. Raises `FileMissingError`, `NotARegularFileError` or `FileTooLargeError`."""


class Environment(Protocol):
    @property
    def network_mode(self) -> NetworkMode:
        """The container's network: an in-container agent reaches its model through the route on `none` and
        `bridge`, and through the gateway's loopback port on `host`."""

    async def start(self) -> ResourceEnvelope:
        """Build or fetch the image, start the container, create the `/logs` directories, and remember
        which processes run before any agent code does. Returns what the container actually runs with."""

    async def mark_baseline(self) -> None:
        """Remember the processes running now as the environment's own (services an ENTRYPOINT, a
        healthcheck's wait or a step's `setup.sh` started): `kill_agent_processes` spares them. Called only
        before an agent runs."""

    async def exec(
        self,
        command: str,
        *,
        timeout_sec: float | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
    ) -> ExecResult:
        """Run `bash -c command`. On timeout, every process started since `start` is killed (as with
        `kill_agent_processes`) and `timed_out=True` is returned."""

    async def put(self, source: Path, target: str, *, executable: Collection[str] = ()) -> None:
        """Copy a host directory's contents into `target` (created if missing); the regular files named in
        `executable` (relative to `source`: a script run by its shebang) arrive with mode 0755, so no
        `chmod` round trip is needed."""

    async def read_file(self, path: str, *, max_bytes: int) -> bytes:
        """One regular file's bytes. Raises `FileMissingError`, `NotARegularFileError` (a symlink is never
        followed; a FIFO or device is never opened) or `FileTooLargeError`."""

    async def download(
        self, source_dir: str, target_dir: Path, *, max_bytes: int, max_files: int, reserved: Collection[str] = ()
    ) -> DownloadReport:
        """Copy a container directory into a host directory: regular files and directories only, paths
        kept inside `target_dir`, files already there never overwritten, at most `max_bytes` of file data
        and `max_files` entries (files and directories). Top-level names in `reserved` belong to the host
        (a trajectory, a verdict) and are never copied, present or not. Works on a stopped container too."""

    async def download_many(self, source_dir: str, routes: Mapping[str, DownloadTarget]) -> dict[str, DownloadReport]:
        """`download` of several subdirectories of `source_dir` (by name) at once, each to its own target
        with its own caps: one transfer where the backend can (`/logs` after the verifier)."""

    async def kill_agent_processes(self, *, then_empty: Collection[str] = ()) -> int:
        """Kill every process that was not running right after `start` (daemons that called `setsid`
        included), until none is left; then, as root and with nothing left to race, replace each directory in
        `then_empty` by an empty one anyone may write. Returns how many processes were killed."""

    async def stop(self) -> None:
        """Remove the environment; idempotent and safe to call on every path, cancelled or not."""


@dataclass
class BackendHealth:
    """How the engine behind a backend is doing, measured on the calls it actually serves."""

    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    """Seconds until each recent call was answered (the most recent last)."""
    calls: int = 0
    failures: int = 0
    """Calls that failed for the engine's sake (a 5xx, a lost connection), since the job started."""

    def record(self, seconds: float) -> None:
        self.calls += 1
        self.latencies.append(seconds)


class EnvironmentBackend(Protocol):
    outages: int
    """How many times the engine went away (stopped, restarted) since the backend connected."""
    health: BackendHealth
    image_summary: ImageSummary
    up: bool
    """False while the engine is away (between noticing it went and seeing it answer again)."""

    async def prepare(self, task: Task, *, timeout_sec: float | None, log_path: Path | None) -> None:
        """Make `task`'s image ready ahead of its trial (build or pull), and keep it until `release(task)`
        (once per `prepare`). May wait for room under the image budget. Raises the task's typed error."""

    async def release(self, task: Task) -> None:
        """One trial that `prepare` was called for is done: its image may be evicted once none needs it."""

    async def available(self) -> None:
        """Return once the engine answers (at once unless it went away); InfrastructureError if it stays
        away too long."""

    async def answers(self) -> bool:
        """Whether the engine answers right now; False starts an outage (new tries wait for `available`)."""
    internet_network: NetworkMode | None
    """The network a task that needs the internet gets unless the config names one (the engine's bridge);
    None when the backend has none to offer."""

    def environment(self, task: Task, spec: EnvironmentSpec) -> Environment:
        """A new, not yet started environment for one try. Raises `ConfigError` for a spec the backend
        cannot honour (mounts on a remote engine)."""

    async def sweep(self, *, stopped_only: bool = False) -> int:
        """Remove what earlier runs of this job left behind (a killed process cannot clean up);
        `stopped_only` spares environments still running or being made."""

    async def close(self) -> None:
        """Wait for removals under way, then release the connection."""


@dataclass(frozen=True)
class JobIdentity:
    """What a backend needs to know about the job it serves: labels, and where its lock lives."""

    job_id: str
    job_name: str
    job_dir: Path
