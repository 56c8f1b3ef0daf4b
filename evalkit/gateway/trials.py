"""Per-trial keys and routes: what an agent is handed, and what a gateway process keeps for each trial while it
runs.

A key is random and lives from `open_trial` to `close_trial`; with the trial's own Unix socket it is what ties
a request to a trial (and its trajectory file), so an agent can neither reach the upstream's real key nor
another trial's log.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict

from evalkit.gateway.protocols import Usage
from evalkit.gateway.routes import CONTAINER_DIR, SOCKET_NAME, TrialRoute
from evalkit.gateway.logfile import LineWriter, LogFile
from evalkit.gateway.records import Call


class TrialAccess(BaseModel):
    """What an agent needs to reach the model: hand these (and nothing else) to the agent."""

    model_config = ConfigDict(frozen=True)

    trial_id: str
    api_key: str
    """Random per-trial key; 401 once the trial is closed, and on any other trial's socket."""
    base_url: str
    """OpenAI-style TCP base URL (`…/v1`) on the host's loopback, for host-side agents."""
    anthropic_base_url: str
    """The gateway's TCP root, for host-side Anthropic SDKs."""
    model: str
    """The model name to send."""
    socket_path: Path
    """This trial's Unix socket on the host; mount its directory (read-only) at `CONTAINER_DIR` in the
    container, where the agent finds it as `container_socket_path`."""

    @property
    def container_socket_path(self) -> PurePosixPath:
        """Where the socket is inside the container once `socket_path.parent` is mounted at `CONTAINER_DIR`."""
        return CONTAINER_DIR / SOCKET_NAME


def new_key() -> str:
    return "ek-" + secrets.token_urlsafe(24)


class Trial:
    """The live state of one open trial."""

    def __init__(self, trial_id: str, api_key: str, log: LogFile, writer: LineWriter) -> None:
        self.trial_id = trial_id
        self.api_key = api_key
        self.closed = False
        self.route: TrialRoute | None = None
        self.calls: set[asyncio.Task[object]] = set()
        """Request handlers in flight for this trial; cancelled when the trial closes."""
        self.bytes_in_flight = 0
        """Request body bytes its calls in flight hold (`max_trial_bytes_in_flight`)."""
        # Plain counters, not a ModelUsage: this runs once per call, and pydantic's setattr is not free.
        self._calls = self._errors = 0
        self._tokens = Usage()
        self._cost: float | None = None
        self._seq = 0
        self.log = log
        self._writer = writer

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    def record(self, call: Call) -> None:
        """Add the call to the trial's totals, then queue its line (no I/O here: the writer thread does it)."""
        self._calls += 1
        if call.error is not None or call.status is None or call.status >= 400:
            self._errors += 1
        if (usage := call.usage) is not None:
            self._tokens.input_tokens += usage.input_tokens
            self._tokens.output_tokens += usage.output_tokens
            self._tokens.cache_read_tokens += usage.cache_read_tokens
        if call.cost_usd is not None:
            self._cost = (self._cost or 0.0) + call.cost_usd
        self._writer.submit(self.log, call)

    def usage(self) -> dict[str, object]:
        """The totals as `ModelUsage` fields; read after the log was closed, so `trajectory_error` is final."""
        return {
            "n_calls": self._calls,
            "n_errors": self._errors,
            **self._tokens.as_dict(),
            "cost_usd": self._cost,
            "trajectory_error": self.log.error,
        }
