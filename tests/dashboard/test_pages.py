"""The dashboard in headless Chromium over jobs made by real runs: every page renders what the files say,
charts have data, navigation works; a screenshot of each page is saved under the pytest tmp dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

from evalkit.analysis.compare import compare_jobs
from tests.dashboard.conftest import Jobs, Tab, Viewer, chart_points, write_training_store


def test_jobs_list_shows_every_job_with_its_state_scores_and_the_archived_runs(jobs: Jobs, tab: Tab) -> None:
    page = tab.open("/")
    rows = page.locator("[data-table=jobs] tbody tr")
    assert rows.count() == 4
    oracle = rows.filter(has_text=jobs.oracle.name)
    cells = oracle.locator("td").all_inner_texts()
    assert cells[2:5] == ["evalkit-smoke@1.0", "", "oracle"]
    assert cells[6:8] == ["finished", "22 / 22"]
    assert cells[8].startswith("1.000 [") and cells[9].startswith("pass@2 1.000") and cells[10] == "100.0%"
    scripted = rows.filter(has_text=jobs.scripted.name).locator("td").all_inner_texts()
    assert scripted[3] == "smollm2" and scripted[8].startswith("0.500") and scripted[11] == "analysed"
    archived = page.locator("[data-table=archived] tbody tr")
    assert archived.count() == 1 and archived.locator("a").inner_text() == jobs.oracle.name
    tab.shot("jobs")
    page.fill("[data-table=jobs] input[type=search]", "nop")
    assert rows.count() == 1 and jobs.nop.name in rows.inner_text()
    page.fill("[data-table=jobs] input[type=search]", "")
    page.locator("[data-table=jobs] th", has_text="mean reward").click()  # ascending: nop first
    assert jobs.nop.name in rows.first.inner_text()
    page.locator("[data-table=jobs] th", has_text="mean reward").click()
    assert jobs.oracle.name in rows.first.inner_text()
    page.select_option("[data-table=jobs] select", "interrupted")
    assert page.locator("[data-table=jobs] tbody").inner_text() == "nothing to show"


def test_job_page_renders_the_task_table_charts_and_analysis_reports(jobs: Jobs, tab: Tab) -> None:
    page = tab.open(f"/job/{jobs.oracle.name}")
    rows = page.locator("[data-table=tasks] tbody tr")
    assert rows.count() == 11
    hello = rows.filter(has_text="hello-file").locator("td").all_inner_texts()
    assert hello[1].split() == ["1.00", "1.00"] and hello[2] == "1.000"
    for chart in ("reward-distribution", "pass-at-k", "phase-times", "concurrency"):
        assert chart_points(page, chart) > 0, chart
    assert page.locator("[data-chart-empty=error-causes]").inner_text().endswith("no errors")
    # pass@k over k: one point per k with its band
    assert page.evaluate("""() => window.Chart.getChart(document.querySelector('canvas[data-chart="pass-at-k"]'))
                            .data.datasets.map((d) => d.data.map((p) => p.x))""") == [[1, 2]] * 3
    assert "Not analysed yet" in page.locator("section", has_text="Analysis").inner_text()

    page = tab.open(f"/job/{jobs.scripted.name}")
    page.wait_for_selector("[data-report='report_failed.json'] table")
    assert chart_points(page, "error-causes") == 1  # the analysis's primary causes
    failed = page.locator("[data-report='report_failed.json']").inner_text()
    assert "model/wrong_answer" in failed and "4 of 8 trials not resolved" in failed
    assert "easy" in page.locator("[data-report='report_task_analysis.json']").inner_text()
    tab.shot("job")
    rows = page.locator("[data-table=tasks] tbody tr")
    page.select_option("[data-table=tasks] select", "failing")
    assert [r.split("\t")[0] for r in rows.all_inner_texts()] == ["improves", "xss-task"]
    page.fill("[data-table=tasks] input[type=search]", "xss")
    assert rows.count() == 1


def test_trial_page_shows_the_trajectory_call_by_call_in_order(jobs: Jobs, tab: Tab) -> None:
    page = tab.open(f"/trial/{jobs.scripted.name}/multi-step__0")
    calls = page.locator("article.call")
    assert calls.count() == 4
    assert [c.get_attribute("data-call") for c in calls.all()] == ["0", "1", "2", "3"]
    assert "Task multi-step." in calls.nth(0).inner_text()
    assert [calls.nth(i).locator(".role-toolcall pre").inner_text() for i in range(3)] == [
        '{"cmd":"echo step 1"}', '{"cmd":"echo step 2"}', '{"cmd":"echo done > /tmp/out.txt"}']
    assert calls.nth(1).locator(".role-tool pre").inner_text() == "step 1\n"  # the tool result fed back
    assert calls.nth(3).locator(".role-answer pre").inner_text() == "All steps done."
    assert "hosted_vllm/smollm2@http://127.0.0.1:" in calls.nth(0).locator(".replica").inner_text()
    assert "200" in calls.nth(0).locator(".status").inner_text()
    page.wait_for_selector(".traj-stats dl")
    assert "calls\n4" in page.locator(".traj-stats").inner_text()
    assert '"reward": 1' in page.locator("[data-verdict]").inner_text()
    assert [r.split("\t")[0] for r in page.locator("section", has_text="Timings").locator("tbody tr").all_inner_texts()] == [
        "environment", "agent_setup", "agent", "verifier"]
    tab.shot("trial")

    page = tab.open(f"/trial/{jobs.scripted.name}/anthropic-step__0")  # the Anthropic protocol, translated by LiteLLM
    first = page.locator("article.call").first
    assert "anthropic_messages" in first.locator(".call-head").inner_text()
    assert first.locator(".role-system pre").inner_text() == "You are a careful agent."
    assert page.locator("article.call").nth(1).locator(".role-tool pre").inner_text() == "step 1\n"


def test_a_long_trajectory_is_paginated(jobs: Jobs, tab: Tab, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(jobs.artifacts, artifacts, symlinks=True)
    path = artifacts / "jobs" / jobs.scripted.name / "multi-step__0" / "agent" / "litellm-trajectory.jsonl"
    calls = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    with path.open("wb") as f:
        for seq in range(120):
            f.write(orjson.dumps(calls[seq % len(calls)] | {"seq": seq}) + b"\n")
    viewer = Viewer(artifacts)
    try:
        tab.base = viewer.url
        page = tab.open(f"/trial/{jobs.scripted.name}/multi-step__0")
        assert page.locator("article.call").count() == 50
        assert "calls 0–49" in page.locator("nav.pager").first.inner_text()
        page.locator("nav.pager").first.get_by_text("next ›").click()
        tab.ready()
        page.wait_for_selector("article.call[data-call='50']")
        assert page.locator("article.call").first.get_attribute("data-call") == "50"
        page.locator("nav.pager").first.get_by_text("next ›").click()
        tab.ready()
        page.wait_for_selector("article.call[data-call='119']")
        assert page.locator("article.call").count() == 20
        assert page.locator("nav.pager").first.locator("a", has_text="next").count() == 0
        page.wait_for_selector(".traj-stats dl")
        assert "calls\n120" in page.locator(".traj-stats").inner_text()
    finally:
        viewer.stop()


def test_compare_shows_the_paired_statistics_and_trajectories_side_by_side(jobs: Jobs, tab: Tab) -> None:
    expected = compare_jobs(jobs.scripted, jobs.better)
    page = tab.open(f"/compare?a={jobs.scripted.name}&b={jobs.better.name}&k=1")
    assert page.locator(".verdict").inner_text() == expected.verdict
    estimate = page.locator("section", has_text="Verdict").locator("tbody tr").first.locator("td").all_inner_texts()
    m = expected.mean_reward
    assert estimate == ["mean_reward", f"{m.a:.3f}", f"{m.b:.3f}", f"{m.difference:.3f}", f"[{m.ci_low:.3f}, {m.ci_high:.3f}]", f"{m.mde:.3f}"]
    assert f"A only {expected.mcnemar.a_only}, B only {expected.mcnemar.b_only}" in page.locator("section", has_text="Verdict").inner_text()
    assert chart_points(page, "task-differences") == 4
    improves = page.locator("[data-table=compare-tasks] tbody tr", has_text="improves").locator("td").all_inner_texts()
    assert improves[1:4] == ["0.000", "1.000", "1.000"]
    page.locator("[data-table=compare-tasks] a", has_text="improves").click()
    tab.ready()
    rows = page.locator("table[data-aligned] > tbody > tr")
    rows.first.wait_for()
    assert rows.count() == 5
    first = rows.first.locator("> td").all()
    assert first[0].inner_text() == "0"
    assert "echo wrong" in first[1].inner_text() and "echo done" in first[2].inner_text()
    assert "solve it" in first[2].inner_text() and "solve it" not in first[1].inner_text()
    tab.shot("compare")


def test_navigation_between_pages(jobs: Jobs, tab: Tab) -> None:
    page = tab.open("/")
    page.get_by_role("link", name=jobs.scripted.name).click()
    tab.ready()
    assert page.locator("h1").inner_text().startswith(f"Jobs / {jobs.scripted.name}")
    page.locator("[data-table=tasks] tr", has_text="multi-step").locator("a.chip").first.click()
    tab.ready()
    assert page.locator("h1").inner_text().startswith(f"Jobs / {jobs.scripted.name} / multi-step__0")
    page.locator("h1").get_by_role("link", name=jobs.scripted.name).click()
    tab.ready()
    assert page.locator("[data-table=tasks]").is_visible()
    page.go_back()
    tab.ready()
    assert "multi-step__0" in page.locator("h1").inner_text()
    page.locator("header nav").get_by_role("link", name="Jobs").click()
    tab.ready()
    page.get_by_label(f"select {jobs.oracle.name}").check()
    page.get_by_label(f"select {jobs.nop.name}").check()
    page.get_by_role("button", name="Compare the two selected").click()
    tab.ready()
    assert page.locator(".verdict").inner_text() == compare_jobs(jobs.oracle, jobs.nop).verdict
    page.locator("header nav").get_by_role("link", name="Training runs").click()
    tab.ready()
    assert "no training runs" in page.locator("main").inner_text()
    tab.shot("training-empty")
    page.goto(f"{tab.base}#/nowhere")
    tab.ready()
    assert page.locator("main").inner_text() == "no such page: nowhere"


def test_training_runs_show_metrics_over_steps_with_intervals(jobs: Jobs, tab: Tab, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(jobs.artifacts, artifacts, symlinks=True)
    write_training_store(artifacts, "run-7", artifacts / "jobs" / jobs.scripted.name)
    viewer = Viewer(artifacts)
    try:
        tab.base = viewer.url
        page = tab.open("/training")
        assert page.get_by_role("link", name="run-7").is_visible()
        page.get_by_role("link", name="run-7").click()
        tab.ready()
        band = page.evaluate("""() => window.Chart.getChart(document.querySelector('canvas[data-chart="training-mean_reward"]'))
                                .data.datasets.map((d) => d.data.map((p) => [p.x, Math.round(p.y * 100) / 100]))""")
        assert band == [[[100, 0.2], [200, 0.3], [300, 0.4]], [[100, 0.4], [200, 0.5], [300, 0.6]], [[100, 0.3], [200, 0.4], [300, 0.5]]]
        assert chart_points(page, "training-pass_rate") == 9  # computed from the rollouts, with intervals
        rows = page.locator("[data-table=evals] tbody tr")
        assert rows.count() == 3
        rows.nth(1).get_by_role("link", name="200").click()
        tab.ready()
        rollouts = page.locator("[data-table=rollouts] tbody tr")
        assert rollouts.count() == 8
        tab.shot("training")
        rollouts.first.get_by_role("link", name="trajectory").click()
        tab.ready()
        assert page.locator("article.call").count() > 0
    finally:
        viewer.stop()
