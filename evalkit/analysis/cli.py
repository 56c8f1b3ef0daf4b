"""`evalkit analyze | compare | export | status`: the analysis commands (files only, no Docker)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from evalkit.errors import ConfigError

EXIT_OK, EXIT_FAILED = 0, 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="explain a job: failure causes, task tiers, trajectories (writes <job>/analysis/)")
    p.add_argument("job_dir", type=Path)
    p.add_argument("--config", type=Path, help="an analysis_config.yaml (e.g. one a previous analysis wrote)")
    p.add_argument("--artifacts-dir", type=Path, help="artifacts root holding datasets/ (default: from the job path)")
    p.add_argument("--gold-base", help="gold dataset directory under artifacts/datasets/")
    p.add_argument("--judge-url", help="turn the LLM judge on: an OpenAI-compatible base URL")
    p.add_argument("--judge-model", help="the judge's model name")
    p.add_argument("--judge-key-env", help="environment variable holding the judge's API key")
    p.set_defaults(handler=analyze_command)

    p = subparsers.add_parser("compare", help="paired comparison of two jobs on their common tasks (is B better than A?)")
    p.add_argument("job_a", type=Path)
    p.add_argument("job_b", type=Path)
    p.add_argument("--k", type=int, default=1, help="k of the pass@k comparison (default 1)")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.set_defaults(handler=compare_command)

    p = subparsers.add_parser("export", help="write a job's trajectories as ATIF or OpenTelemetry GenAI spans")
    p.add_argument("job_dir", type=Path)
    p.add_argument("--format", choices=["atif", "otel"], default="atif")
    p.add_argument("--out", type=Path, help="output directory (default <job>/export/<format>/)")
    p.set_defaults(handler=export_command)

    p = subparsers.add_parser("status", help="running jobs, last archived runs, disk use")
    p.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=status_command)


def _error(exc: ConfigError) -> int:
    print(f"evalkit: error: {exc}", file=sys.stderr)
    return exc.exit_code


def analyze_command(args: argparse.Namespace) -> int:
    from evalkit.analysis.analyze import AnalysisConfig, analyze_job, load_analysis_config

    try:
        if not args.job_dir.is_dir():
            raise ConfigError(f"job directory not found: {args.job_dir}")
        config = load_analysis_config(args.config) if args.config else AnalysisConfig()
    except ConfigError as exc:
        return _error(exc)
    updates = {k: v for k, v in (("artifacts_dir", args.artifacts_dir), ("gold_base", args.gold_base)) if v is not None}
    if args.judge_url:
        judge = {"enabled": True, "base_url": args.judge_url, **({"model": args.judge_model} if args.judge_model else {}),
                 **({"api_key_env": args.judge_key_env} if args.judge_key_env else {})}
        updates["judge"] = config.judge.model_copy(update=judge)
    result = analyze_job(args.job_dir, config.model_copy(update=updates))
    print(f"analysis of {args.job_dir}: {len(result.files)} file(s) in {result.out_dir}")
    for note in result.notes:
        print(f"  note: {note}")
    for error in result.errors:
        print(f"  error: {error}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def compare_command(args: argparse.Namespace) -> int:
    from evalkit.analysis.compare import compare_jobs, render_table
    from evalkit.results import write_json_atomic

    try:
        comparison = compare_jobs(args.job_a, args.job_b, k=args.k, n_bootstrap=args.bootstrap, seed=args.seed)
    except ConfigError as exc:
        return _error(exc)
    if args.out:
        write_json_atomic(args.out, comparison)
    if args.json:
        print(orjson.dumps(comparison.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_table(comparison))
    return EXIT_OK


def export_command(args: argparse.Namespace) -> int:
    from evalkit.analysis.export import export_job

    try:
        result = export_job(args.job_dir, args.format, args.out)
    except ConfigError as exc:
        return _error(exc)
    print(f"wrote {len(result.written)} {args.format} file(s) to {result.out_dir}; skipped {len(result.skipped)}")
    for problem in result.problems:
        print(f"  note: {problem}")
    return EXIT_OK


def status_command(args: argparse.Namespace) -> int:
    from evalkit.analysis.archives import render_status, status_snapshot

    report = status_snapshot(args.artifacts_dir)
    print(orjson.dumps(report.model_dump(), option=orjson.OPT_INDENT_2).decode() if args.json else render_status(report))
    return EXIT_OK
