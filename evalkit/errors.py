"""Every error evalkit reports, typed, so results and retries can name them.

Two families:
- `EvalkitError` subclasses stop a command and map to an exit code (config vs infrastructure).
- `TrialError` subclasses end or mark one try; they are recorded in its `result.json` by class name, with
  a `kind` saying whose failure it was, and never stop the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

ErrorKind = Literal["infrastructure", "agent", "verifier", "task"]
ERROR_KINDS: tuple[str, ...] = ("infrastructure", "agent", "verifier", "task")
"""Whose failure: the machine's, the agent's, the verifier's, or the task's. Only `infrastructure` says
nothing about the agent, so only it is retried by default."""


class EvalkitError(Exception):
    """An error that stops an evalkit command; `exit_code` is what the CLI returns."""

    exit_code = 1


class ConfigError(EvalkitError):
    """Bad input from the user: a config file, a task directory, a dataset name."""

    exit_code = 2


class JobRunningError(ConfigError):
    """Another runner holds the job's lock; two runners of one job would remove each other's containers."""


def read_user_file(path: Path, what: str) -> bytes:
    """Read a file the user pointed at; a missing or unreadable one is a ConfigError that names it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


class InfrastructureError(EvalkitError):
    """Something evalkit needs is unavailable (the Docker engine, the network, a cache)."""

    exit_code = 3


class JobFailedError(InfrastructureError):
    """A failure outside any try stopped the job: a result that cannot be written, a progress callback
    that raised. Finished tries stay on disk; running the job again resumes it."""


class TrialError(Exception):
    """An error recorded against one try. `kind` decides the default retry policy (infrastructure only)."""

    kind: ClassVar[ErrorKind] = "infrastructure"


def kind_of(error: type[BaseException]) -> ErrorKind:
    """Whose failure an error of this type is before anything else is known: a typed error says; any other
    exception is the machine's."""
    return error.kind if issubclass(error, TrialError) else "infrastructure"


# ------------------------------------------------------------------------------------------- task


class TaskConfigError(TrialError):
    """The task cannot be loaded (a bad `task.toml`, a missing file, an environment variable it may not
    read); its trials are recorded without starting a container."""

    kind = "task"


class TaskUnsupportedError(TrialError):
    """The task needs something evalkit does not offer (GPUs, Windows, upload filters), in a way that would
    change its score."""

    kind = "task"


class EnvironmentBuildError(TrialError):
    """The task image could not be built (or the build outlived its timeout)."""

    kind = "task"


class HealthcheckError(TrialError):
    """The environment never became healthy: `[environment.healthcheck]` (or a step's) failed `retries` times
    after its start period, or a compose service's healthcheck reported unhealthy. Kind `task`: the agent has
    not run, and the check is the task's own definition of a usable environment, so a retry would only fail
    the same way (a machine too slow for a task's check is still the task's timing, as in Harbor, where it
    ends the trial with no reward)."""

    kind = "task"


class SolutionMissingError(TrialError):
    """The oracle found no `solve.sh` to run (Harbor: `FileNotFoundError`, no verifier, no reward)."""

    kind = "task"


# ------------------------------------------------------------------------------------------- infrastructure


class EnvironmentStartError(TrialError):
    """The container could not be created or started."""


class AgentSetupError(TrialError):
    """The agent's setup step failed or outlived its timeout."""


class DockerUnavailableError(TrialError):
    """The container engine stopped answering, or restarted under the try; whatever phase it happened in,
    the machine failed."""


class ImagePullError(TrialError):
    """An image (a prebuilt `docker_image`, or a `FROM` base of a build) could not be pulled: the registry or
    the network failed, after bounded retries. Not the task's fault, so retried like any infrastructure
    error."""


class TryDeadlineError(TrialError):
    """The whole try outlived its deadline (every phase's timeout plus grace): something was stuck, and the
    try was cut and its container removed."""


class GatewayLostError(TrialError):
    """The model gateway's process that served this try died while the try ran; whatever the agent did after,
    the machine failed (its calls since are missing from the trajectory and the usage)."""


class RayNodeError(DockerUnavailableError):
    """The Ray node running the environment died or stopped answering (`environment.backend: ray`): the
    machine failed, whatever the phase."""


def says_machine_went_away(error_type: str) -> bool:
    """Whether a recorded error's type is one of the engine's going away (`DockerUnavailableError` or a kind
    of it, such as a lost Ray node)."""
    pending, names = [DockerUnavailableError], set()
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending += cls.__subclasses__()
    return error_type in names


# ------------------------------------------------------------------------------------------- agent


class AgentTimeoutError(TrialError):
    """The agent outlived its timeout; it was killed and the verifier still ran."""

    kind = "agent"


class AgentExitError(TrialError):
    """The agent's command exited non-zero; the verifier still ran."""

    kind = "agent"


class AgentCrashError(TrialError):
    """The agent's process died of a signal (exit code 128+N) or could not be started at all (126, 127)."""

    kind = "agent"


class AgentRateLimitedError(TrialError):
    """The agent stopped because the model API kept answering 429 (rate limited), as its own output says."""

    kind = "agent"


class AgentContextWindowError(TrialError):
    """The agent's conversation outgrew the model's context window, as the model API's answer says."""

    kind = "agent"


class AgentAuthenticationError(TrialError):
    """The model API refused the agent's key (401/403): a key that was closed, or a route not its own."""

    kind = "agent"


class AgentModelError(TrialError):
    """The model API failed the agent in another way (a 4xx/5xx it gave up on, an unreachable route)."""

    kind = "agent"


class ContainerLostError(TrialError):
    """The container stopped or vanished under the try (its keep-alive was killed, it ran out of memory)."""

    kind = "agent"


class AgentProcessesSurvivedError(TrialError):
    """Processes the agent started could not all be killed, so the verifier did not run."""

    kind = "agent"


# ------------------------------------------------------------------------------------------- verifier


class VerifierTimeoutError(TrialError):
    """`tests/test.sh` outlived the verifier timeout and was killed."""

    kind = "verifier"


class RewardFileMissingError(TrialError):
    """The verifier wrote neither `reward.json` nor `reward.txt`."""

    kind = "verifier"


class RewardFileEmptyError(TrialError):
    """The reward file exists but is empty."""

    kind = "verifier"


class RewardParseError(TrialError):
    """The reward file is not a regular file of bounded size holding a float literal or a flat JSON object
    of finite numbers."""

    kind = "verifier"


TRIAL_ERROR_TYPES: dict[str, type[TrialError]] = {
    cls.__name__: cls
    for cls in (
        TaskConfigError,
        TaskUnsupportedError,
        EnvironmentBuildError,
        HealthcheckError,
        SolutionMissingError,
        EnvironmentStartError,
        AgentSetupError,
        DockerUnavailableError,
        ImagePullError,
        TryDeadlineError,
        RayNodeError,
        AgentTimeoutError,
        AgentExitError,
        AgentCrashError,
        AgentRateLimitedError,
        AgentContextWindowError,
        AgentAuthenticationError,
        AgentModelError,
        ContainerLostError,
        AgentProcessesSurvivedError,
        VerifierTimeoutError,
        RewardFileMissingError,
        RewardFileEmptyError,
        RewardParseError,
    )
}
"""Error types a config may name (retry include/exclude). Anything else in a result (an unexpected
exception) is recorded by its class name and never retried by default."""
