"""`evalkit datasets list | show` on the real registry and on the bundled one."""

from __future__ import annotations

import os
import re


from tests.adapters.conftest import REAL_REGISTRY
from tests.conftest import run_cli



def columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_list_shows_every_dataset_with_versions_task_counts_and_description():
    result = run_cli("datasets", "list", "--registry", str(REAL_REGISTRY))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert columns(header) == ["NAME", "VERSIONS", "TASKS", "DESCRIPTION"]
    assert len(rows) == 41  # 43 datasets; swe-lancer-diamond's three versions share a line
    table = {columns(row)[0]: columns(row)[1:] for row in rows}
    assert table["swe-lancer-diamond"][:2] == ["all, ic, manager", "463, 198, 265"]
    assert table["swe-lancer-diamond"][2].endswith("Only the manager tasks.")  # the default version's
    assert table["seta-env"] == ["1.0", "1376", "CAMEL SETA Environment for RL training"]


def test_show_lists_tasks_sources_and_commits():
    result = run_cli("datasets", "show", "swe-lancer-diamond@ic", "--registry", str(REAL_REGISTRY))
    assert result.returncode == 0, result.stderr
    head, sources, tasks = result.stdout.split("\n\n")
    assert head.splitlines()[0] == f"swe-lancer-diamond@ic  versions: all, ic, manager  registry: {os.path.abspath(REAL_REGISTRY)}"
    assert [columns(line) for line in sources.splitlines()] == [
        ["198 tasks from:"],
        ["SOURCE", "COMMIT", "TASKS"],
        ["https://github.com/laude-institute/harbor-datasets.git", "HEAD", "198"],
    ]
    header, *rows = tasks.splitlines()
    assert columns(header) == ["NAME", "COMMIT", "PATH"] and len(rows) == 198
    assert all(columns(row)[1:] == ["HEAD", "datasets/swe-lancer"] for row in rows)

    seta = run_cli("datasets", "show", "seta-env", "--registry", str(REAL_REGISTRY)).stdout
    assert seta.startswith("seta-env@1.0 (default)  versions: 1.0")
    assert columns(seta.splitlines()[-1])[1] == "b186880"


def test_unknown_names_and_versions_exit_2_with_suggestions():
    result = run_cli("datasets", "show", "swebench-verifed", "--registry", str(REAL_REGISTRY))
    assert (result.returncode, result.stderr.strip()) == (2, (
        f"evalkit: error: unknown dataset 'swebench-verifed' in registry {os.path.abspath(REAL_REGISTRY)}; "
        "did you mean: swebench-verified, swtbench-verified, swebenchpro?"
    ))
    result = run_cli("datasets", "show", "terminal-bench@1.0", "--registry", str(REAL_REGISTRY))
    assert (result.returncode, result.stderr.strip()) == (2, (
        f"evalkit: error: dataset 'terminal-bench' has no version '1.0' in registry {os.path.abspath(REAL_REGISTRY)}; "
        "versions: 2.0"
    ))


def test_the_bundled_registry_is_the_default():
    result = run_cli("datasets", "list")
    assert result.returncode == 0, result.stderr
    assert any(columns(row)[:2] == ["evalkit-smoke", "1.0"] for row in result.stdout.splitlines())
