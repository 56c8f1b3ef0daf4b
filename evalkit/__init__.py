"""evalkit: evaluate LLM agents on containerized benchmarks.

The supported surface is what this module exports; everything else may move.
"""

from evalkit.api import evaluate
from evalkit.config import JobConfig, load_config
from evalkit.errors import ConfigError, EvalkitError, InfrastructureError, TrialError
from evalkit.job import JobResult, Progress
from evalkit.results import JobSummary, TrialResult

__all__ = [
    "ConfigError",
    "EvalkitError",
    "InfrastructureError",
    "JobConfig",
    "JobResult",
    "JobSummary",
    "Progress",
    "TrialError",
    "TrialResult",
    "evaluate",
    "load_config",
]
