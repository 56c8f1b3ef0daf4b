"""`evalkit …`: a thin shell over the API. Exit codes: 0 finished, 1 finished with errored trials,
2 bad config or input, 3 infrastructure unavailable, 4 finished but the metrics are unreliable (coverage
below `min_coverage`, or nothing scored), 130 interrupted."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from evalkit.errors import ConfigError, EvalkitError

EXIT_OK, EXIT_TRIAL_ERRORS, EXIT_UNRELIABLE, EXIT_INTERRUPTED = 0, 1, 4, 130


def run_main(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine on uvloop (when available) with SIGINT/SIGTERM cancelling it cleanly."""
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        loop = runner.get_loop()
        main_task = loop.create_task(coro)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, main_task.cancel)
        try:
            return loop.run_until_complete(main_task)
        except asyncio.CancelledError:
            print("evalkit: interrupted; running trials were stopped and their containers removed", file=sys.stderr)
            return EXIT_INTERRUPTED
        except EvalkitError as exc:
            print(f"evalkit: error: {exc}", file=sys.stderr)
            return exc.exit_code


def _add_run_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run (or resume) a job from a config file")
    p.add_argument("config", help="path to the job's config.yaml")
    p.add_argument("--job-name", help="override job_name (a new name starts a new job)")
    p.add_argument("--n-concurrent", type=_concurrency, help="tries in flight at once, or `auto`")
    p.add_argument("--n-tasks", type=int, help="run only the first N selected tasks")
    p.add_argument("--n-attempts", type=int, help="attempts per task")
    p.add_argument("--agent", help="agent name (oracle, nop, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    p.add_argument(
        "--retry-errors", nargs="*", metavar="TYPE",
        help="run again the trials whose final try ended in an error of these types or kinds "
             "(e.g. ImagePullError, infrastructure; none named: any error), keeping every earlier try",
    )
    p.set_defaults(handler=_run_command)


def _concurrency(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def retry_error_names(names: list[str]) -> list[str]:
    """`--retry-errors` arguments checked against the error types and kinds evalkit records."""
    from evalkit.errors import ERROR_KINDS, TRIAL_ERROR_TYPES

    unknown = [n for n in names if n not in TRIAL_ERROR_TYPES and n not in ERROR_KINDS]
    if unknown:
        raise ConfigError(
            f"--retry-errors: unknown error type or kind {', '.join(map(repr, unknown))}; "
            f"kinds: {', '.join(ERROR_KINDS)}; types: {', '.join(TRIAL_ERROR_TYPES)}"
        )
    return names


def _run_command(args: argparse.Namespace) -> int:
    from evalkit.config import load_config
    from evalkit.progress import run_with_progress

    overrides = {
        key: value
        for key, value in {
            "job_name": args.job_name,
            "n_concurrent": args.n_concurrent,
            "dataset.n_tasks": args.n_tasks,
            "n_attempts": args.n_attempts,
            "agent.name": args.agent,
        }.items()
        if value is not None
    }
    try:
        config = load_config(args.config, overrides)
        retry_errors = None if args.retry_errors is None else retry_error_names(args.retry_errors)
    except EvalkitError as exc:
        print(f"evalkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return run_main(run_with_progress(config, quiet=args.quiet, retry_errors=retry_errors))


def _add_clean_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "clean",
        help="remove leftover containers and runtime outputs (jobs/, litellm/, logs/) of jobs that are not running; "
        "archives are never touched",
    )
    p.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"), help="artifacts root (default: artifacts)")
    p.add_argument("--repos", action="store_true", help="also remove the task cache (fetched git tasks)")
    p.add_argument("--containers-only", action="store_true", help="remove leftover containers only; keep every file")
    p.add_argument("--job", help="only this job's leftover containers (implies --containers-only)")
    p.add_argument("--docker-host", help="Docker Engine API address (default: DOCKER_HOST or the local socket)")
    p.set_defaults(handler=_clean_command)


def _clean_command(args: argparse.Namespace) -> int:
    from evalkit.analysis.archives import clean_outputs
    from evalkit.environments.docker import remove_idle_containers

    async def clean() -> int:
        removed, running = await remove_idle_containers(args.docker_host, args.job)
        print(f"removed {removed} container(s)" + (f" of job {args.job}" if args.job else ""))
        if running:
            print(f"kept the containers of running job(s): {', '.join(running)}")
        if not (args.containers_only or args.job):
            report = await asyncio.to_thread(clean_outputs, args.artifacts_dir, args.repos)
            print(f"removed {len(report.removed)} path(s) under {args.artifacts_dir}" + (" and the task cache" if args.repos else ""))
            for path, why in report.skipped.items():
                print(f"kept {path}: {why}")
        return EXIT_OK

    return run_main(clean())


def build_parser() -> argparse.ArgumentParser:
    from evalkit.adapters.harbor.cli import add_parser as add_datasets_parser
    from evalkit.analysis.cli import add_parser as add_analysis_parser
    from evalkit.dashboard.cli import add_parser as add_view_parser
    from evalkit.gateway.cli import add_parser as add_gateway_parser
    from evalkit.loadtest.cli import add_parser as add_loadtest_parser
    from evalkit.runtimes import add_parser as add_runtime_parser
    from evalkit.serving import add_parser as add_serve_parser

    parser = argparse.ArgumentParser(prog="evalkit", description="Evaluate LLM agents on containerized benchmarks.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    _add_clean_parser(subparsers)
    add_datasets_parser(subparsers)
    add_gateway_parser(subparsers)
    add_analysis_parser(subparsers)
    add_runtime_parser(subparsers)
    add_view_parser(subparsers)
    add_serve_parser(subparsers)
    add_loadtest_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)
