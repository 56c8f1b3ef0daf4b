"""What `evalkit loadtest` does: the target, the workload, the sweep and its bounds (YAML and/or CLI flags).

A load test sends only to addresses the user wrote down: `endpoints` (or the `api_base` of each `llm_api`
deployment when a gateway is put in front of them). Nothing else is ever contacted — no default URL, no proxy
from the environment, no redirect followed.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from evalkit.config import _parse_yaml, format_validation_error
from evalkit.errors import ConfigError, read_user_file
from evalkit.gateway.config import LLMApiConfig
from evalkit.strict import StrictModel

Protocol = Literal["openai_chat", "anthropic_messages"]
"""The wire protocol of a synthetic request (replayed calls keep the one they were recorded with)."""

Arrival = Literal["concurrency", "rate", "poisson"]
"""How requests are started: a fixed number in flight (closed loop), a fixed rate, or Poisson arrivals."""


def check_address(url: str, where: str) -> str:
    """An absolute http(s) URL with a host and no credentials in it (keys come from `api_key_env`)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: {url!r} is not an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValueError(f"{where}: put no credentials in the URL; name the key's variable in api_key_env")
    if parts.query or parts.fragment:
        raise ValueError(f"{where}: {url!r} has a query or fragment; give a base URL such as http://host:port/v1")
    return url.rstrip("/")


class SyntheticWorkload(StrictModel):
    """Generated requests of a fixed shape: one user message, a known number of output tokens asked for."""

    protocol: Protocol = "openai_chat"
    """`openai_chat` (`/v1/chat/completions`) or `anthropic_messages` (`/v1/messages`)."""
    prompt_tokens: int = Field(default=256, ge=1, le=1_000_000)
    """Approximate prompt length; the text has about 4 characters per token and a unique start per request, so
    no two requests share a cached prefix."""
    output_tokens: int = Field(default=128, ge=1, le=1_000_000)
    """`max_tokens` asked for (a server may stop earlier; what it produced is what is counted)."""
    seed: int = 0
    """Seed of the prompt text and of Poisson arrivals: two runs with one seed send the same requests."""


class ReplayWorkload(StrictModel):
    """Recorded agent trials replayed call by call: same requests, same think-times, one replica per trial."""

    jobs: list[Path] = Field(min_length=1)
    """Job directories (every `<trial>/agent/litellm-trajectory.jsonl` in them), trial directories, or
    trajectory files; relative paths are taken from the config file's directory."""
    think_time_scale: float = Field(default=1.0, ge=0)
    """Multiplier on recorded think-times (the gaps between a call's answer and the trial's next call);
    0 replays as fast as the server answers."""


class LoadTestConfig(StrictModel):
    """One load test: where to send, what, how much, and for how long at most."""

    model: str = Field(min_length=1)
    """Model name put in every request (replayed requests get it in place of the recorded one)."""
    endpoints: list[str] = []
    """Base URLs sent to directly, one per replica (e.g. `http://127.0.0.1:8000/v1`)."""
    llm_api: LLMApiConfig | None = None
    """Instead of `endpoints`: an evalkit gateway is started (in its own process) in front of these deployments
    and every request goes through it, each replayed trial with its own trial key."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Environment variable holding the endpoints' key (never the key itself); none for a keyless server."""
    synthetic: SyntheticWorkload | None = None
    """Generated requests (give this or `replay`)."""
    replay: ReplayWorkload | None = None
    """Recorded trials from earlier jobs (give this or `synthetic`)."""
    arrival: Arrival = "concurrency"
    """`concurrency`: `loads` are requests (replay: trials) in flight; `rate`/`poisson`: `loads` are requests/s."""
    loads: list[float] = Field(default=[1.0], min_length=1)
    """The sweep, one step per value, in the order given."""
    max_requests: int = Field(default=1000, ge=1)
    """Requests sent at most per step."""
    duration_sec: float = Field(default=60.0, gt=0)
    """Longest time a step sends new requests; calls in flight then get `request_timeout_sec` to finish."""
    request_timeout_sec: float = Field(default=600.0, gt=0)
    """Limit on one request, streaming included (an `timeout` error past it)."""
    prefix_cache_metrics: bool = True
    """Read `<endpoint root>/metrics` before and after each step for vLLM's prefix-cache counters."""
    output_dir: Path = Path("artifacts/loadtest")
    """Where `loadtest.json` and `loadtest.png` are written (and the gateway's files, when there is one)."""

    @field_validator("endpoints")
    @classmethod
    def _addresses(cls, endpoints: list[str]) -> list[str]:
        return [check_address(url, f"endpoints[{i}]") for i, url in enumerate(endpoints)]

    @field_validator("loads")
    @classmethod
    def _positive(cls, loads: list[float]) -> list[float]:
        if any(not load > 0 for load in loads):
            raise ValueError("every load must be > 0")
        return loads

    @model_validator(mode="after")
    def _one_target_one_workload(self) -> LoadTestConfig:
        if bool(self.endpoints) == (self.llm_api is not None):
            raise ValueError("give either `endpoints` (sent to directly) or `llm_api` (through an evalkit gateway)")
        if (self.synthetic is None) == (self.replay is None):
            raise ValueError("give either `synthetic` or `replay`")
        if self.replay is not None and self.arrival != "concurrency":
            raise ValueError("a replay runs whole trials: arrival must be `concurrency` (trials in flight)")
        if self.arrival == "concurrency" and any(load != int(load) for load in self.loads):
            raise ValueError("with arrival `concurrency`, loads are counts: whole numbers")
        if self.llm_api is not None:
            if self.llm_api.serve is not None:
                raise ValueError("llm_api.serve: start the servers yourself and list them in llm_api.deployments")
            for i, deployment in enumerate(self.llm_api.deployments):
                if deployment.api_base is None:
                    raise ValueError(f"llm_api.deployments[{i}].api_base: required (only given addresses are used)")
                check_address(deployment.api_base, f"llm_api.deployments[{i}].api_base")
        return self

    @property
    def upstreams(self) -> list[str]:
        """Every address this test may contact besides the gateway it starts itself."""
        if self.llm_api is not None:
            return [d.api_base.rstrip("/") for d in self.llm_api.deployments if d.api_base]
        return list(self.endpoints)

    @property
    def replica_names(self) -> list[str]:
        """How replicas are named in the report: the endpoint URL, or the gateway's deployment label."""
        if self.llm_api is not None:
            return [d.label for d in self.llm_api.deployments]
        return list(self.endpoints)


def load_loadtest_config(
    path: Path | None, overrides: dict[str, Any] | None = None, *, base_dir: Path | None = None
) -> LoadTestConfig:
    """The config from a YAML file (or none) with CLI `overrides` on top; errors name the field and the file."""
    data: dict[str, Any] = {}
    lines: dict[tuple[Any, ...], int] = {}
    source = "command line"
    if path is not None:
        source = str(path)
        text = read_user_file(path, "load-test config").decode("utf-8", errors="replace")
        data, lines = _parse_yaml(text, source, None)
        base_dir = path.resolve().parent
    for key, value in (overrides or {}).items():
        section, _, field = key.rpartition(".")
        target = data.setdefault(section, {}) if section else data
        if not isinstance(target, dict):
            raise ConfigError(f"{source}: {section}: expected a mapping")
        target[field] = value
        lines.pop((*([section] if section else []), field), None)  # a flag's value has no line in the file
    try:
        config = LoadTestConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, lines, root=LoadTestConfig)) from None
    base = (base_dir or Path.cwd()).resolve()
    update: dict[str, Any] = {"output_dir": base / config.output_dir}
    if config.replay is not None:
        jobs = [base / p for p in config.replay.jobs]
        update["replay"] = config.replay.model_copy(update={"jobs": jobs})
    return config.model_copy(update=update)
