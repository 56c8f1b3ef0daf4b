"""`evalkit gateway CONFIG`: the job's gateway alone, for trying an agent or an upstream by hand.

It serves the config's `llm_api` until SIGINT/SIGTERM and issues one ad-hoc key (or accepts `--key`) with its
own Unix socket, whose calls are logged like a trial's, in
`artifacts/litellm/<job>/adhoc-<UTC time>/litellm-trajectory.jsonl` (a fresh file per run: trajectories are
never appended to). An `llm_api` with `serve:` (Mode B) starts its model servers first, as `evalkit run` does,
and stops them after the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from evalkit.cli import run_main
from evalkit.config import load_config
from evalkit.errors import ConfigError
from evalkit.gateway.config import LLMApiConfig
from evalkit.gateway.gateway import Gateway
from evalkit.serving import managed_llm_api


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "gateway", help="serve a job config's llm_api as an OpenAI/Anthropic endpoint until Ctrl-C"
    )
    parser.add_argument("config", type=Path, help="the job's config.yaml (its llm_api block is served)")
    parser.add_argument("--host", help="listen address (default: llm_api.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: llm_api.port; 0 picks a free one)")
    parser.add_argument("--key", help="accept this key instead of a fresh random one (handy for a fixed client setup)")
    parser.set_defaults(handler=gateway_command)


def gateway_command(args: argparse.Namespace) -> int:
    try:
        job = load_config(args.config)
        if job.llm_api is None:
            raise ConfigError(f"{args.config}: no `llm_api` block to serve")
    except ConfigError as exc:
        print(f"evalkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    config = job.llm_api.model_copy(update=overrides)
    return run_main(serve_until_stopped(config, job.job_name, job.artifacts_dir, args.key, job.base_dir))


async def serve_until_stopped(
    config: LLMApiConfig, job_name: str, artifacts_dir: Path, key: str | None, base_dir: Path | None = None
) -> int:
    model_server_logs = artifacts_dir / "litellm" / job_name / "model-server"  # where `evalkit run` puts them
    async with (
        managed_llm_api(config, log_dir=model_server_logs, base_dir=base_dir) as served,
        Gateway.serve(served, job_name=job_name, artifacts_dir=artifacts_dir) as gateway,
    ):
        run = time.strftime("adhoc-%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
        trajectory = gateway.job_dir / run / "litellm-trajectory.jsonl"
        access = await gateway.open_trial("adhoc", trajectory, api_key=key)
        print(f"evalkit gateway for job {job_name}: {gateway.url} (model {access.model})", flush=True)
        print(f"  OPENAI_BASE_URL={access.base_url}", flush=True)
        print(f"  ANTHROPIC_BASE_URL={access.anthropic_base_url}", flush=True)
        print(f"  API key: {access.api_key}", flush=True)
        print(f"  Unix socket (same key): {access.socket_path}", flush=True)
        print(f"  detailed /health: Authorization: Bearer {gateway.admin_key}", flush=True)
        print(f"  calls are logged to {trajectory}; Ctrl-C to stop", flush=True)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:  # SIGINT/SIGTERM cancel the command (run_main): the normal way to stop
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        usage = await gateway.close_trial(access.api_key)
    tokens = f"{usage.input_tokens} in / {usage.output_tokens} out tokens"
    print(f"stopped: {usage.n_calls} calls, {usage.n_errors} errors, {tokens}", flush=True)
    return 0
