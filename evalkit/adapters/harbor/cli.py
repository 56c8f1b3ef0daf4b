"""`evalkit datasets list | show`: what a registry offers, read from the registry alone (nothing fetched)."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from evalkit.adapters.harbor.config import default_cache_dir, split_name
from evalkit.adapters.harbor.registry import Registry, default_version, load_registry
from evalkit.cli import run_main


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("datasets", help="list a Harbor registry's datasets, or show one")
    commands = parser.add_subparsers(dest="datasets_command", required=True)
    registry_help = "registry.json path or http(s) URL (default: the bundled benchmarks/registry.json)"
    listing = commands.add_parser("list", help="every dataset: name, versions, task count, description")
    listing.add_argument("--registry", help=registry_help)
    listing.set_defaults(handler=list_command)
    show = commands.add_parser("show", help="one dataset's tasks, sources and commits")
    show.add_argument("dataset", metavar="NAME[@VERSION]")
    show.add_argument("--registry", help=registry_help)
    show.set_defaults(handler=show_command)


def list_command(args: argparse.Namespace) -> int:
    return run_main(_list(args.registry))


def show_command(args: argparse.Namespace) -> int:
    return run_main(_show(args.registry, args.dataset))


async def _load(location: str | None) -> Registry:
    return await load_registry(location, base_dir=Path.cwd(), cache_dir=default_cache_dir())


async def _list(location: str | None) -> int:
    registry = await _load(location)
    rows = []
    for name in sorted(registry.names()):
        versions = registry.versions(name)
        rows.append((
            name,
            ", ".join(versions),
            ", ".join(str(len(dataset.tasks)) for dataset in versions.values()),
            versions[default_version(versions)].description,
        ))
    print(table(("NAME", "VERSIONS", "TASKS", "DESCRIPTION"), rows))
    return 0


async def _show(location: str | None, ref: str) -> int:
    registry = await _load(location)
    name, version = split_name(ref)
    dataset = registry.dataset(name, version)
    versions = registry.versions(name)
    default = " (default)" if dataset.version == default_version(versions) else ""
    print(f"{dataset.ref}{default}  versions: {', '.join(versions)}  registry: {registry.location}")
    if dataset.description:
        print(dataset.description)
    if dataset.metrics:
        print("metrics:", ", ".join(metric.get("type", "?") for metric in dataset.metrics))
    sources = Counter((task.git_url or "local", task.commit or "-") for task in dataset.tasks)
    print(f"\n{len(dataset.tasks)} tasks from:")
    print(table(("SOURCE", "COMMIT", "TASKS"), [(url, commit, str(n)) for (url, commit), n in sources.items()]))
    several = len({url for url, _ in sources}) > 1
    headers = ("NAME", "SOURCE", "COMMIT", "PATH") if several else ("NAME", "COMMIT", "PATH")
    rows = [
        (task.task_name, *([task.git_url or "local"] if several else []),
         task.commit or "-", task.path)
        for task in dataset.tasks
    ]
    print()
    print(table(headers, rows))
    return 0


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns; on a terminal, the last column is cut to the width of the screen."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers) - 1)]
    limit = shutil.get_terminal_size().columns - sum(widths) - 2 * len(widths) if sys.stdout.isatty() else None
    lines = []
    for row in (headers, *rows):
        last = " ".join(row[-1].split())
        if limit is not None and len(last) > limit:
            last = last[: max(limit - 1, 0)] + "…"
        lines.append("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), last]).rstrip())
    return "\n".join(lines)

