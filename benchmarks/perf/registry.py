"""How fast the real Harbor registry (43 datasets, 12,833 tasks) loads, resolves and lists.

Figures, each the median of --repeat runs in this process:
- baseline: `json.load` of the file with the standard library (the floor any loader pays)
- load: `read_registry` (orjson-speed parse + pydantic validation of every dataset and task)
- resolve_all: every dataset by name@version, selected (include/exclude/names/n_tasks) and planned for
  fetching (every git path checked), as `resolve_tasks` does before touching the network
- list: rendering the `evalkit datasets list` table
Plus cli_list: wall time of `python -m evalkit datasets list` in a new process (interpreter start and
imports included). Ratios are against the baseline measured in the same run, so machine speed cancels out.

    .venv/bin/python benchmarks/perf/registry.py [--registry ../shared/data/harbor-registry.json] [--repeat 7]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from evalkit.adapters.harbor import DatasetConfig
from evalkit.adapters.harbor.cache import fetch_plan
from evalkit.adapters.harbor.cli import _list
from evalkit.adapters.harbor.registry import Registry, read_registry
from evalkit.adapters.harbor.resolve import select

REPO = Path(__file__).resolve().parents[2]
TARGET_LOAD_AND_RESOLVE_SEC = 0.3


def resolve_all(registry: Registry) -> int:
    tasks = 0
    for dataset in registry.datasets:
        config = DatasetConfig(name=dataset.ref)
        selected = select(registry.dataset(*config.dataset_version()).tasks, config)
        fetch_plan([task for task in selected if task.git_url])
        tasks += len(selected)
    return tasks


def median_sec(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=REPO.parent / "shared" / "data" / "harbor-registry.json")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    path = args.registry.resolve()

    def load_json() -> None:
        with path.open("rb") as f:
            json.load(f)

    def list_table() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            asyncio.run(_list(str(path)))

    registry = read_registry(path)
    assert resolve_all(registry) == sum(len(d.tasks) for d in registry.datasets)
    baseline = median_sec(load_json, args.repeat)
    load = median_sec(lambda: read_registry(path), args.repeat)
    resolve = median_sec(lambda: resolve_all(registry), args.repeat)
    listing = median_sec(list_table, args.repeat)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "evalkit", "datasets", "list", "--registry", str(path)],
                   cwd=REPO, check=True, capture_output=True)
    cli = time.perf_counter() - start

    figures = {
        "registry": str(path),
        "datasets": len(registry.datasets),
        "tasks": sum(len(d.tasks) for d in registry.datasets),
        "repeat": args.repeat,
        "baseline_json_load_sec": round(baseline, 4),
        "load_sec": round(load, 4),
        "resolve_all_sec": round(resolve, 4),
        "load_and_resolve_sec": round(load + resolve, 4),
        "list_sec": round(listing, 4),
        "cli_list_wall_sec": round(cli, 3),
        "ratio_load_to_baseline": round(load / baseline, 2),
        "ratio_load_and_resolve_to_baseline": round((load + resolve) / baseline, 2),
        "target_load_and_resolve_sec": TARGET_LOAD_AND_RESOLVE_SEC,
        "meets_target": load + resolve < TARGET_LOAD_AND_RESOLVE_SEC,
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
