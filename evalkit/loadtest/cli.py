"""`evalkit loadtest [CONFIG] [flags]`: flags override the YAML file's keys (or make a config on their own).

Exit codes: 0 every request answered, 1 finished with failed requests, 2 bad config or input, 3 an address
does not accept connections or the gateway could not start, 130 interrupted (the finished steps are written).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evalkit.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "loadtest", help="drive OpenAI/Anthropic endpoints with synthetic or replayed agent traffic, sweep the load"
    )
    p.add_argument("config", nargs="?", type=Path, help="a load-test YAML file (keys as in evalkit.loadtest.config)")
    p.add_argument("--endpoint", action="append", dest="endpoints", metavar="URL",
                   help="a replica's base URL, e.g. http://127.0.0.1:8000/v1 (repeat for several)")
    p.add_argument("--via-gateway", action="store_true",
                   help="start an evalkit gateway in front of the endpoints (as hosted_vllm deployments)")
    p.add_argument("--model", help="model name to send")
    p.add_argument("--api-key-env", help="environment variable holding the endpoints' key")
    p.add_argument("--protocol", choices=["openai_chat", "anthropic_messages"], help="synthetic requests' protocol")
    p.add_argument("--prompt-tokens", type=int, help="synthetic prompt length (tokens, about 4 characters each)")
    p.add_argument("--output-tokens", type=int, help="synthetic max_tokens")
    p.add_argument("--replay", action="append", type=Path, metavar="JOB_DIR",
                   help="replay the trajectories of this job (or trial directory, or file); repeat for several")
    p.add_argument("--think-time-scale", type=float, help="multiply recorded think-times (0: none)")
    p.add_argument("--arrival", choices=["concurrency", "rate", "poisson"])
    p.add_argument("--loads", help="the sweep, comma-separated: concurrencies, or requests/s for rate/poisson")
    p.add_argument("--max-requests", type=int, help="requests per step at most")
    p.add_argument("--duration", type=float, help="seconds per step at most")
    p.add_argument("--request-timeout", type=float, help="seconds per request at most")
    p.add_argument("--out", type=Path, help="output directory (default artifacts/loadtest)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    p.set_defaults(handler=loadtest_command)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    loads = None
    if args.loads is not None:
        try:
            loads = [float(v) for v in args.loads.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--loads: expected numbers separated by commas, got {args.loads!r}") from None
    flags = {
        "model": args.model,
        "api_key_env": args.api_key_env,
        "arrival": args.arrival,
        "loads": loads,
        "max_requests": args.max_requests,
        "duration_sec": args.duration,
        "request_timeout_sec": args.request_timeout,
        "output_dir": args.out and str(args.out.resolve()),
        "synthetic.protocol": args.protocol,
        "synthetic.prompt_tokens": args.prompt_tokens,
        "synthetic.output_tokens": args.output_tokens,
        "replay.jobs": args.replay and [str(p.resolve()) for p in args.replay],
        "replay.think_time_scale": args.think_time_scale,
    }
    if args.endpoints and args.via_gateway:
        if args.model is None:
            raise ConfigError("--via-gateway: give --model (the name the gateway serves and the endpoints know)")
        flags["llm_api"] = {
            "model": args.model,
            "deployments": [{"model": f"hosted_vllm/{args.model}", "api_base": url} for url in args.endpoints],
        }
    elif args.endpoints:
        flags["endpoints"] = args.endpoints
    elif args.via_gateway:
        raise ConfigError("--via-gateway: give the upstreams with --endpoint")
    out = {k: v for k, v in flags.items() if v is not None}
    if args.config is None and not any(k.startswith(("synthetic.", "replay.")) for k in out):
        out["synthetic"] = {}  # flags alone and no workload named: synthetic requests of the default shape
    return out


def loadtest_command(args: argparse.Namespace) -> int:
    from evalkit.cli import run_main
    from evalkit.loadtest.config import load_loadtest_config

    try:
        config = load_loadtest_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"evalkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return run_main(run_with_progress(config, quiet=args.quiet))


async def run_with_progress(config: Any, *, quiet: bool = False) -> int:
    """The sweep with a progress bar per step on stderr, then a summary table; returns the exit code."""
    from evalkit.cli import EXIT_INTERRUPTED
    from evalkit.loadtest.runner import REPORT_NAME, run_loadtest

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("errors {task.fields[errors]}"), TimeElapsedColumn(),
        console=console, disable=quiet,
    )
    tasks: dict[int, Any] = {}
    errors: dict[int, int] = {}
    unit = "trials" if config.replay else ("in flight" if config.arrival == "concurrency" else "req/s")

    def on_step(index: int, load: float) -> None:
        errors[index] = 0
        tasks[index] = bar.add_task(f"load {load:g} {unit}", total=config.max_requests, errors=0)

    def on_outcome(index: int, outcome: Any) -> None:
        errors[index] += outcome.error is not None
        bar.update(tasks[index], advance=1, errors=errors[index])

    try:
        with bar:
            report = await run_loadtest(config, on_outcome=on_outcome, on_step=on_step)
    except asyncio.CancelledError:  # Ctrl-C: run_loadtest stopped everything and wrote the finished steps
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        print(f"evalkit: interrupted; finished steps are in {config.output_dir / REPORT_NAME}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not quiet:
        console.print(summary_table(report))
        for reason in report.saturation.reasons:
            console.print(f"[yellow]over-saturation:[/] {reason}")
        console.print(f"report: {config.output_dir / REPORT_NAME}" + (f", plot: {config.output_dir / report.plot}"
                                                                        if report.plot else ""))
    return 1 if any(step.errors for step in report.steps) else 0


def summary_table(report: Any) -> Table:
    table = Table(title=f"evalkit loadtest: {report.workload}, {report.target}", title_justify="left")
    for column in ("load", "req/s", "out tok/s", "TTFT p50/p99 ms", "ITL p50/p99 ms", "E2E p50/p99 ms", "errors",
                   "prefix cache"):
        table.add_column(column, justify="right")

    def pair(p: Any) -> str:
        return f"{p.p50:.1f} / {p.p99:.1f}" if p else "-"

    for s in report.steps:
        errors = ", ".join(f"{k} {v}" for k, v in s.errors.items()) or "0"
        cache = "-" if s.prefix_cache_hit_rate is None else f"{s.prefix_cache_hit_rate:.0%}"
        table.add_row(f"{s.load:g}", f"{s.requests_per_sec:.1f}", f"{s.output_tokens_per_sec:.0f}", pair(s.ttft_ms),
                      pair(s.itl_ms), pair(s.e2e_ms), errors, cache)
    return table
