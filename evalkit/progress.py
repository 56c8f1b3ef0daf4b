"""What a person sees while a job runs: a live progress bar, then a summary table."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from evalkit.after_run import after_run, session_log
from evalkit.cli import EXIT_OK, EXIT_TRIAL_ERRORS, EXIT_UNRELIABLE
from evalkit.config import JobConfig
from evalkit.job import Job
from evalkit.job import Progress as JobProgress
from evalkit.metrics import MetricsReport, MetricValue
from evalkit.results import JobSummary, TrialResult


SESSION_LOG = "session.log"
"""evalkit's log records of every `evalkit run` of the job, appended; archived with each run."""


async def run_with_progress(config: JobConfig, *, quiet: bool = False, retry_errors: list[str] | None = None) -> int:
    """Run a job with a progress bar on stderr; returns the CLI exit code: 0, 1 if any trial errored, 4 if
    the metrics are unreliable (said in red whatever --quiet says)."""
    console = Console(stderr=True)
    job = Job(config, retry_errors=retry_errors)
    await job.prepare()
    with session_log(config.job_dir / SESSION_LOG) as session:
        try:
            code = await _run(job, config, console, quiet)
        finally:
            job.close()
        for line in await after_run(config, session):
            if not quiet:
                console.print(line, highlight=False, soft_wrap=True)
    return code


async def _run(job: Job, config: JobConfig, console: Console, quiet: bool) -> int:
    if job.task_errors:  # up front, whatever --quiet says: these tasks will not run at all
        console.print(f"[yellow]{len(job.task_errors)} task(s) cannot run and are recorded as errors:")
        for name, problem in job.task_errors.items():
            console.print(f"  {escape(name)}: {escape(problem)}", highlight=False, soft_wrap=True)
    if job.task_warnings:  # once per job; every try's result names them too
        console.print(f"[yellow]{len(job.task_warnings)} task(s) run with something evalkit ignores:")
        for name, warnings in job.task_warnings.items():
            for warning in warnings:
                console.print(f"  {escape(name)}: {escape(warning)}", highlight=False, soft_wrap=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("reward {task.fields[reward]}  errors {task.fields[errors]}{task.fields[nodes]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    counts = job.progress
    bar_id = bar.add_task(config.job_name, total=counts.total, completed=counts.done, nodes="", **_fields(counts))

    def on_progress(_: TrialResult, progress: JobProgress) -> None:
        bar.update(bar_id, completed=progress.done, nodes=_nodes(job), **_fields(progress))

    job.on_progress = on_progress
    if counts.done and not quiet:
        console.print(f"resuming {config.job_name}: {counts.done}/{counts.total} trials already finished")
    if job.retry_errors is not None and not quiet:
        console.print(f"running again {sum(1 for t in job.trials if t.reopened_at)} trial(s) that ended in an error")
    with bar:
        result = await job.run()
    if not quiet:
        console.print(summary_table(result.summary))
        console.print(f"results: {result.job_dir / 'results.json'}")
    metrics = result.summary.metrics
    if metrics is not None and not metrics.reliable:
        console.print(f"[bold red]{escape(unreliable_line(metrics))}", highlight=False, soft_wrap=True)
        return EXIT_UNRELIABLE
    return EXIT_TRIAL_ERRORS if result.summary.n_errored else EXIT_OK


def unreliable_line(metrics: MetricsReport) -> str:
    coverage = "-" if metrics.coverage is None else f"{metrics.coverage:.2f}"
    why = (f"coverage {coverage} is below min_coverage {metrics.min_coverage:g}" if metrics.n_scored
           and metrics.min_coverage is not None else "no trial could be scored")
    return (f"UNRELIABLE METRICS: {why} ({metrics.n_infrastructure_errors} infrastructure error(s), "
            f"{metrics.n_cancelled} cancelled, of {metrics.n_trials} trials)")


def _fields(progress: JobProgress) -> dict[str, str]:
    mean = progress.mean_reward
    return {"reward": "-" if mean is None else f"{mean:.3f}", "errors": str(progress.errored)}


def _nodes(job: Job) -> str:
    """A cluster backend's trials in flight per node (`environment.backend: ray`), lost nodes marked."""
    stats = job.node_stats()
    if not stats:
        return ""
    return "  in flight " + " ".join(
        f"{node[:8]}:{'lost' if n.lost else n.in_flight}{f' ({n.failures} failed)' if n.failures else ''}" for node, n in stats.items())


def summary_table(summary: JobSummary) -> Table:
    table = Table(title=f"{summary.job_name}: {summary.status}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("trials", f"{summary.n_finished}/{summary.n_trials} finished ({summary.n_tries} tries)")
    if summary.metrics is not None:
        for m in summary.metrics.metrics:
            table.add_row(m.name if m.reward_key == "reward" else f"{m.name} ({m.reward_key})", _metric_cell(m))
        coverage = summary.metrics.coverage
        table.add_row("coverage", "-" if coverage is None else
                      f"{coverage:.2f} ({summary.metrics.n_scored} of {summary.metrics.n_trials} trials scored)")
    for error_type, count in sorted(summary.errors.items()):
        table.add_row(f"[red]{error_type}", str(count))
    for node, placed in (summary.nodes or {}).items():
        images = f", images built {placed.images.built}, pulled {placed.images.pulled}, reused {placed.images.reused}"
        failures = f", {placed.failures} infrastructure failure(s)" if placed.failures else ""
        table.add_row(f"node {node}", f"{placed.tries} tries{' (lost)' if placed.lost else ''}{failures}{images}")
    for phase, stats in summary.phases.items():
        table.add_row(f"{phase} time", f"mean {stats.mean_sec:.2f}s  p95 {stats.p95_sec:.2f}s  max {stats.max_sec:.2f}s")
    return table


def _metric_cell(m: MetricValue) -> str:
    if m.value is None:
        return "-"
    interval = f"  95% CI [{m.ci_low:.3f}, {m.ci_high:.3f}]" if m.ci_low is not None and m.ci_high is not None else ""
    return f"{m.value:.3f}{interval}  ({m.n_tasks} tasks)"
