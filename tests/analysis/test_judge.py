"""The optional LLM judge against a scripted OpenAI-compatible server on 127.0.0.1: verdicts, token cost, the
key sent only as a header and written nowhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

from evalkit.analysis.analyze import AnalysisConfig, analyze_job
from evalkit.analysis.judge import JudgeConfig
from tests.analysis.conftest import EXPECTED_CAUSES
from tests.conftest import read_json
from tests.gateway.fake_upstream import Fail, FakeUpstream, Reply

SECRET = "sk-judge-secret-0123456789"


async def test_judge_classifies_failed_trials_and_records_its_cost(jobs, job_copy, monkeypatch):
    job = job_copy(jobs.scripted)
    monkeypatch.setenv("EVALKIT_TEST_JUDGE_KEY", SECRET)
    async with FakeUpstream("judge") as upstream:
        upstream.script = [Fail(500)]
        upstream.default = Reply(text='Sure. {"category": "buggy_solution", "explanation": "off by one"}')
        judge = JudgeConfig(enabled=True, base_url=upstream.url, model="judge-model", api_key_env="EVALKIT_TEST_JUDGE_KEY", max_trials=4)
        result = await asyncio.to_thread(analyze_job, job, AnalysisConfig(judge=judge))
    assert result.ok, result.errors
    report = read_json(job / "analysis" / "report_failed.json")["judge"]
    assert (report["n_judged"], report["n_call_errors"]) == (3, 1)
    assert report["categories"] == {"buggy_solution": 3}
    assert report["errors"][0].endswith("ValueError: HTTP 500")
    assert report["input_tokens"] > 0 and report["output_tokens"] > 0
    assert len(upstream.received) == 4
    assert all(r.headers["Authorization"] == f"Bearer {SECRET}" for r in upstream.received)
    assert {r.body["model"] for r in upstream.received} == {"judge-model"}
    judged = set(report["verdicts"])
    assert judged < {f"{t}__0" for t in EXPECTED_CAUSES}
    for path in (job / "analysis").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(), path
    assert "EVALKIT_TEST_JUDGE_KEY" in (job / "analysis" / "analysis_config.yaml").read_text()


def test_the_judge_is_off_by_default(jobs, job_copy):
    job = job_copy(jobs.scripted)
    assert AnalysisConfig().judge.enabled is False
    assert analyze_job(job).ok
    assert read_json(job / "analysis" / "report_failed.json")["judge"] is None
