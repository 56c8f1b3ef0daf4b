"""The schemas of `<job>/analysis/`: one pydantic model per file, versioned together by
`ANALYSIS_SCHEMA_VERSION` (bumped when a field changes meaning; new fields may appear without a bump)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from evalkit.analysis.judge import JudgeReport
from evalkit.analysis.stats import Distribution
from evalkit.metrics import MetricsReport

ANALYSIS_SCHEMA_VERSION = 1


class Header(BaseModel):
    schema_version: int = ANALYSIS_SCHEMA_VERSION
    job_name: str
    generated_at: str
    notes: list[str] = []
    """What was skipped or could not be read, in words."""


class Count(BaseModel):
    count: int
    fraction: float
    """Of the report's population (failed trials, resolved trials, tasks)."""
    items: list[str]
    """Trial names (`<task>__<attempt>`) or task names."""


class FailedTrial(BaseModel):
    trial: str
    try_dir: str
    """Directory of the final try, relative to the job directory."""
    task: str
    attempt: int
    cause: str
    kind: str
    """infrastructure | agent | model | verifier | task | cancelled."""
    phase: str | None
    error_type: str | None
    error_message: str | None
    reward: float | None
    failing_tests: list[str]
    last_model_error: str | None
    """Status and text of the trajectory's last failed model call."""


class FailedReport(Header):
    """`report_failed.json`: why trials were not resolved."""

    n_trials: int
    n_failed: int
    n_unreadable: int
    causes: dict[str, Count]
    """Primary cause → trials; fractions of `n_failed`."""
    cause_descriptions: dict[str, str]
    by_kind: dict[str, Count]
    axes: dict[str, dict[str, Count]]
    """Secondary axes: `phase`, `error_type`, `failing_test` (a trial counts under each test it failed)."""
    trials: list[FailedTrial]
    unreadable: list[dict[str, str]]
    """Try directories whose result.json could not be used: `{dir, reason}`."""
    judge: JudgeReport | None = None
    """The LLM judge's verdicts and token cost; None when it was off."""


class ResolvedReport(Header):
    """`report_resolved.json`: what resolved trials cost."""

    n_trials: int
    n_resolved: int
    distributions: dict[str, Distribution]
    """turns (model calls), tool_calls, input_tokens, output_tokens, cost_usd, duration_sec, agent_sec."""
    resolved_with_errors: list[str]
    """Resolved although the agent errored (e.g. timed out after the work was done)."""
    trials: list[str]


class TaskRow(BaseModel):
    task: str
    n_attempts: int
    n_scored: int
    n_passed: int
    pass_rate: float | None
    mean_reward: float | None
    tier: str
    metadata: dict[str, Any]
    tags: dict[str, Any]
    """The tagger's tags (empty without a gold instance)."""


class GroupStats(BaseModel):
    n_tasks: int
    n_trials: int
    pass_rate: float | None
    mean_reward: float | None
    tiers: dict[str, int]


class GoldStatus(BaseModel):
    available: bool
    base: str
    dir: str
    n_instances: int
    built: list[str]
    missing: dict[str, str]
    note: str | None


class TaskAnalysisReport(Header):
    """`report_task_analysis.json`: which tasks are hard, and along which lines."""

    tier_definitions: dict[str, str]
    tiers: dict[str, Count]
    tasks: list[TaskRow]
    breakdowns: dict[str, dict[str, GroupStats]]
    """`difficulty`, `category`, `tags`, `language`, `domain`, `repository`, … → value → stats."""
    metrics: MetricsReport | None
    gold: GoldStatus


class FeatureComparison(BaseModel):
    feature: str
    resolved: Distribution
    unresolved: Distribution
    mean_difference: float | None
    """resolved mean − unresolved mean."""
    median_difference: float | None
    cliffs_delta: float | None
    """P(resolved > unresolved) − P(resolved < unresolved); |δ| ≥ 0.147 small, 0.33 medium, 0.474 large."""


class ScoreComparison(Header):
    """`traj_analysis/score_comparison.json`: resolved vs unresolved trajectories."""

    n_resolved: int
    n_unresolved: int
    effect_size: str
    features: list[FeatureComparison]


class InstanceSummary(Header):
    """`instance_analysis/summary.json`: the per-instance feature table, summarised."""

    n_instances: int
    target: str
    target_distribution: Distribution
    features: dict[str, Distribution]
    feature_descriptions: dict[str, str]


class Correlation(BaseModel):
    feature: str
    n: int
    pearson: float | None
    spearman: float | None
    """None when either side is constant or fewer than 3 instances have the feature."""


class Correlations(Header):
    """`instance_analysis/correlations.json`: each instance feature against the instance's mean reward."""

    target: str
    correlations: list[Correlation]
