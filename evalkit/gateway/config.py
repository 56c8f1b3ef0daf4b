"""The `llm_api:` block of config.yaml: the model agents see and the upstream deployments behind it.

Switching between a remote API (Mode A) and a local vLLM server (Mode B) is an edit of `deployments`; nothing
else changes. Secrets never appear here: a deployment names the environment variable that holds its key.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from evalkit.serving import ServeConfig
from evalkit.strict import StrictModel

Protocol = Literal["openai_chat", "openai_responses", "anthropic_messages", "anthropic_count_tokens"]
"""A wire protocol a client speaks to the gateway, and that an upstream may serve natively."""

NATIVE_PROTOCOLS: dict[str, tuple[Protocol, ...]] = {
    "hosted_vllm": ("openai_chat",),
    "custom_openai": ("openai_chat",),
    "openai": ("openai_chat", "openai_responses"),
    "anthropic": ("anthropic_messages", "anthropic_count_tokens"),
}
"""What each LiteLLM provider prefix serves without translation; other providers are reached through LiteLLM."""

DEFAULT_API_ROOTS = {"openai": "https://api.openai.com", "anthropic": "https://api.anthropic.com"}
"""Where the pass-through path goes when a deployment of these providers sets no `api_base`."""

_SECRET_PARAM = re.compile(r"(key|secret|token|password|credentials?)$", re.IGNORECASE)


def without_credentials(url: str) -> str:
    """The URL minus any `user:password@`, for everything that is shown or written."""
    parts = urllib.parse.urlsplit(url)
    if not parts.username and not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


class DeploymentConfig(StrictModel):
    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+/.+$")
    """LiteLLM model string `provider/name`, e.g. `hosted_vllm/smollm2` or `anthropic/claude-sonnet-4-5`."""
    api_base: str | None = None
    """Upstream base URL, e.g. `http://127.0.0.1:8000/v1`; default: the provider's public endpoint."""
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Name of the environment variable holding the upstream key (never the key itself); none for a keyless vLLM."""
    max_in_flight: int | None = Field(default=None, ge=1)
    """Cap on calls in flight to this deployment (others wait for a slot); none means no cap."""
    protocols: list[Protocol] | None = None
    """Protocols the upstream serves natively, taken by the pass-through path (no LiteLLM); default: inferred
    from the provider prefix (vLLM and OpenAI: `openai_chat`; Anthropic: `anthropic_messages`). Add
    `anthropic_messages` for a vLLM that serves `/v1/messages`."""
    name: str | None = None
    """Label in trajectories and /health; default `model@api_base`."""
    stream_usage: bool = True
    """Ask for token usage on streamed OpenAI chat calls even when the agent did not (the extra usage event is
    not passed to the agent); turn off for servers that reject `stream_options`."""
    usd_per_million_input: float | None = Field(default=None, ge=0)
    """Price override for prompt tokens; default: LiteLLM's price map (local models are not in it: no cost)."""
    usd_per_million_output: float | None = Field(default=None, ge=0)
    """Price override for generated tokens (set both, or neither)."""
    litellm_params: dict[str, Any] = {}
    """Extra keyword arguments for LiteLLM on the translated path, e.g. `{drop_params: true}`."""

    @field_validator("litellm_params")
    @classmethod
    def _no_secrets(cls, params: dict[str, Any]) -> dict[str, Any]:
        for key in params:
            if _SECRET_PARAM.search(key):
                raise ValueError(f"{key!r} looks like a secret: name its environment variable in api_key_env")
        return params

    @model_validator(mode="after")
    def _reachable(self) -> DeploymentConfig:
        if self.native and self.api_root is None:
            raise ValueError(f"api_base is required for {self.model} (e.g. http://127.0.0.1:8000/v1)")
        return self

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def upstream_model(self) -> str:
        """The model name the upstream itself knows (the part after the provider prefix)."""
        return self.model.split("/", 1)[1]

    @property
    def native(self) -> frozenset[str]:
        return frozenset(self.protocols if self.protocols is not None else NATIVE_PROTOCOLS.get(self.provider, ()))

    @property
    def api_root(self) -> str | None:
        """Base URL without a trailing `/v1`: pass-through paths are appended whole (`/v1/chat/completions`)."""
        base = (self.api_base or DEFAULT_API_ROOTS.get(self.provider, "")).rstrip("/")
        return (base[:-3] if base.endswith("/v1") else base) or None

    @property
    def label(self) -> str:
        return self.name or (f"{self.model}@{without_credentials(self.api_base)}" if self.api_base else self.model)


class LLMApiConfig(StrictModel):
    model: str = Field(min_length=1)
    """The model name agents see and must send (e.g. `smollm2`)."""
    deployments: list[DeploymentConfig] = []
    """Upstreams serving that model; each trial is pinned to one while it stays healthy."""
    serve: ServeConfig | None = None
    """Instead of `deployments`: servers evalkit starts for the job and stops after it (Mode B, local model);
    their replicas become the deployments (`evalkit.serving.managed_llm_api`)."""
    host: str = "127.0.0.1"
    """Address the gateway listens on; loopback by default so nothing outside this machine can reach it."""
    port: int = Field(default=0, ge=0, le=65535)
    """Port to listen on; 0 picks a free one (the job passes the URL to its agents)."""
    processes: int = Field(default=1, ge=1, le=64)
    """Gateway processes, each serving its share of the trials (a trial's calls all go to one); the job's own
    process runs none of the gateway. More than one helps only with cores to spare (see README, Performance)."""
    timeout_sec: float = Field(default=600.0, gt=0)
    """Limit on an attempt until the answer starts (headers and, for a stream, its first event), and on a whole
    non-streamed answer; queueing and prefill on a loaded local model take minutes."""
    connect_timeout_sec: float = Field(default=10.0, gt=0)
    """Limit on opening a connection to a deployment; running out counts against the deployment."""
    idle_timeout_sec: float = Field(default=120.0, gt=0)
    """Longest silence between two reads of a stream once it started: a stalled stream ends with an error
    event, a slow but live one runs on (there is no deadline for a whole generation unless `max_stream_sec`)."""
    max_stream_sec: float | None = Field(default=None, gt=0)
    """Optional cap on a whole stream, first byte to last; none by default."""
    slot_wait_sec: float = Field(default=60.0, ge=0)
    """Longest wait for an in-flight slot (`max_in_flight`) before the call gets a 503 with Retry-After."""
    spill_after_sec: float = Field(default=1.0, ge=0)
    """How long a call waits for a slot on its trial's replica before it may go to another healthy replica
    with a free slot (losing the prefix cache for that call)."""
    upstream_keepalive_sec: float = Field(default=4.0, gt=0)
    """Idle pooled upstream connections are closed after this long: under vLLM's (uvicorn's) 5 s, so the
    gateway never sends a request on a connection the server is closing."""
    max_retries: int = Field(default=3, ge=0)
    """Further attempts after a 408/429/5xx, a connection error or a timeout, before any byte reached the agent."""
    retry_backoff_sec: float = Field(default=0.5, ge=0)
    """First wait between attempts, doubled each time (with jitter); `Retry-After` wins when longer."""
    max_retry_wait_sec: float = Field(default=60.0, ge=0)
    """Ceiling on any single wait, `Retry-After` included."""
    cooldown_sec: float = Field(default=30.0, ge=0)
    """How long a failing deployment gets no new calls; its trials are served elsewhere meanwhile and go back
    to it (their home replica) once it recovers."""
    allowed_fails: int = Field(default=0, ge=0)
    """Consecutive replica-level failures (connection refused or reset, connect timeout, 503) a deployment may
    have before it is cooled down (0: at the first). One request's 500, 408 or 429 never counts."""
    max_body_bytes: int = Field(default=32 * 1024**2, ge=1024)
    """Largest request body accepted (413 above it); long agent conversations with images run to megabytes."""
    max_trial_bytes_in_flight: int = Field(default=64 * 1024**2, ge=1024)
    """Request bytes one trial may have in flight at once; a call past it gets a 429 with Retry-After."""
    max_bytes_in_flight: int = Field(default=1024**3, ge=1024)
    """Request bytes a gateway process holds at once for all its trials; calls past it wait for room (up to
    `slot_wait_sec`, then 503)."""

    @model_validator(mode="after")
    def _one_source(self) -> LLMApiConfig:
        if bool(self.deployments) == (self.serve is not None):
            raise ValueError("give either `deployments` (servers already running) or `serve` (evalkit starts them)")
        return self

    @model_validator(mode="after")
    def _unique_labels(self) -> LLMApiConfig:
        labels = [d.label for d in self.deployments]
        if len(set(labels)) != len(labels):
            raise ValueError("two deployments have the same model and api_base: give them distinct `name`s")
        return self
