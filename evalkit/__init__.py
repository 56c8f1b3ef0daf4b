"""evalkit: evaluate LLM agents on containerized benchmarks.

The supported surface is what this module exports; everything else may move. Exports load lazily, so
`import evalkit.<module>` (as the adapters and the gateway do) never drags in the whole engine.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "evaluate": "evalkit.api",
    "evaluate_iter": "evalkit.api",
    "Benchmark": "evalkit.training",
    "BenchmarkEvaluator": "evalkit.training",
    "SQLiteStore": "evalkit.training",
    "MetricsReport": "evalkit.metrics",
    "JobConfig": "evalkit.config",
    "load_config": "evalkit.config",
    "ConfigError": "evalkit.errors",
    "EvalkitError": "evalkit.errors",
    "InfrastructureError": "evalkit.errors",
    "TrialError": "evalkit.errors",
    "JobResult": "evalkit.job",
    "Progress": "evalkit.job",
    "JobSummary": "evalkit.results",
    "TrialResult": "evalkit.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'evalkit' has no attribute {name!r}")


if TYPE_CHECKING:
    from evalkit.api import evaluate, evaluate_iter
    from evalkit.metrics import MetricsReport
    from evalkit.training import Benchmark, BenchmarkEvaluator, SQLiteStore
    from evalkit.config import JobConfig, load_config
    from evalkit.errors import ConfigError, EvalkitError, InfrastructureError, TrialError
    from evalkit.job import JobResult, Progress
    from evalkit.results import JobSummary, TrialResult
