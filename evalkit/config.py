"""`config.yaml` as pydantic models, and a loader whose errors name the file, line and key.

Every block is strict: an unknown or misspelled key is an error, never silently ignored. Relative paths in
the file are resolved against the file's own directory, so a job runs the same from any working directory.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator

from evalkit.adapters.harbor import DatasetConfig
from evalkit.envvars import expand_env_vars
from evalkit.errors import TRIAL_ERROR_TYPES, ConfigError, read_user_file
from evalkit.gateway import LLMApiConfig
from evalkit.strict import StrictModel

if TYPE_CHECKING:
    from evalkit.results import ErrorInfo

_SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd|credentials?|authorization|auth|cookies?)$", re.IGNORECASE)
_SECRET_PARENT = re.compile(r"^(headers|extra_headers|default_headers|cookies)$", re.IGNORECASE)
"""Every value under a key like these is a secret (an `Authorization` header hides in them)."""
_SECRET_VALUE = re.compile(r"^\s*(bearer|basic|token)\s+\S|^sk-[A-Za-z0-9_-]{8,}|://[^/\s@]+@", re.IGNORECASE)
"""Values that are secrets wherever they appear: bearer tokens, `sk-…` keys, URLs with credentials."""
SECRET_MARK = "<secret sha256:"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class AgentModelConfig(StrictModel):
    """How the agent calls the model (it always sends `llm_api.model`, the one name the gateway serves)."""

    max_turns: int | None = Field(default=None, ge=1)
    """Model turns before the agent stops (claude-code `--max-turns`, openhands-sdk iterations, evalkit turns;
    opencode has no such limit). Default: the scaffold's own (evalkit: 50)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Tokens per completion (claude-code `CLAUDE_CODE_MAX_OUTPUT_TOKENS`); default: the scaffold's own."""
    temperature: float | None = Field(default=None, ge=0)
    """Sampling temperature where the scaffold lets it be set (evalkit, openhands-sdk); default: the server's."""


class AgentConfig(StrictModel):
    """Switching scaffold is an edit of `name`, `version`, `runtime_image` and `runtime_host_path` together;
    the last three default to the pinned build of the named scaffold (`evalkit runtime list`)."""

    name: str = "oracle"
    """Which agent runs the trials: `oracle` (the task's reference solution), `nop` (does nothing), `evalkit`
    (the built-in host-side agent), an in-container scaffold (`claude-code`, `opencode`, `openhands-sdk`), or an
    import path `package.module:ClassName` of your own `Agent`."""
    version: str | None = None
    """The scaffold's version; must be the one this evalkit pins (default)."""
    runtime_image: str | None = None
    """The image the scaffold's tree is built as (default `evalkit/runtime-<name>:<version>`)."""
    runtime_host_path: Path | None = None
    """The scaffold's runtime tree on the host, mounted read-only at `/opt/evalkit/agent` (default
    `~/.cache/evalkit/runtimes/<name>-<version>`; relative to this file). Build it with `evalkit runtime build`."""
    kwargs: dict[str, Any] = {}
    """Agent-specific options, passed to the agent's constructor (see each agent in the README)."""
    env: dict[Annotated[str, Field(pattern=_ENV_NAME)], str] = {}
    """Environment variables for the agent's process (in-container scaffolds) or its commands (evalkit). The
    route's own variables (base URL, key, model) are set after these and win."""
    model: AgentModelConfig = AgentModelConfig()


class RayConfig(StrictModel):
    """`environment.ray`: how a job with `backend: ray` finds its cluster and which nodes it uses."""

    address: str | None = None
    """`auto`, `ray://host:port` or `host:port`; unset: the connection this process already has (`ray.init()`
    called by the host application). evalkit shuts down only a connection it opened itself."""
    resources: dict[str, float] = {}
    """A node is used only if it offers at least these Ray resources (e.g. `{docker: 1}`)."""
    labels: dict[str, str] = {}
    """…and carries these Ray node labels (e.g. `{evalkit-pool: eval}`; `ray start --labels`)."""
    max_trials_per_node: int = Field(default=4, ge=1)
    """Environments in flight on one node at once (image builds per node: `n_concurrent_builds`)."""


class EnvironmentConfig(StrictModel):
    backend: Literal["docker", "ray"] = "docker"
    """Where try environments run; one module per backend (`evalkit.environments.BACKENDS`). `ray`: on the
    nodes of a Ray cluster, each driving its own Docker engine (`environment.ray`)."""
    ray: RayConfig = RayConfig()
    """Used with `backend: ray`."""
    docker_host: str | None = None
    """Docker Engine API address; default: `DOCKER_HOST`, else the local Unix socket. A remote engine
    (anything but `unix://`) works only when nothing is mounted (no `ca_bundle`)."""
    network_mode: Literal["bridge", "host", "none"] | None = None
    """Network for tasks that need the internet (`public`); `no-network` and `allowlist` tasks always get
    `none`, plus their model route. Default: the engine's `bridge` network where it has one; an engine without
    a bridge needs an explicit choice. `host` shares this machine's network with the container: its loopback
    services (the gateway's TCP port, any local server) and every address the host can reach."""
    n_concurrent_builds: int = Field(default=1, ge=1)
    """Image builds in flight at once. Images are prepared ahead of the trials that need them, so agents
    never wait for a build in their slot."""
    n_concurrent_pulls: int = Field(default=2, ge=1)
    """Image pulls (prebuilt `docker_image`s, `FROM` bases) in flight at once."""
    pull_timeout_sec: float = Field(default=1800.0, gt=0)
    """One pull's limit; a failed or timed-out pull is retried twice with backoff, then an `ImagePullError`."""
    image_cache_gb: float | None = Field(default=None, ge=0)
    """Disk for the images this job builds or pulls: beyond it, images no pending trial needs are evicted,
    least recently used first. Default: half the free disk where the engine keeps its images."""
    outage_timeout_sec: float = Field(default=600.0, gt=0)
    """How long the job waits for a Docker engine that went away (stopped, restarting) before it stops."""
    ca_bundle: str | None = None
    """Host CA bundle mounted read-only into every container (TLS-inspecting networks, private mirrors)."""
    keep_containers: bool = False
    """Leave containers running after each trial (debugging only; they still carry the job's labels)."""
    pass_env: list[Annotated[str, Field(pattern=_ENV_NAME)]] = []
    """Host environment variables a task's `task.toml` may read through `${VAR}`. Tasks come from
    strangers: any other reference is an error for that task, so your keys never reach its container."""
    pids_limit: int = Field(default=4096, ge=16)
    """Processes a container may have at once: a fork bomb stops there instead of at the host's limit."""
    download_max_mb: int = Field(default=100, ge=1)
    """Per try, per directory (`/logs/agent`, `/logs/verifier`, `/logs/artifacts`): file data copied back
    to the host; what does not fit is listed in `result.json` and left behind."""
    download_max_files: int = Field(default=10_000, ge=1)
    """Per try, per directory: files and directories copied back."""


class TimeoutsConfig(StrictModel):
    """Each phase's timeout is (task value or override) × `multiplier` × that phase's multiplier."""

    multiplier: float = Field(default=1.0, gt=0)
    """Global factor on every phase, for slow machines."""
    build_multiplier: float = Field(default=1.0, gt=0)
    start_multiplier: float = Field(default=1.0, gt=0)
    agent_setup_multiplier: float = Field(default=1.0, gt=0)
    agent_multiplier: float = Field(default=1.0, gt=0)
    verifier_multiplier: float = Field(default=1.0, gt=0)
    build_sec: float | None = Field(default=None, gt=0)
    """Override of the tasks' `[environment] build_timeout_sec`."""
    start_sec: float = Field(default=120.0, gt=0)
    """Container create + start."""
    agent_setup_sec: float = Field(default=360.0, gt=0)
    agent_sec: float | None = Field(default=None, gt=0)
    """Override of the tasks' `[agent] timeout_sec` (absent there means no limit)."""
    verifier_sec: float | None = Field(default=None, gt=0)
    """Override of the tasks' `[verifier] timeout_sec`."""
    grace_sec: float = Field(default=30.0, gt=0)
    """How long after its timeout an agent that ignores it is cut off by the engine."""


class RetryConfig(StrictModel):
    max_retries: int = Field(default=0, ge=0)
    """Extra tries for a trial that ended in a retryable error; every try keeps its own directory."""
    include_errors: list[str] | None = None
    """Error types to retry; default: the infrastructure ones (environment start, agent setup, the Docker
    engine going away), never what the agent, the verifier or the task did, and never an unexpected error."""
    exclude_errors: list[str] = []
    """Error types never retried, even when in `include_errors`."""
    backoff_sec: float = Field(default=1.0, ge=0)
    """Wait before the first retry; doubles on each further retry."""
    max_backoff_sec: float = Field(default=60.0, ge=0)

    @field_validator("include_errors", "exclude_errors")
    @classmethod
    def _known_error_types(cls, names: list[str] | None) -> list[str] | None:
        for name in names or []:
            if name not in TRIAL_ERROR_TYPES:
                raise ValueError(f"unknown error type {name!r}; known: {', '.join(TRIAL_ERROR_TYPES)}")
        return names

    def should_retry(self, error: ErrorInfo) -> bool:
        if error.type in self.exclude_errors:
            return False
        if self.include_errors is not None:
            return error.type in self.include_errors
        return error.type in TRIAL_ERROR_TYPES and error.kind == "infrastructure"


class PostRunConfig(StrictModel):
    """What `evalkit run` does after a job ends; both steps read only the job's files and never change its
    results or exit code."""

    analyze: bool = True
    """Write `<job>/analysis/` (failure causes, task tiers, trajectory comparison); zero model tokens."""
    archive: bool = True
    """Snapshot the run under `artifacts/archives/run_NNN/` and append it to `artifacts/index.yaml`."""


class JobConfig(StrictModel):
    job_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    """Directory name under `jobs_dir`; running the same job name again resumes it."""
    jobs_dir: Path = Path("artifacts/jobs")
    """Where job directories live (relative to the config file)."""
    n_attempts: int = Field(default=1, ge=1)
    """Independent attempts per task (pass@k needs k ≤ n_attempts)."""
    n_concurrent: Literal["auto"] | int = 4
    """Tries in flight at once, or `auto`: grown and shrunk from the engine's and the host's health (up to
    `n_concurrent_max`), the level over time recorded in `results.json`."""
    n_concurrent_max: int = Field(default=64, ge=1)
    """The ceiling of `n_concurrent: auto`."""
    dataset: DatasetConfig
    agent: AgentConfig = AgentConfig()

    environment: EnvironmentConfig = EnvironmentConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    retry: RetryConfig = RetryConfig()
    llm_api: LLMApiConfig | None = None
    """The model behind the per-job gateway; needed only by agents that call a model."""
    after_run: PostRunConfig = PostRunConfig()
    """Analysis and archiving after `evalkit run` (the CLI; `evaluate()` leaves both to the caller)."""

    @field_validator("n_concurrent", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("expected a whole number ≥ 1 or 'auto'")

    # --- metrics (evalkit.metrics): what results.json reports and how honestly
    metrics: list[str] = []
    """Metrics in `results.json` and the summary: `avg`/`mean_reward`, `pass_rate`, `pass@K`, `pass^K`
    (K ≤ n_attempts); empty → mean reward and pass rate."""
    breakdown_keys: list[str] = []
    """Task `[metadata]` keys every metric is repeated for, per value (e.g. `difficulty`, `category`)."""
    error_policy: Literal["zero", "exclude"] = "zero"
    """Errored trials without a reward count 0 (`zero`) or are left out (`exclude`); infrastructure errors
    and cancelled trials are never scored either way."""
    min_coverage: float | None = Field(default=None, ge=0.0, le=1.0)
    """Below this share of scored trials the metrics are marked unreliable and `evalkit run` exits 4."""

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str], info: Any) -> list[str]:
        from evalkit.metrics import parse_metric_names

        try:
            specs = parse_metric_names(names)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        n_attempts = info.data.get("n_attempts", 1)
        for spec in specs:
            if spec.k > n_attempts:
                raise ValueError(f"{spec.name} needs n_attempts ≥ {spec.k} (n_attempts is {n_attempts})")
        return names

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="<config>")

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in the config are resolved against."""
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    @property
    def job_dir(self) -> Path:
        return self.resolve_path(self.jobs_dir) / self.job_name

    @property
    def artifacts_dir(self) -> Path:
        """The artifacts root (parent of `jobs_dir`), where `litellm/<job>/` lives too."""
        return self.resolve_path(self.jobs_dir).parent

    def resolve_path(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self._base_dir / p

    def identity(self, salt: str) -> dict[str, Any]:
        """What must not change when a job is resumed: the work itself, not how fast it is done. Secrets
        appear only as salted hashes, so a changed key is still noticed but never written down."""
        identity = self.model_dump(
            mode="json",
            include={"dataset", "agent", "n_attempts", "timeouts", "llm_api"},
            exclude={"dataset": {"cache_dir", "max_concurrent_fetches"}, "llm_api": {"host", "port"}, "timeouts": {"grace_sec"}},
        )
        return _redact(identity, lambda v: f"{SECRET_MARK}{hashlib.sha256((salt + repr(v)).encode()).hexdigest()[:24]}>")

    def redacted(self) -> dict[str, Any]:
        """The config as a plain dict with secret-looking values replaced, for snapshots on disk."""
        return _redact(self.model_dump(mode="json"), lambda _: "***")


def _redact(value: Any, replace: Any, secret: bool = False) -> Any:
    """`value` with every secret leaf (by its key, an enclosing key, or its own shape) replaced."""
    if isinstance(value, dict):
        return {
            k: _redact(v, replace, secret or bool(_SECRET_KEY.search(str(k))) or bool(_SECRET_PARENT.match(str(k))))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, replace, secret) for v in value]
    if value is None or value == "" or isinstance(value, bool):
        return value
    if secret or (isinstance(value, str) and _SECRET_VALUE.search(value)):
        return replace(value)
    return value


# ---------------------------------------------------------------------------------------------- loading


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None
) -> JobConfig:
    """Read, interpolate and validate a config file. `overrides` maps dotted keys to values (CLI flags)."""
    path = Path(path)
    text = read_user_file(path, "config file").decode("utf-8", errors="replace")
    data, lines = _parse_yaml(text, str(path), environ)
    return config_from_dict(data, base_dir=path.resolve().parent, source=str(path), lines=lines, overrides=overrides)


def config_from_dict(
    data: dict[str, Any] | JobConfig,
    *,
    base_dir: Path | None = None,
    source: str = "<config>",
    lines: dict[tuple[Any, ...], int] | None = None,
    overrides: dict[str, Any] | None = None,
) -> JobConfig:
    if isinstance(data, JobConfig):
        return data
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        if dotted == "agent.name" and value != (data.get("agent") or {}).get("name"):
            data["agent"] = {}  # another agent: the block's options, runtime and model settings were the old one's
        _set_dotted(data, dotted.split("."), value)
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, lines or {})) from None
    config._base_dir = (base_dir or Path.cwd()).resolve()
    config._source = source
    return config


def _set_dotted(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        data[key] = dict(data.get(key) or {})
        data = data[key]
    data[keys[-1]] = value


def _parse_yaml(
    text: str, source: str, environ: dict[str, str] | None
) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    """Parse YAML into plain data plus a map from key paths to 1-based line numbers."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    if root is None:
        raise ConfigError(f"{source}: the config file is empty")
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{source}:{root.start_mark.line + 1}: the config must be a mapping of keys to values")
    scalars = yaml.constructor.SafeConstructor()
    lines: dict[tuple[Any, ...], int] = {}

    def to_data(node: yaml.Node, path: tuple[Any, ...]) -> Any:
        if path:  # the root's line says nothing; a key missing at the top names just the file
            lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = scalars.construct_object(key_node)
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = to_data(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [to_data(item, (*path, i)) for i, item in enumerate(node.value)]
        value = scalars.construct_object(node)
        if isinstance(value, str) and "${" in value:
            try:
                value = expand_env_vars(value, environ)
            except KeyError as exc:
                name = exc.args[0]
                raise ConfigError(
                    f"{source}:{lines[path]}: {_dotted(path)}: environment variable {name} is not set "
                    f"(write ${{{name}:-default}} to give a default)"
                ) from None
        return value

    return to_data(root, ()), lines


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def format_validation_error(
    exc: ValidationError, source: str, lines: dict[tuple[Any, ...], int], root: type[BaseModel] | None = None
) -> str:
    """One line per problem: `file:line: dotted.key: what is wrong` (`root`: the validated model, default JobConfig)."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        line = next((lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines), None)
        where = f"{source}:{line}" if line else source
        if err["type"] == "extra_forbidden":
            what = f"unknown key{_suggest_key(root or JobConfig, loc)}"
        elif err["type"] == "missing":
            what = "required key is missing"
        else:
            what = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                what += f" (got {err['input']!r})"
        problems.append(f"{where}: {_dotted(loc)}: {what}")
    return "invalid config:\n  " + "\n  ".join(problems)


def _suggest_key(root: type[BaseModel], loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model else None
        model = _model_of(field.annotation) if field else None
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else f"; allowed: {', '.join(model.model_fields)}"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if (found := _model_of(arg)) is not None:
            return found
    return None
