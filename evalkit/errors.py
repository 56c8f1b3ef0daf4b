"""Every error evalkit reports, typed, so results and retries can name them.

Two families:
- `EvalkitError` subclasses stop a command and map to an exit code (config vs infrastructure).
- `TrialError` subclasses end or mark one trial; they are recorded in its `result.json` by class name
  and never stop the job.
"""

from __future__ import annotations

from pathlib import Path


class EvalkitError(Exception):
    """An error that stops an evalkit command; `exit_code` is what the CLI returns."""

    exit_code = 1


class ConfigError(EvalkitError):
    """Bad input from the user: a config file, a task directory, a dataset name."""

    exit_code = 2


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


class TrialError(Exception):
    """An error recorded against one trial. `retryable` is the default retry policy for the type."""

    retryable = True


class EnvironmentBuildError(TrialError):
    """The task image could not be built (or the build outlived its timeout)."""

    retryable = False


class EnvironmentStartError(TrialError):
    """The container could not be created or started."""


class AgentSetupError(TrialError):
    """The agent's setup step failed or outlived its timeout."""


class AgentTimeoutError(TrialError):
    """The agent outlived its timeout; it was killed and the verifier still ran."""

    retryable = False


class AgentExitError(TrialError):
    """The agent's command exited non-zero; the verifier still ran."""

    retryable = False


class VerifierTimeoutError(TrialError):
    """`tests/test.sh` outlived the verifier timeout and was killed."""

    retryable = False


class RewardFileMissingError(TrialError):
    """The verifier wrote neither `reward.json` nor `reward.txt`."""

    retryable = False


class RewardFileEmptyError(TrialError):
    """The reward file exists but is empty."""

    retryable = False


class RewardParseError(TrialError):
    """The reward file is not a float / a flat JSON object of finite numbers."""

    retryable = False


TRIAL_ERROR_TYPES: dict[str, type[TrialError]] = {
    cls.__name__: cls
    for cls in (
        EnvironmentBuildError,
        EnvironmentStartError,
        AgentSetupError,
        AgentTimeoutError,
        AgentExitError,
        VerifierTimeoutError,
        RewardFileMissingError,
        RewardFileEmptyError,
        RewardParseError,
    )
}
"""Error types a config may name (retry include/exclude) — plus `Cancelled` and `InternalError`."""
