"""Untrusted input: XSS payloads in a real trajectory render as text and run nothing; paths that would leave
the artifacts directory (`..`, encoded, double-encoded, absolute, symlinks, FIFOs) are refused with a reason."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.dashboard.conftest import XSS_IMG, XSS_TEXT, Jobs, Served, Tab

REFUSED_DOTS = "path refused: '.', '..' and empty components are not allowed"


def test_xss_payloads_in_a_trajectory_render_as_text_and_run_nothing(jobs: Jobs, tab: Tab) -> None:
    page = tab.page
    page.add_init_script("""window.__violations = 0;
        document.addEventListener('securitypolicyviolation', () => { window.__violations += 1; });""")
    tab.open(f"/trial/{jobs.scripted.name}/xss-task__0")
    page.wait_for_selector("article.call")
    tab.shot("xss-trial")
    # The payloads are on the page as text: in the model's answer, the tool call, the tool result and the test output.
    assert page.get_by_text(XSS_TEXT, exact=False).first.is_visible()
    texts = page.locator("pre.text").all_inner_texts()
    assert sum(XSS_TEXT in t for t in texts) >= 3
    assert sum(XSS_IMG.split(" onerror")[0] in t for t in texts) >= 4
    # …and nothing ran: no dialog, no console marker, no element made from the data, no CSP violation.
    assert tab.dialogs == []
    assert not any("XSS-FIRED" in m for m in tab.console)
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 2  # the page's own: chart.umd.min.js and app.js
    assert page.evaluate("window.__violations") == 0
    # The job page's search shows the payload in a snippet, as text too.
    tab.open(f"/job/{jobs.scripted.name}")
    page.fill("input[name=q]", "onerror=")
    page.click("form.search button")
    page.wait_for_selector("ol.matches li")
    assert "onerror=" in page.locator("ol.matches").inner_text()
    assert page.locator("img").count() == 0 and tab.dialogs == [] and not any("XSS-FIRED" in m for m in tab.console)


@pytest.fixture
def hostile(jobs: Jobs, tmp_path: Path) -> tuple[Path, Path, str]:
    """A copy of the artifacts with links out to a secret, and a FIFO."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(jobs.artifacts, artifacts, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP-SECRET\n")
    job = artifacts / "jobs" / jobs.scripted.name
    (job / "link.txt").symlink_to(outside / "secret.txt")
    (artifacts / "leak").symlink_to(outside)
    (artifacts / "jobs" / "linked-job").symlink_to(job)
    agent = job / "multi-step__1" / "agent"
    shutil.rmtree(agent)
    agent.symlink_to(outside)
    os.mkfifo(job / "fifo")
    return artifacts, outside, job.name


@pytest.mark.parametrize(("target", "status", "error"), [
    ("/files/../outside/secret.txt", 400, REFUSED_DOTS),
    ("/files/jobs/../../outside/secret.txt", 400, REFUSED_DOTS),
    ("/files/jobs/%2e%2e/%2e%2e/outside/secret.txt", 400, REFUSED_DOTS),
    ("/files/jobs/%2E%2E%2F%2E%2E%2Foutside%2Fsecret.txt", 400, REFUSED_DOTS),
    ("/files/jobs/%252e%252e/%252e%252e/outside/secret.txt", 400, "path refused: encoded characters are not allowed"),
    ("/files//etc/passwd", 400, "path refused: absolute paths are not served"),
    ("/files/%2Fetc%2Fpasswd", 400, "path refused: absolute paths are not served"),
    ("/files/jobs/..%5C..%5Coutside%5Csecret.txt", 400, "path refused: backslash, NUL or slash in a name"),
    ("/files/jobs/%00", 400, "path refused: backslash, NUL or slash in a name"),
    ("/files/leak/secret.txt", 403, "path refused: symlinks are not followed"),
    ("/files/jobs/{job}/link.txt", 403, "path refused: symlinks are not followed"),
    ("/files/jobs/{job}/multi-step__1/agent/secret.txt", 403, "path refused: symlinks are not followed"),
    ("/files/jobs/{job}/fifo", 403, "path refused: not a regular file"),
    ("/files/jobs/{job}", 403, "path refused: not a regular file"),
    ("/api/jobs/..", 400, REFUSED_DOTS),
    ("/api/jobs/%2e%2e", 400, REFUSED_DOTS),
    ("/api/jobs/linked-job", 403, "path refused: symlinks are not followed"),
    ("/api/jobs/{job}/trials/..%2F..%2Fjobs", 400, "path refused: backslash, NUL or slash in a name"),
    ("/api/jobs/{job}/trials/multi-step__1/trajectory", 403, "path refused: symlinks are not followed"),
    ("/api/jobs/{job}/search?q=x&try=multi-step__1", 200, None),
    ("/api/training/..%2Fjobs", 400, "path refused: backslash, NUL or slash in a name"),
    ("/static/../../../etc/passwd", 400, REFUSED_DOTS),
    ("/static/%2e%2e/server.py", 400, REFUSED_DOTS),
    ("/api/jobs/no-such-job", 404, "not found: jobs/no-such-job"),
])
async def test_paths_that_leave_the_artifacts_directory_are_refused(hostile, target: str, status: int, error: str | None) -> None:
    artifacts, outside, job = hostile
    before = sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*"))
    async with Served(artifacts) as server:
        code, headers, body = await server.raw(target.replace("{job}", job))
    assert code == status, body
    assert b"TOP-SECRET" not in body
    if error is not None:
        import orjson

        assert orjson.loads(body) == {"error": error}
    else:  # the search skips the trial whose agent directory is a link; it reads nothing through it
        import orjson

        assert orjson.loads(body)["searched_trials"] == 0
    assert headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
    assert sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*")) == before  # nothing written


async def test_a_trial_whose_agent_directory_is_a_link_still_shows_its_result(hostile) -> None:
    artifacts, outside, job = hostile
    async with Served(artifacts) as server:
        code, _, body = await server.raw(f"/api/jobs/{job}/trials/multi-step__1")
    import orjson

    data = orjson.loads(body)
    assert code == 200 and data["reward"] == 1.0
    assert data["agent_logs"] == [] and data["trajectory"] == {"exists": False, "size": 0}
    assert data["problems"] == ["trajectory: path refused: symlinks are not followed"]
    assert b"TOP-SECRET" not in body


@pytest.mark.parametrize(("method", "host", "status", "error"), [
    ("POST", None, 405, "method not allowed: the dashboard is read-only"),
    ("DELETE", None, 405, "method not allowed: the dashboard is read-only"),
    ("GET", "evil.example:80", 421, "host not allowed: evil.example:80"),
    ("GET", "127.0.0.1.evil.example", 421, "host not allowed: 127.0.0.1.evil.example"),
])
async def test_only_reads_from_loopback_host_names_are_answered(jobs: Jobs, method, host, status, error) -> None:
    import orjson

    async with Served(jobs.artifacts) as server:
        code, headers, body = await server.raw("/api/jobs", method=method, host=host)
        ok, _, _ = await server.raw("/api/jobs", host=f"localhost:{server.port}")
    assert (code, orjson.loads(body)) == (status, {"error": error})
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert ok == 200


async def test_files_are_served_as_plain_text_never_as_html(jobs: Jobs, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(jobs.artifacts, artifacts, symlinks=True)
    (artifacts / "page.html").write_text("<script>alert(1)</script>")
    async with Served(artifacts) as server:
        code, headers, body = await server.raw("/files/page.html")
    assert code == 200 and body == b"<script>alert(1)</script>"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
