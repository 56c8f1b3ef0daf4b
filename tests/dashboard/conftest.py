"""Real jobs for the dashboard, made once per session, and the dashboard itself as `evalkit view` in a
subprocess, driven by Debian's Chromium through Playwright.

Jobs: the smoke benchmark with the oracle (2 attempts) and with `nop`; two jobs of a scripted host-side agent
that talks to a real gateway in front of two scripted upstream replicas (OpenAI and Anthropic clients,
multi-step tool use, a failing task, a task whose model output and test output carry XSS payloads); the
first of those analysed and archived.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import openai
import orjson
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from evalkit import evaluate
from evalkit.agents import AgentResult
from evalkit.analysis.analyze import analyze_job
from evalkit.analysis.archives import create_archive
from tests.conftest import BENCHMARKS, HOST_NETWORK, REPO, write_task
from tests.gateway.fake_upstream import FakeUpstream, Reply

RUN = uuid.uuid4().hex[:8]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS_TEXT = '<script>console.log("XSS-FIRED");alert(1)</script>'
XSS_IMG = '<img src=x onerror="console.log(\'XSS-FIRED\');alert(2)">'
XSS = f"{XSS_TEXT} and {XSS_IMG}"
STEPS = 3
"""Tool calls the `multi-step` task makes before its final answer."""


def upstream_script(body: dict):
    """The scripted model: what it answers depends on the task named in the conversation and how far it got."""
    messages = body.get("messages") or []
    text = str(messages)
    done = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")
    if "xss-task" in text:
        if done:
            return Reply(text=f"Finished. {XSS}")
        return Reply(text=f"Thinking about {XSS}", tool_calls=[{"name": "bash", "arguments": {"cmd": f"echo '{XSS_IMG}'"}}])
    if "multi-step" in text or "anthropic-step" in text:
        if done < STEPS:
            cmd = "echo done > /tmp/out.txt" if done == STEPS - 1 else f"echo step {done + 1}"
            return Reply(text=f"Step {done + 1}.", tool_calls=[{"name": "bash", "arguments": {"cmd": cmd}}])
        return Reply(text="All steps done.")
    if "improves" in text and "solve it" in text:
        return Reply(text="Solving.", tool_calls=[{"name": "bash", "arguments": {"cmd": "echo done > /tmp/out.txt"}}])
    return Reply(text="Trying.", tool_calls=[{"name": "bash", "arguments": {"cmd": "echo wrong > /tmp/out.txt"}}])


TOOLS = [{"type": "function", "function": {"name": "bash", "description": "run a command",
                                           "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}}]


class ToolAgent:
    """A host-side agent: a real OpenAI (or Anthropic) client in a loop, running the model's bash tool calls in
    the task's container through the Environment, until the model stops calling tools."""

    name = "tool-agent"
    hint = ""

    async def setup(self, env) -> None:
        pass

    async def run(self, task, env, *, model, timeout_sec) -> AgentResult:
        prompt = f"{task.instruction}\nTask name: {task.name}. {self.hint}"
        if task.name == "anthropic-step":
            return await self._anthropic(prompt, env, model)
        client = openai.AsyncOpenAI(base_url=model.base_url, api_key=model.api_key, max_retries=0)
        messages: list[dict] = [{"role": "user", "content": prompt}]
        try:
            for _ in range(STEPS + 2):
                answer = await client.chat.completions.create(model=model.model, tools=TOOLS, messages=messages)
                message = answer.choices[0].message
                messages.append(message.model_dump(exclude_none=True))
                if not message.tool_calls:
                    break
                for call in message.tool_calls:
                    result = await env.exec(orjson.loads(call.function.arguments)["cmd"])
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result.output or "(no output)"})
        finally:
            await client.close()
        return AgentResult(exit_code=0)

    async def _anthropic(self, prompt: str, env, model) -> AgentResult:
        client = anthropic.AsyncAnthropic(base_url=model.anthropic_base_url, api_key=model.api_key, max_retries=0)
        tools = [{"name": "bash", "description": "run a command", "input_schema": TOOLS[0]["function"]["parameters"]}]
        messages: list[dict] = [{"role": "user", "content": prompt}]
        try:
            for _ in range(STEPS + 2):
                answer = await client.messages.create(model=model.model, max_tokens=256, tools=tools, messages=messages,
                                                      system="You are a careful agent.")
                messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in answer.content]})
                uses = [b for b in answer.content if b.type == "tool_use"]
                if not uses:
                    break
                results = []
                for use in uses:
                    out = await env.exec(use.input["cmd"])
                    results.append({"type": "tool_result", "tool_use_id": use.id, "content": out.output or "(no output)"})
                messages.append({"role": "user", "content": results})
        finally:
            await client.close()
        return AgentResult(exit_code=0)


class BetterToolAgent(ToolAgent):
    """The same agent with a prompt that makes the scripted model solve the `improves` task (job B of compare)."""

    hint = "solve it"


SCRIPTED_TASKS = ("multi-step", "anthropic-step", "improves", "xss-task")


@dataclass
class Jobs:
    artifacts: Path
    oracle: Path
    nop: Path
    scripted: Path
    better: Path


async def _make_jobs(root: Path) -> Jobs:
    artifacts = root / "artifacts"
    jobs_dir = artifacts / "jobs"
    smoke = {"name": "evalkit-smoke@1.0", "registry": str(BENCHMARKS / "registry.json")}
    common = {**HOST_NETWORK, "jobs_dir": str(jobs_dir), "n_concurrent": 4}
    oracle = await evaluate({**common, "job_name": f"dashboard-oracle-{RUN}", "n_attempts": 2, "dataset": smoke,
                             "agent": {"name": "oracle"}})
    nop = await evaluate({**common, "job_name": f"dashboard-nop-{RUN}", "dataset": smoke, "agent": {"name": "nop"}})
    tasks = root / "tasks"
    for name in SCRIPTED_TASKS:
        test = None
        if name == "xss-task":
            test = f"echo '{XSS}'; echo 0 > /logs/verifier/reward.txt"
        write_task(tasks, name, **({"test": test} if test else {}))
    jobs = []
    async with FakeUpstream("replica-a") as first, FakeUpstream("replica-b") as second:
        first.default = second.default = upstream_script
        deployments = [{"model": "hosted_vllm/smollm2", "api_base": u.url} for u in (first, second)]
        for name, agent in (("scripted", "ToolAgent"), ("better", "BetterToolAgent")):
            jobs.append(await evaluate({
                **common, "job_name": f"dashboard-{name}-{RUN}", "n_attempts": 2, "dataset": {"path": str(tasks)},
                "agent": {"name": f"tests.dashboard.conftest:{agent}"},
                "llm_api": {"model": "smollm2", "max_retries": 0, "cooldown_sec": 0, "deployments": deployments},
            }))
    scripted, better = jobs
    await asyncio.to_thread(analyze_job, scripted.job_dir)
    await asyncio.to_thread(create_archive, artifacts, oracle.job_dir)
    return Jobs(artifacts=artifacts, oracle=oracle.job_dir, nop=nop.job_dir, scripted=scripted.job_dir, better=better.job_dir)


@pytest.fixture(scope="session")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Jobs:
    return asyncio.run(_make_jobs(tmp_path_factory.mktemp("dashboard-jobs")))


# ----------------------------------------------------------------------------------------- the server


class Viewer:
    """`evalkit view ARTIFACTS --port 0` in a subprocess; stopped by its PID."""

    def __init__(self, artifacts: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "evalkit", "view", str(artifacts), "--port", "0"], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"evalkit view did not start: {line!r} {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        self.url = match[1]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=10)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                stream and stream.close()


@pytest.fixture(scope="session")
def viewer(jobs: Jobs) -> Iterator[Viewer]:
    v = Viewer(jobs.artifacts)
    yield v
    v.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Chromium for one test: Playwright's sync API holds an event loop open in this thread while it runs, so it
    must not outlive the test (the asyncio tests need the thread free)."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@dataclass
class Tab:
    page: Page
    console: list[str]
    dialogs: list[str]
    errors: list[str]
    screenshots: Path
    base: str

    def open(self, hash_route: str) -> Page:
        """Go to a page of the app and wait until it has rendered (body[data-ready=1])."""
        self.page.goto(f"{self.base}#{hash_route}")
        return self.ready()

    def ready(self) -> Page:
        self.page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        return self.page

    def shot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if extra := os.environ.get("EVALKIT_SCREENSHOTS_DIR"):  # refreshing docs/screenshots for the README
            Path(extra).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(extra) / f"{name}.png"), full_page=False)
        return path


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def tab(browser: Browser, viewer: Viewer, screenshots: Path) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    t = Tab(page, [], [], [], screenshots, viewer.url)
    page.on("console", lambda m: t.console.append(m.text))
    page.on("dialog", lambda d: (t.dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: t.errors.append(str(e)))
    yield t
    context.close()
    assert not t.errors, t.errors


def chart_points(page: Page, name: str) -> int:
    """Data points in the Chart.js chart on canvas[data-chart=name] (0 when there is no chart)."""
    return page.evaluate(
        """(name) => { const c = document.querySelector(`canvas[data-chart="${name}"]`);
                       const chart = c && window.Chart.getChart(c);
                       return chart ? chart.data.datasets.reduce((n, d) => n + d.data.filter((v) => v !== null).length, 0) : 0; }""",
        name,
    )


def copy_artifacts(jobs: Jobs, target: Path) -> Path:
    """A private copy of the artifacts (tests that add files must not disturb the others)."""
    shutil.copytree(jobs.artifacts, target, symlinks=True)
    return target


def write_training_store(artifacts: Path, run_id: str, rollouts_from: Path | None = None) -> Path:
    """A training store with the documented schema (docs/architecture.md): three evaluated steps."""
    path = artifacts / "training" / f"{run_id}.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE evals (id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, step INTEGER NOT NULL, benchmark TEXT NOT NULL,
                            metrics_json TEXT NOT NULL, job_dir TEXT, created_at TEXT NOT NULL);
        CREATE TABLE rollouts (eval_id INTEGER NOT NULL REFERENCES evals(id), task TEXT NOT NULL, attempt INTEGER NOT NULL,
                               reward REAL, error_kind TEXT, trajectory_path TEXT);
    """)
    for i, step in enumerate((100, 200, 300)):
        metrics = {"mean_reward": 0.3 + 0.1 * i, "mean_reward/ci_low": 0.2 + 0.1 * i, "mean_reward/ci_high": 0.4 + 0.1 * i,
                   "coverage": 1.0}
        db.execute("INSERT INTO evals VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (i + 1, run_id, step, "evalkit-smoke@1.0", orjson.dumps(metrics).decode(), None, f"2026-12-0{i + 1}T00:00:00Z"))
        for task in range(4):
            for attempt in range(2):
                traj = None
                if rollouts_from is not None:
                    traj = str(next(rollouts_from.glob("*/agent/litellm-trajectory.jsonl")).relative_to(artifacts))
                db.execute("INSERT INTO rollouts VALUES (?, ?, ?, ?, ?, ?)",
                           (i + 1, f"task-{task}", attempt, float((task + attempt + i) % 3 == 0), None, traj))
    db.commit()
    db.close()
    return path


class Served:
    """The dashboard app on a real socket on 127.0.0.1 inside the test's event loop."""

    def __init__(self, artifacts: Path) -> None:
        from aiohttp import web

        from evalkit.dashboard import create_app

        self.runner = web.AppRunner(create_app(artifacts), handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        self.url = ""
        self.port = 0

    async def __aenter__(self) -> Served:
        from aiohttp import web

        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    async def raw(self, target: str, *, method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send exactly `METHOD target HTTP/1.1` (no client-side normalisation of `..` or `%2e`)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"{method} {target} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{self.port}'}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            body = _unchunk(body)
        return int(lines[0].split()[1]), headers, body


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, body = out + rest[:n], rest[n + 2:]
    return out
