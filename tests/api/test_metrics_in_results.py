"""Metrics in every job: `results.json` carries the MetricsReport, the CLI prints it, and a job whose coverage
is below `min_coverage` is marked unreliable, said in red, and exits 4."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalkit.config import config_from_dict
from evalkit.errors import ConfigError
from evalkit.metrics import compute_metrics
from tests.conftest import REPO, job_containers, read_json, unique, write_config, write_task

FLAKY = "tests.api.agents:FlakySetupAgent"


def three_tasks(root: Path) -> Path:
    """Three tasks; the image of `c` makes the agent's setup fail (an infrastructure fault)."""
    for name in ("a", "b"):
        write_task(root, name, task_toml='[metadata]\ndifficulty = "easy"\n[agent]\ntimeout_sec = 60\n[verifier]\ntimeout_sec = 60\n')
    write_task(root, "c", task_toml='[metadata]\ndifficulty = "hard"\n[agent]\ntimeout_sec = 60\n[verifier]\ntimeout_sec = 60\n',
               dockerfile="FROM debian:bookworm-slim\nRUN touch /setup-fails\nWORKDIR /app\n")
    return root


def run_colored(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evalkit", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "200"})


async def test_infrastructure_fault_on_a_third_of_trials_is_unreliable_with_its_own_exit_code(tmp_path: Path):
    name = unique("coverage")
    config = write_config(tmp_path / "cfg.yaml", {
        "job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_concurrent": 3,
        "dataset": {"path": str(three_tasks(tmp_path / "tasks"))},
        "agent": {"name": FLAKY}, "environment": {"network_mode": "none"},
        "retry": {"max_retries": 0}, "after_run": {"analyze": False, "archive": False},
        "metrics": ["avg", "pass_rate"], "breakdown_keys": ["difficulty"], "min_coverage": 0.9,
    })
    result = run_colored("run", str(config))
    assert result.returncode == 4, result.stderr
    assert ("\x1b[1;31mUNRELIABLE METRICS: coverage 0.67 is below min_coverage 0.9 (1 infrastructure error(s), "
            "0 cancelled, of 3 trials)") in result.stderr
    metrics = read_json(tmp_path / "jobs" / name / "results.json")["metrics"]
    assert metrics["coverage"] == pytest.approx(2 / 3)
    assert (metrics["reliable"], metrics["min_coverage"], metrics["n_infrastructure_errors"], metrics["n_scored"]) == (False, 0.9, 1, 2)
    assert metrics["error_policy"] == "zero" and metrics["denominator"].startswith("scored trials")
    values = {m["name"]: m for m in metrics["metrics"]}
    # the infrastructure failure is not a zero: both scored trials passed
    assert (values["mean_reward"]["value"], values["pass_rate"]["value"], values["pass_rate"]["n_tasks"]) == (1.0, 1.0, 2)
    assert values["pass_rate"]["ci_high"] == 1.0 and 0 < values["pass_rate"]["ci_low"] < 1  # Clopper-Pearson over 2 tasks
    hard = {m["name"]: m for m in metrics["breakdowns"]["difficulty"]["hard"]}
    assert (hard["pass_rate"]["value"], hard["pass_rate"]["n_tasks_excluded"]) == (None, 1)
    assert {m["name"]: m["value"] for m in metrics["breakdowns"]["difficulty"]["easy"]} == {"mean_reward": 1.0, "pass_rate": 1.0}
    assert "coverage" in result.stderr and "0.67 (2 of 3 trials scored)" in result.stderr
    assert await job_containers(name) == []


async def test_full_coverage_exits_0_and_a_lower_threshold_is_reliable(tmp_path: Path):
    name = unique("covered")
    tasks = tmp_path / "tasks"
    write_task(tasks, "a")
    write_task(tasks, "b", solve="true")  # wrong solution: a verdict of 0, scored
    config = write_config(tmp_path / "cfg.yaml", {
        "job_name": name, "jobs_dir": str(tmp_path / "jobs"), "n_attempts": 2, "dataset": {"path": str(tasks)},
        "environment": {"network_mode": "none"}, "after_run": {"analyze": False, "archive": False},
        "metrics": ["pass@2", "pass^2", "avg"], "min_coverage": 0.9,
    })
    result = run_colored("run", str(config))
    assert result.returncode == 0, result.stderr
    assert "UNRELIABLE" not in result.stderr
    metrics = read_json(tmp_path / "jobs" / name / "results.json")["metrics"]
    assert (metrics["coverage"], metrics["reliable"]) == (1.0, True)
    values = {m["name"]: m for m in metrics["metrics"]}
    assert [values[k]["value"] for k in ("pass@2", "pass^2", "mean_reward")] == [0.5, 0.5, 0.5]
    for m in values.values():  # two tasks scoring 1 and 0: a t interval would be [-5.9, 6.9]; bounded to [0, 1]
        assert (m["ci_low"], m["ci_high"]) == (0.0, 1.0)


@pytest.mark.parametrize(("extra", "message"), [
    ({"metrics": ["pass@2", "best"]}, "cfg.yaml:3: metrics: Value error, metrics[1]: unknown metric 'best'; expected "
     "avg, mean_reward, pass_rate, pass@K or pass^K (K ≥ 1)"),
    ({"metrics": ["pass^3"]}, "cfg.yaml:3: metrics: Value error, pass^3 needs n_attempts ≥ 3 (n_attempts is 2)"),
    ({"min_coverage": 1.5}, "cfg.yaml:3: min_coverage: Input should be less than or equal to 1 (got 1.5)"),
    ({"error_policy": "ignore"}, "cfg.yaml:3: error_policy: Input should be 'zero' or 'exclude' (got 'ignore')"),
])
def test_metric_config_mistakes_name_the_key(tmp_path: Path, extra: dict, message: str):
    from evalkit.config import load_config

    path = write_config(tmp_path / "cfg.yaml", {"job_name": "x", "n_attempts": 2, **extra, "dataset": {"path": "tasks"}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"invalid config:\n  {tmp_path / message}"
    assert not (tmp_path / "artifacts").exists()


def test_bounded_intervals_only_where_the_bound_is_known():
    two = compute_metrics([{"task": "a", "rewards": {"reward": 0.0}}, {"task": "b", "rewards": {"reward": 1.0}}])
    for m in two.metrics:
        assert (m.value, m.ci_low, m.ci_high) == (0.5, 0.0, 1.0)
    scaled = compute_metrics([{"task": t, "rewards": {"reward": r}} for t, r in (("a", 0.0), ("b", 2.0), ("c", 1.0))],
                             metrics=["avg"])
    m = scaled.metrics[0]
    assert m.ci_low < 0 and m.ci_high > 2  # rewards up to 2: no known bound, the t interval as it is


def test_config_defaults_keep_metrics_default():
    config = config_from_dict({"job_name": "x", "dataset": {"path": "t"}})
    assert (config.metrics, config.breakdown_keys, config.error_policy, config.min_coverage) == ([], [], "zero", None)
