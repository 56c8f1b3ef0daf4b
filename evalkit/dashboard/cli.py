"""`evalkit view [ARTIFACTS_DIR] [--host H] [--port N]`: serve the dashboard until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("view", help="browse jobs, analysis reports and trajectories in a browser (read-only)")
    p.add_argument("artifacts_dir", nargs="?", type=Path, default=Path("artifacts"), help="default: ./artifacts")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="listen port (default 8765; 0 picks a free one)")
    p.set_defaults(handler=view_command)


def view_command(args: argparse.Namespace) -> int:
    from evalkit.cli import run_main
    from evalkit.dashboard.server import serve
    from evalkit.errors import ConfigError

    if args.artifacts_dir.exists() and not args.artifacts_dir.is_dir():
        print(f"evalkit: error: artifacts directory is not a directory: {args.artifacts_dir}", file=sys.stderr)
        return ConfigError.exit_code
    if not 0 <= args.port <= 65535:
        print(f"evalkit: error: --port: must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return ConfigError.exit_code

    def started(url: str) -> None:
        print(f"evalkit view: {args.artifacts_dir.resolve()} at {url} (Ctrl-C to stop)", flush=True)

    async def main() -> int:
        try:
            await serve(args.artifacts_dir.resolve(), args.host, args.port, started=started)
        except asyncio.CancelledError:  # SIGINT/SIGTERM: the normal way to stop
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except OSError as exc:
            print(f"evalkit: error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
            return 3
        return 0

    return run_main(main())
