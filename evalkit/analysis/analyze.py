"""`analyze_job(job_dir, config)`: explain a finished (or half-finished) job from its files.

Non-fatal by design: every step runs in its own guard, a failing step is logged and named in the reports'
`notes` (and in `AnalysisResult.errors`), and the function never raises. It reads only files, costs no model
tokens unless the judge is switched on, and streams trajectories (one trial's at a time). It blocks: from
async code call it with `asyncio.to_thread(analyze_job, ...)`.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import traceback
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel

from evalkit.analysis import reports as r
from evalkit.analysis.causes import CAUSES, failing_tests, primary_cause
from evalkit.analysis.gold import Gold, ensure_gold
from evalkit.analysis.judge import JudgeConfig, judge_failures
from evalkit.analysis.reader import (
    TRAJECTORY,
    JobFiles,
    TrajectoryStats,
    TryRecord,
    Unreadable,
    final_tries,
    iter_tries,
    read_job_files,
    read_task_toml,
    read_trajectory,
    summarize_trajectory,
    task_dir_of,
)
from evalkit.analysis.stats import cliffs_delta, describe, pearson, spearman
from evalkit.metrics import TrialRecord, compute_metrics, passed
from evalkit.results import utcnow, write_json_atomic

log = logging.getLogger("evalkit.analysis")

ANALYSIS_DIR = "analysis"
TIERS = {
    "easy": "every scored attempt passed",
    "medium": "at least half of the scored attempts passed",
    "hard": "some, but fewer than half, of the scored attempts passed",
    "unsolved": "no scored attempt passed",
    "unscored": "no attempt was scored (infrastructure errors or cancelled)",
}
FEATURES = {
    "model_calls": "model calls through the gateway (turns)",
    "tool_calls": "tool calls in the model's answers",
    "input_tokens": "prompt tokens, cache reads included",
    "output_tokens": "completion tokens",
    "model_errors": "model calls that failed (HTTP error or broken off)",
    "duration_sec": "wall time of the trial's final try",
    "agent_sec": "wall time of the agent phase",
}
GOLD_FEATURES = {
    "instruction_chars": "length of instruction.md (gold)",
    "n_test_files": "files under tests/ (gold)",
    "n_solution_files": "files under solution/ (gold)",
}
BREAKDOWN_METADATA = ("difficulty", "category", "domain", "tags", "language", "repository", "repo")


class AnalysisConfig(BaseModel):
    """How a job is analysed; written to `analysis/analysis_config.yaml` so a run can be repeated exactly."""

    artifacts_dir: Path | None = None
    """The artifacts root (default: the parent of the job's `jobs/` directory)."""
    gold_base: str | None = None
    """Directory under `artifacts/datasets/` of the gold dataset (default: the job's dataset name)."""
    build_gold: bool = True
    """Build missing gold instances from the task directories."""
    cache_dir: Path | None = None
    """The git task cache, to find git tasks' directories (default: the job's `dataset.cache_dir` or the
    user cache)."""
    error_policy: Literal["zero", "exclude"] = "zero"
    """Denominator policy of the metrics (see evalkit.metrics)."""
    metrics: list[str] = []
    """Metric names as in the job config (empty: mean reward and pass rate)."""
    breakdown_keys: list[str] = ["difficulty", "category"]
    """Task metadata keys the metrics are broken down by."""
    min_coverage: float | None = None
    judge: JudgeConfig = JudgeConfig()


class AnalysisResult(BaseModel):
    """What `analyze_job` returns (it never raises)."""

    job_dir: Path
    out_dir: Path
    ok: bool
    """False when any step failed (the other steps still ran)."""
    files: list[str]
    """Files written, relative to `out_dir`."""
    errors: list[str]
    notes: list[str]


@dataclass
class Trial:
    """One trial's final try with what analysis derived from it (no trajectory content is kept)."""

    t: TryRecord
    traj: TrajectoryStats | None
    resolved: bool
    scored: bool
    cause: str | None = None
    failing: list[str] = field(default_factory=list)

    def feature(self, name: str) -> float | None:
        t, traj = self.t, self.traj
        usage = t.usage
        values: dict[str, Any] = {
            "model_calls": traj.n_calls if traj else usage.get("n_calls"),
            "tool_calls": traj.n_tool_calls if traj else None,
            "input_tokens": traj.input_tokens if traj else usage.get("input_tokens"),
            "output_tokens": traj.output_tokens if traj else usage.get("output_tokens"),
            "model_errors": traj.n_errors if traj else usage.get("n_errors"),
            "cost_usd": traj.cost_usd if traj else usage.get("cost_usd"),
            "duration_sec": t.duration_sec,
            "agent_sec": t.phases.get("agent"),
        }
        value = values.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(items: dict[str, list[str]], total: int) -> dict[str, r.Count]:
    ordered = sorted(items.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {k: r.Count(count=len(v), fraction=len(v) / total if total else 0.0, items=v) for k, v in ordered}


def _tier(n_scored: int, n_passed: int) -> str:
    if not n_scored:
        return "unscored"
    rate = n_passed / n_scored
    return "easy" if rate == 1 else "medium" if rate >= 0.5 else "hard" if rate > 0 else "unsolved"


def _default_artifacts(job_dir: Path) -> Path:
    return job_dir.parent.parent if job_dir.parent.name == "jobs" else job_dir.parent


def _default_gold_base(files: JobFiles) -> str:
    dataset = (files.config or {}).get("dataset") or {}
    name = dataset.get("name") if isinstance(dataset, dict) else None
    if not name and isinstance(dataset, dict) and dataset.get("path"):
        name = Path(str(dataset["path"])).name
    return "".join(c if c.isalnum() or c in "._@-" else "_" for c in str(name or files.job_name))


def _cache_root(config: AnalysisConfig, files: JobFiles) -> Path | None:
    if config.cache_dir is not None:
        return config.cache_dir
    dataset = (files.config or {}).get("dataset") or {}
    if isinstance(dataset, dict) and dataset.get("cache_dir"):
        return Path(str(dataset["cache_dir"])).expanduser()
    from evalkit.adapters.harbor.config import default_cache_dir

    return default_cache_dir()


def write_jsonl_atomic(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for line in lines:
                f.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Run:
    """One analysis: the state the steps share, and the guard that keeps a failing step from stopping the rest."""

    def __init__(self, job_dir: Path, config: AnalysisConfig) -> None:
        self.job_dir = job_dir
        self.config = config
        self.out = job_dir / ANALYSIS_DIR
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.files: list[str] = []
        self.now = utcnow().isoformat()
        self.job: JobFiles | None = None
        self.trials: list[Trial] = []
        self.unreadable: list[Unreadable] = []
        self.meta: dict[str, dict[str, Any]] = {}
        self.sources: dict[str, tuple[dict[str, Any], Path | None]] = {}
        self.gold: Gold | None = None
        self.n_attempts: dict[str, int] = defaultdict(int)

    def step(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # non-fatal by design: log it, name it in the reports, go on
            log.warning("analysis step %s failed: %s", name, exc)
            log.debug("%s", traceback.format_exc())
            self.errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")

    def header(self) -> dict[str, Any]:
        return {"job_name": self.job.job_name if self.job else self.job_dir.name, "generated_at": self.now,
                "notes": list(self.notes)}

    def write(self, rel: str, model: BaseModel) -> None:
        write_json_atomic(self.out / rel, model)
        os.chmod(self.out / rel, 0o644)
        self.files.append(rel)

    # ------------------------------------------------------------------------------------------ reading

    def read(self) -> None:
        self.job = read_job_files(self.job_dir)
        self.notes += self.job.problems
        tries: list[TryRecord] = []
        for item in iter_tries(self.job_dir):
            if isinstance(item, Unreadable):
                self.unreadable.append(item)
            else:
                tries.append(item)
        if self.unreadable:
            self.notes.append(f"{len(self.unreadable)} try director(y/ies) with an unreadable result.json were left out")
        traj_problems: list[str] = []
        for t in final_tries(tries):
            traj = summarize_trajectory(t.dir / TRAJECTORY, traj_problems)
            scored = t.error_kind not in ("infrastructure", "cancelled")
            trial = Trial(t=t, traj=traj, resolved=passed(t.reward), scored=scored)
            if not trial.resolved:
                trial.failing = failing_tests(t.dir)
                trial.cause = primary_cause(t, traj, trial.failing)
            self.trials.append(trial)
            self.n_attempts[t.task] += 1
            self.sources.setdefault(t.task, (t.task_source, None))
        self.notes += traj_problems[:50]
        if len(traj_problems) > 50:
            self.notes.append(f"… and {len(traj_problems) - 50} more unreadable trajectory lines")

    def load_tasks(self) -> None:
        cache = _cache_root(self.config, self.job)
        for task, (source, _) in list(self.sources.items()):
            task_dir = task_dir_of(source, cache)
            self.sources[task] = (source, task_dir)
            metadata = read_task_toml(task_dir).get("metadata") if task_dir else None
            self.meta[task] = metadata if isinstance(metadata, dict) else {}

    def load_gold(self) -> None:
        artifacts = self.config.artifacts_dir or _default_artifacts(self.job_dir)
        base = self.config.gold_base or _default_gold_base(self.job)
        self.gold = ensure_gold(artifacts / "datasets" / base, base, self.sources, build=self.config.build_gold)
        if self.gold.note:
            self.notes.append(self.gold.note)
        for task, instance in self.gold.instances.items():
            if not self.meta.get(task):
                self.meta[task] = dict(instance.metadata)

    # ------------------------------------------------------------------------------------------ reports

    def failed_report(self) -> None:
        failed = [tr for tr in self.trials if not tr.resolved]
        causes: dict[str, list[str]] = defaultdict(list)
        kinds: dict[str, list[str]] = defaultdict(list)
        axes: dict[str, dict[str, list[str]]] = {"phase": defaultdict(list), "error_type": defaultdict(list),
                                                 "failing_test": defaultdict(list)}
        rows = []
        for tr in failed:
            t, cause = tr.t, tr.cause or "unknown"
            kind = cause.split("/")[0]
            causes[cause].append(t.trial)
            kinds[kind].append(t.trial)
            phase = t.error_phase or ("verifier" if kind == "model" else "unknown")
            axes["phase"][phase].append(t.trial)
            axes["error_type"][t.error_type or "none"].append(t.trial)
            for test in tr.failing:
                axes["failing_test"][test].append(t.trial)
            rows.append(r.FailedTrial(
                trial=t.trial, try_dir=t.dir.name, task=t.task, attempt=t.attempt, cause=cause, kind=kind,
                phase=phase, error_type=t.error_type, error_message=t.error_message, reward=t.reward,
                failing_tests=tr.failing, last_model_error=tr.traj.last_error if tr.traj else None))
        judge = None
        if self.config.judge.enabled and rows:
            chosen = rows[: self.config.judge.max_trials]
            judge = judge_failures(self.config.judge, {row.trial: self._judge_context(row) for row in chosen})
            self.notes.append(f"LLM judge {judge.model}: {judge.n_judged} trial(s) judged, "
                              f"{judge.input_tokens} input + {judge.output_tokens} output tokens")
        report = r.FailedReport(
            **self.header(), n_trials=len(self.trials), n_failed=len(failed), n_unreadable=len(self.unreadable),
            causes=_count(causes, len(failed)), cause_descriptions={c: CAUSES.get(c, c) for c in causes},
            by_kind=_count(kinds, len(failed)),
            axes={name: _count(values, len(failed)) for name, values in axes.items()},
            trials=rows, unreadable=[{"dir": u.dir.name, "reason": u.reason} for u in self.unreadable], judge=judge)
        self.write("report_failed.json", report)

    def _judge_context(self, row: r.FailedTrial) -> dict[str, Any]:
        trial = next(tr for tr in self.trials if tr.t.trial == row.trial)
        last_messages: list[str] = []
        for call in read_trajectory(trial.t.dir / TRAJECTORY):
            text = orjson.dumps(call.get("response"))[:1500].decode("utf-8", "replace")
            last_messages = (last_messages + [text])[-3:]
        stdout = trial.t.dir / "evaluation" / "test-stdout.txt"
        tail = ""
        if stdout.is_file() and not stdout.is_symlink():
            with stdout.open("rb") as f:
                f.seek(max(0, f.seek(0, 2) - 2000))
                tail = f.read().decode("utf-8", "replace")
        instance = self.gold.instances.get(row.task) if self.gold else None
        return {"task": row.task, "instruction": instance.instruction_excerpt if instance else None,
                "error": row.error_type, "error_message": row.error_message, "reward": row.reward,
                "failing_tests": row.failing_tests, "last_model_answers": last_messages, "test_output_tail": tail}

    def resolved_report(self) -> None:
        resolved = [tr for tr in self.trials if tr.resolved]
        names = {"turns": "model_calls", "tool_calls": "tool_calls", "input_tokens": "input_tokens",
                 "output_tokens": "output_tokens", "cost_usd": "cost_usd", "duration_sec": "duration_sec",
                 "agent_sec": "agent_sec"}
        report = r.ResolvedReport(
            **self.header(), n_trials=len(self.trials), n_resolved=len(resolved),
            distributions={label: describe([tr.feature(f) for tr in resolved]) for label, f in names.items()},
            resolved_with_errors=[tr.t.trial for tr in resolved if tr.t.error_type],
            trials=[tr.t.trial for tr in resolved])
        self.write("report_resolved.json", report)

    def _task_rows(self) -> list[r.TaskRow]:
        by_task: dict[str, list[Trial]] = defaultdict(list)
        for tr in self.trials:
            by_task[tr.t.task].append(tr)
        rows = []
        for task, trials in by_task.items():
            scored = [tr for tr in trials if tr.scored]
            n_passed = sum(tr.resolved for tr in scored)
            instance = self.gold.instances.get(task) if self.gold else None
            rows.append(r.TaskRow(
                task=task, n_attempts=len(trials), n_scored=len(scored), n_passed=n_passed,
                pass_rate=n_passed / len(scored) if scored else None,
                mean_reward=statistics.fmean([tr.t.reward or 0.0 for tr in scored]) if scored else None,
                tier=_tier(len(scored), n_passed), metadata=self.meta.get(task, {}),
                tags=instance.tags.model_dump() if instance else {}))
        return rows

    def task_report(self) -> None:
        rows = self._task_rows()
        self.task_rows = rows
        tiers: dict[str, list[str]] = {name: [] for name in TIERS}
        for row in rows:
            tiers[row.tier].append(row.task)
        groups: dict[str, dict[str, list[r.TaskRow]]] = defaultdict(lambda: defaultdict(list))
        for row in rows:
            for key in BREAKDOWN_METADATA:
                value = row.metadata.get(key)
                for item in value if isinstance(value, list) else [value] if value not in (None, "") else []:
                    groups[key][str(item)].append(row)
            for key, value in row.tags.items():
                for item in value if isinstance(value, list) else [value] if value else []:
                    groups[f"tag:{key}"][str(item)].append(row)
        breakdowns = {key: {value: _group(members) for value, members in sorted(values.items())}
                      for key, values in groups.items()}
        metrics = None
        try:
            metrics = compute_metrics(
                [TrialRecord(task=tr.t.task, attempt=tr.t.attempt, rewards=tr.t.rewards,
                             error_kind=_metric_kind(tr.t.error_kind))
                 for tr in self.trials],
                metrics=self.config.metrics, task_metadata=self.meta, breakdown_keys=self.config.breakdown_keys,
                error_policy=self.config.error_policy, min_coverage=self.config.min_coverage)
        except Exception as exc:  # a k larger than the job's attempts must not cost the rest of the report
            self.notes.append(f"metrics skipped: {exc}")
        gold = self.gold
        report = r.TaskAnalysisReport(
            **self.header(), tier_definitions=TIERS, tiers=_count({k: v for k, v in tiers.items() if v}, len(rows)),
            tasks=rows, breakdowns=breakdowns, metrics=metrics,
            gold=r.GoldStatus(available=bool(gold and gold.available), base=gold.base if gold else "",
                              dir=str(gold.dir) if gold else "", n_instances=len(gold.instances) if gold else 0,
                              built=gold.built if gold else [], missing=gold.missing if gold else {},
                              note=gold.note if gold else "gold dataset step failed"))
        self.write("report_task_analysis.json", report)

    def score_comparison(self) -> None:
        scored = [tr for tr in self.trials if tr.scored]
        yes = [tr for tr in scored if tr.resolved]
        no = [tr for tr in scored if not tr.resolved]
        features = []
        for name in FEATURES:
            a = [tr.feature(name) for tr in yes]
            b = [tr.feature(name) for tr in no]
            da, db = describe(a), describe(b)
            features.append(r.FeatureComparison(
                feature=name, resolved=da, unresolved=db,
                mean_difference=None if da.mean is None or db.mean is None else da.mean - db.mean,
                median_difference=None if da.median is None or db.median is None else da.median - db.median,
                cliffs_delta=cliffs_delta([v for v in a if v is not None], [v for v in b if v is not None])))
        report = r.ScoreComparison(
            **self.header(), n_resolved=len(yes), n_unresolved=len(no),
            effect_size="Cliff's delta: P(resolved > unresolved) - P(resolved < unresolved), rank-based, "
            "robust to the heavy tails of token counts and durations", features=features)
        self.write("traj_analysis/score_comparison.json", report)

    def instances(self) -> None:
        rows = {row.task: row for row in getattr(self, "task_rows", None) or self._task_rows()}
        by_task: dict[str, list[Trial]] = defaultdict(list)
        for tr in self.trials:
            by_task[tr.t.task].append(tr)
        lines, table = [], []
        for task, trials in by_task.items():
            row = rows[task]
            features: dict[str, float | None] = {}
            for name in FEATURES:
                values = [v for tr in trials if (v := tr.feature(name)) is not None]
                features[name] = statistics.fmean(values) if values else None
            instance = self.gold.instances.get(task) if self.gold else None
            if instance:
                features.update(instruction_chars=instance.instruction_chars, n_test_files=len(instance.test_files),
                                n_solution_files=len(instance.solution_files))
            table.append((row.mean_reward, features))
            lines.append({
                "task": task, "tier": row.tier, "pass_rate": row.pass_rate, "mean_reward": row.mean_reward,
                "n_attempts": row.n_attempts, "n_scored": row.n_scored, "metadata": row.metadata, "tags": row.tags,
                "features": features, "gold": instance is not None,
                "trials": [{"trial": tr.t.trial, "try_dir": tr.t.dir.name, "reward": tr.t.reward,
                            "rewards": tr.t.rewards, "resolved": tr.resolved, "scored": tr.scored, "cause": tr.cause,
                            "error_type": tr.t.error_type, "failing_tests": tr.failing,
                            **{name: tr.feature(name) for name in FEATURES}} for tr in trials],
            })
        descriptions = {**FEATURES, **(GOLD_FEATURES if self.gold and self.gold.available else {})}
        summary = r.InstanceSummary(
            **self.header(), n_instances=len(lines), target="mean reward of the instance's scored trials",
            target_distribution=describe([m for m, _ in table]),
            features={name: describe([f.get(name) for _, f in table]) for name in descriptions},
            feature_descriptions=descriptions)
        correlations = []
        for name in descriptions:
            pairs = [(f[name], m) for m, f in table if f.get(name) is not None and m is not None]
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            correlations.append(r.Correlation(feature=name, n=len(pairs), pearson=pearson(xs, ys), spearman=spearman(xs, ys)))
        self.write("instance_analysis/summary.json", summary)
        self.write("instance_analysis/correlations.json",
                   r.Correlations(**self.header(), target=summary.target, correlations=correlations))
        write_jsonl_atomic(self.out / "instances.jsonl", lines)
        self.files.append("instances.jsonl")

    def config_snapshot(self) -> None:
        data = {"schema_version": r.ANALYSIS_SCHEMA_VERSION, "job_dir": str(self.job_dir), "generated_at": self.now,
                **self.config.model_dump(mode="json")}
        data["artifacts_dir"] = str(self.config.artifacts_dir or _default_artifacts(self.job_dir))
        data["gold_base"] = self.gold.base if self.gold else self.config.gold_base
        text = "# evalkit analysis config: `evalkit analyze JOB_DIR --config this-file` repeats this analysis\n"
        path = self.out / "analysis_config.yaml"
        fd, tmp = tempfile.mkstemp(prefix=".analysis_config.", dir=self.out)
        with os.fdopen(fd, "w") as f:
            f.write(text + yaml.safe_dump(data, sort_keys=False))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        self.files.append("analysis_config.yaml")


    def status(self) -> None:
        self.files.append("status.json")
        status = AnalysisResult(job_dir=self.job_dir, out_dir=self.out, ok=not self.errors, files=self.files,
                                errors=self.errors, notes=self.notes)
        write_json_atomic(self.out / "status.json", {"schema_version": r.ANALYSIS_SCHEMA_VERSION,
                                                     "generated_at": self.now, **status.model_dump(mode="json")})


def _metric_kind(kind: str | None) -> str | None:
    """A kind metrics know; one written by a newer engine counts as infrastructure (never scored as a failure)."""
    return kind if kind in (None, "agent", "verifier", "task", "cancelled") else "infrastructure"


def _group(rows: list[r.TaskRow]) -> r.GroupStats:
    scored = [row for row in rows if row.n_scored]
    n_scored = sum(row.n_scored for row in scored)
    tiers: dict[str, int] = defaultdict(int)
    for row in rows:
        tiers[row.tier] += 1
    return r.GroupStats(
        n_tasks=len(rows), n_trials=sum(row.n_attempts for row in rows),
        pass_rate=sum(row.n_passed for row in scored) / n_scored if n_scored else None,
        mean_reward=statistics.fmean([row.mean_reward for row in scored if row.mean_reward is not None]) if scored else None,
        tiers=dict(tiers))


def load_analysis_config(path: Path) -> AnalysisConfig:
    """An `analysis_config.yaml` (as written by analysis, or by hand); job-specific keys are ignored."""
    from evalkit.errors import ConfigError

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read analysis config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping")
    known = set(AnalysisConfig.model_fields)
    try:
        return AnalysisConfig.model_validate({k: v for k, v in data.items() if k in known})
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def analyze_job(job_dir: Path | str, config: AnalysisConfig | None = None) -> AnalysisResult:
    """Write `<job>/analysis/*`; never raises (failures are logged and listed in the result and the reports)."""
    job_dir = Path(job_dir)
    config = config or AnalysisConfig()
    run = _Run(job_dir, config)
    try:
        if not job_dir.is_dir():
            raise FileNotFoundError(f"job directory not found: {job_dir}")
        run.out.mkdir(exist_ok=True)
        run.read()
        run.step("tasks", run.load_tasks)
        run.step("gold", run.load_gold)
        run.step("report_failed", run.failed_report)
        run.step("report_resolved", run.resolved_report)
        run.step("report_task_analysis", run.task_report)
        run.step("score_comparison", run.score_comparison)
        run.step("instance_analysis", run.instances)
        run.step("analysis_config", run.config_snapshot)
        run.step("status", run.status)
    except Exception as exc:  # reading the job itself failed: nothing else can run
        log.warning("analysis of %s failed: %s", job_dir, exc)
        run.errors.append(f"read: {type(exc).__name__}: {str(exc)[:300]}")
    return AnalysisResult(job_dir=job_dir, out_dir=run.out, ok=not run.errors, files=run.files,
                          errors=run.errors, notes=run.notes)
