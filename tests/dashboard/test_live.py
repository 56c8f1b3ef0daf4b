"""Live updates in the browser: a job run by `evalkit run` in another process is shown as running, and its page
follows the trials as they finish, without a reload, until it is finished."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from evalkit.dashboard.index import runner_active
from tests.conftest import HOST_NETWORK, popen_cli, write_config, write_task
from tests.dashboard.conftest import RUN, Tab, Viewer

N_TASKS = 4


def test_a_running_job_s_page_updates_itself_until_the_job_finishes(tab: Tab, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    tasks = tmp_path / "tasks"
    for i in range(N_TASKS):
        write_task(tasks, f"slow-{i}", solve="sleep 2; echo done > /tmp/out.txt")
    name = f"dashboard-live-{RUN}"
    config = write_config(tmp_path / "config.yaml", {
        "job_name": name, **HOST_NETWORK, "jobs_dir": str(artifacts / "jobs"), "n_concurrent": 1,
        "dataset": {"path": str(tasks)}, "agent": {"name": "oracle"}})
    viewer = Viewer(artifacts)
    run = popen_cli("run", str(config), "--quiet")
    try:
        job = artifacts / "jobs" / name
        deadline = time.monotonic() + 120
        while not runner_active(job, _status(job)):
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.1)
        tab.base = viewer.url
        page = tab.open(f"/job/{name}")
        assert page.locator("h1 .badge").inner_text() == "running"
        assert page.locator("#status").inner_text() == "live"
        page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded
        page.locator("h1 .badge", has_text="finished").wait_for(timeout=180_000)
        assert page.evaluate("window.__sameDocument") is True
        assert f"{N_TASKS} / {N_TASKS}" in page.locator("section", has=page.get_by_role("heading", name="Summary", exact=True)).inner_text()
        assert page.locator("[data-table=tasks] tbody tr").count() == N_TASKS
        assert page.locator("#status").inner_text() == ""
        tab.shot("job-live-finished")
        assert run.wait(timeout=60) == 0
    finally:
        if run.poll() is None:
            run.terminate()
            run.wait(timeout=60)
        for stream in (run.stdout, run.stderr):
            stream and stream.close()
        viewer.stop()


def _status(job: Path) -> str | None:
    try:
        return orjson.loads((job / "results.json").read_bytes()).get("status")
    except (OSError, ValueError):
        return None
